"""Sans-I/O reader of the `GET /sse` response for the gevent SSE client: raw socket
bytes in, in pieces of any size, the `data` of each complete event out.

httptools (llhttp, in C) parses the status line and headers and undoes the
transfer encoding: uvicorn streams the body chunked, one HTTP chunk per write of
the server (a batch of queued events, or a single event when the server writes
each as it comes). The de-chunked pieces of one socket read are joined and go
into the shared event-stream parser (`loadgen.sse_parser`) at once, whatever the
chunk sizes: its fast path takes a whole run of events in a few C calls (fed one
HTTP chunk of one event at a time, it would apply the line rules to every line).
Per socket read that is one C call, a list append per HTTP chunk, one parser
call and one Python call per event; each event's JSON is left for the caller to
decode once.
"""

from __future__ import annotations

import httptools

from loadgen.sse_parser import SseError, SseParser


class ResponseError(ValueError):
    """The bytes are not a well-formed HTTP/1.1 response or event stream."""


class SseResponse:
    """Feed `feed(data)` the bytes read from the socket; it returns the events' data.

    `status`/`headers` are set once the head is in (`head_done`); the body of a
    non-2xx response is collected in `body` instead of parsed; `complete` is set
    when the response ended (the server closed the stream).
    """

    __slots__ = ("_events", "_http", "_pieces", "_sse", "body", "complete", "head_done", "headers",
                 "status")

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}  # names lower-cased
        self.head_done = False
        self.complete = False
        self.body = bytearray()
        self._events: list[bytes] = []
        self._pieces: list[bytes] = []  # body bytes of the read being fed, HTTP chunk by chunk
        self._sse = SseParser(self._on_event)
        self._http = httptools.HttpResponseParser(self)

    @property
    def last_id(self) -> bytes:
        """The stream's last `id:` field (the event stream's Last-Event-ID)."""
        return self._sse.last_id

    def feed(self, data: bytes) -> list[bytes]:
        """Parse `data`; the `data` of each event it completed, in order."""
        pieces = self._pieces
        try:
            self._http.feed_data(data)
        except httptools.HttpParserError as exc:
            raise ResponseError(f"malformed HTTP response: {exc}") from None
        if pieces:  # the event-stream body this read carried, parsed in one go
            self._pieces = []
            try:
                self._sse.feed(pieces[0] if len(pieces) == 1 else b"".join(pieces))
            except SseError as exc:
                raise ResponseError(str(exc)) from exc
        events = self._events
        if not events:
            return []  # not the list itself: the caller may keep what it got
        self._events = []
        return events

    # ------------------------------------------------------- parser callbacks

    def _on_event(self, event: bytes, data: bytes, recv_us: int) -> None:
        self._events.append(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        old = self.headers.get(key)
        text = value.decode("latin-1")
        self.headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        self.status = self._http.get_status_code()
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        if self.status == 200:
            self._pieces.append(body)
        else:
            self.body += body

    def on_message_complete(self) -> None:
        self.complete = True
