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
        data = self._data
        for line in lines:
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
