"""Sans-I/O incremental parser of a `text/event-stream` body (WHATWG HTML, "Parsing an
event stream"): body chunks in, one callback per complete event out.

Chunks may split lines and events anywhere. Lines end with LF, CRLF or a lone CR
(a CR at the end of a chunk ends its line at once; an LF opening the next chunk
is then its second half, not a blank line). Fields: `data` (several lines joined
with LF), `event` (the type; `message` when absent), `id` (becomes `last_id`, the
stream's Last-Event-ID, at the blank line that ends its block, whether or not that
dispatches an event, and persists across events, as the spec says: an `id:` of an
event still incomplete is not in `last_id` yet), `retry` (kept in `retry_ms`);
comment lines (`: ping`) and unknown fields are ignored. A blank line dispatches
the event, unless it has no `data` line at all. One leading UTF-8 BOM is skipped.
An incomplete event at the end of the stream is dropped (the caller just stops
feeding).

Shared by both SSE clients: the asyncio one (`loadgen.aio.sse`) and the gevent one
(`loadgen.clients.sse`, through `loadgen.clients.ssestream`), each feeding it the
de-chunked body bytes as they arrive.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat

__all__ = ["BOM", "MAX_LINE", "EventCallback", "SseError", "SseParser"]

# (event type, data, local receive time in us of the chunk that completed the event)
EventCallback = Callable[[bytes, bytes, int], None]

BOM = b"\xef\xbb\xbf"
MAX_LINE = 16 * 1024 * 1024


class SseError(ValueError):
    """The stream broke a limit of this parser (a line longer than `max_line`)."""


class SseParser:
    """Feed `feed(chunk, recv_us)` the body bytes in order; `on_event` runs per event."""

    __slots__ = ("_data", "_event", "_id", "_on_event", "_skip_lf", "_started", "_tail",
                 "last_id", "max_line", "retry_ms")

    def __init__(self, on_event: EventCallback, max_line: int = MAX_LINE) -> None:
        self._on_event = on_event
        # bytes an unfinished line may hold: a runaway stream must not eat memory
        self.max_line = max_line
        self._tail = b""  # the unfinished last line
        self._data: list[bytes] = []
        self._event = b""
        self._skip_lf = False  # the previous chunk ended with CR: a leading LF completes it
        self._started = False  # past the optional BOM
        self._id = b""  # the spec's "last event ID buffer"
        self.last_id = b""
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes, recv_us: int = 0) -> None:
        """Parse `chunk`; `recv_us` is handed to the callback of each event it completes."""
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._tail + chunk if self._tail else chunk
        if not self._started:
            if len(buf) < 3 and BOM.startswith(buf):
                self._tail = buf  # could still become a BOM
                return
            self._started = True
            if buf[:3] == BOM:
                buf = buf[3:]
        if b"\r" in buf:
            self._skip_lf = buf[-1:] == b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        tail = self._tail = lines.pop()
        if len(tail) > self.max_line:
            self._tail = b""
            raise SseError(f"event-stream line longer than {self.max_line} bytes")
        if len(lines) < 8 or b"\0" in buf:
            self._lines(lines, 0, len(lines), recv_us)
            return
        i = 0
        if self._data or self._event:  # a block is open: the line rules up to its end
            try:
                i = lines.index(b"", 0, 256) + 1
            except ValueError:
                i = len(lines)
            self._lines(lines, 0, i, recv_us)
        i = self._run(lines, i, recv_us)
        self._lines(lines, i, len(lines), recv_us)

    def _run(self, lines: list[bytes], i: int, recv_us: int) -> int:
        """The fast path: from `lines[i]` (no field pending), a run of blocks of one shape,
        checked and sliced column by column in C, with exactly the result of the line
        rules; returns where the run ends (`i` if there is none).

        The shape is the first block's: one `data: ` line, at most one `id: ` line and at
        most one `event: ` line (the same in every block of the run), in any order, then
        the blank line; the server writes `id`, `event: message`, `data` (1.5 µs
        per event by the line rules, 0.5 µs here, measured). A run with any other
        line in it is left to the line rules whole.
        """
        try:
            k = lines.index(b"", i, i + 4) + 1 - i  # lines per block, the blank one included
        except ValueError:
            return i
        if k < 2:
            return i
        end = i + (len(lines) - i) // k * k
        n = (end - i) // k
        if n < 2 or lines[i + k - 1:end:k].count(b"") != n:
            return i
        datas: list[bytes] | None = None
        event = b""
        last_id: bytes | None = None
        for col in range(k - 1):
            column = lines[i + col:end:k]
            first = column[0]
            if first.startswith(b"data: "):
                if datas is not None or not all(map(bytes.startswith, column, repeat(b"data: "))):
                    return i
                datas = column
            elif first.startswith(b"id: "):
                if last_id is not None or not all(map(bytes.startswith, column, repeat(b"id: "))):
                    return i
                last_id = column[-1][4:]
            elif first.startswith(b"event: "):
                if event or column.count(first) != n:
                    return i
                event = first[7:] or b"message"
            else:
                return i
        if datas is None:
            return i
        if last_id is not None:
            self._id = last_id
        self.last_id = self._id
        on_event = self._on_event
        event = event or b"message"
        for line in datas:
            on_event(event, line[6:], recv_us)
        return end

    def _lines(self, lines: list[bytes], start: int, end: int, recv_us: int) -> None:
        """The line rules of the spec for `lines[start:end]`."""
        data = self._data
        for k in range(start, end):
            line = lines[k]
            if not line:
                self.last_id = self._id
                if data:
                    payload = data[0] if len(data) == 1 else b"\n".join(data)
                    event = self._event or b"message"
                    data.clear()
                    self._event = b""
                    self._on_event(event, payload, recv_us)
                else:
                    self._event = b""
                continue
            if line[0] == 0x3A:  # ":" comment, the server's keepalive
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                self._event = value
            elif name == b"id":
                if b"\0" not in value:
                    self._id = value
            elif name == b"retry" and value.isdigit():
                self.retry_ms = int(value)
