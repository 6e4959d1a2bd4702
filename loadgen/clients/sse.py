"""Server-Sent Events client: the `GET /sse` stream on a plain gevent socket of its own,
commands as `POST /sse/{conn}` through the keep-alive pool of `HttpClient`.

The stream is read 256 KiB at a time and each read goes whole into `SseResponse`
(sans-I/O: httptools undoes the chunked encoding, `loadgen.sse_parser` splits the
events), the same parser the asyncio client uses; each event's JSON is decoded
once. Reading line by line through geventhttpclient cost ~3 Python calls per
line and made this client the load generator's ceiling (bench/experiments/ingest.py).

Bytes on the wire per event: what the reads that completed events carried (event
lines, comments, chunk headers), shared among those events. The server's last
event, `close`, ends the connection with its section 6 code; a stream that just
ends is 1006.

Resume (docs/protocol.md 4.1, 7.2): the server writes the connection's cursor as the
`id:` of every event that moves it (and in `id:`-only blocks for joins and leaves),
so this client does not track events itself: its `cursor` is the stream's
Last-Event-ID, which the parser takes at the blank line ending a block, i.e. only
for events read whole. A stream without any `id:` (history off) falls back to the
rooms joined. The cursor goes back in `?resume=`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, ClassVar
from urllib.parse import urlencode

import orjson

from loadgen.clients.base import ClientError, RawSocket
from loadgen.clients.http import HttpClient, error_from
from loadgen.clients.ssestream import SseResponse
from loadgen.measure import now_us
from loadgen.wire import close_of
from servers.core.cursor import RESUME_PARAM

RECV_BYTES = 256 * 1024


class SseClient(RawSocket, HttpClient):
    transport: ClassVar[str] = "sse"

    _response: SseResponse | None = None

    def command_path(self) -> str:
        return f"/sse/{self.conn_id}"

    @property
    def cursor(self) -> dict[str, Any]:
        """The stream's Last-Event-ID (the server's cursor as of the last event read
        whole), decoded; the joined rooms when the server sent no `id:`."""
        raw = self._response.last_id if self._response is not None else b""
        if raw:
            try:
                obj = orjson.loads(base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4)))
            except (binascii.Error, ValueError):
                obj = None
            if isinstance(obj, dict):
                return obj
        return self.tracker.cursor()

    def stream_request(self) -> bytes:
        """The `GET /sse` request head (with the resume cursor, if any)."""
        query = f"?{urlencode({RESUME_PARAM: self.resume_cursor})}" if self.resume_cursor else ""
        return (f"GET /sse{query} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n"
                "Cache-Control: no-cache\r\n\r\n").encode("latin-1")

    def _open(self) -> dict[str, Any]:
        sock = self._connect_socket(self.host, self.port, self.timeout)
        self._response = resp = SseResponse()
        self._unshared = 0  # bytes read that no delivered event has accounted for yet
        with self._handshake(self.url, (OSError, ValueError)):  # ValueError: bad response/JSON
            sock.sendall(self.stream_request())
            while True:
                data = sock.recv(RECV_BYTES)
                if not data:
                    raise ClientError("closed", "stream ended before welcome")
                self._unshared += len(data)
                events = resp.feed(data)
                if resp.head_done and resp.status != 200:
                    if resp.complete:
                        raise error_from(resp.status, bytes(resp.body))
                    continue
                if events:
                    self._backlog = events[1:]  # read with the welcome, delivered by the reader
                    welcome: dict[str, Any] = orjson.loads(events[0])
                    return welcome
                if resp.complete:
                    raise ClientError("closed", "stream ended before welcome")

    def _start_reader(self) -> None:
        sock, resp = self._sock, self._response
        assert sock is not None and resp is not None
        events, self._backlog = self._backlog, []
        try:
            if not self._deliver(events, now_us()):
                return
        except ValueError as exc:  # bad JSON in an event read with the welcome
            self._ended(1002, f"server broke the protocol: {exc}")
            self._abort()
            return
        self._start_reading(sock.fileno())

    def data_received(self, data: bytes, recv_us: int) -> bool:
        """The reactor's read (`recv_us` taken before parsing: parsing is not latency)."""
        resp = self._response
        if resp is None:
            return False
        self._unshared += len(data)
        try:
            return self._deliver(resp.feed(data), recv_us)
        except ValueError as exc:  # malformed response or event stream, bad JSON
            self._ended(1002, f"server broke the protocol: {exc}")
            self._abort()
            return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._read_fd = -1
        self._ended(1006, "connection closed by the server" if exc is None
                    else f"stream lost: {exc!r}")
        self._abort()

    def _deliver(self, events: list[bytes], recv_us: int) -> bool:
        """Dispatch whole events; False when the stream ended (closed here)."""
        resp = self._response
        if events:
            n = len(events)
            share = self._unshared // n
            self._unshared -= share * n
            loads = orjson.loads
            on_event = self.on_event
            for raw in events:
                ev = loads(raw)
                closed = close_of(ev)
                if closed is not None:
                    self._ended(*closed)
                    self._abort()
                    return False
                on_event(ev, share, recv_us)
        if resp is None or resp.complete:
            self._ended(1006, "event stream ended without a close event")
            self._abort()
            return False
        return True

    def close(self) -> None:
        self._ended(1000, "closed by client")
        self._abort()
        self.close_http()
