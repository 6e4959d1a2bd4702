"""Long-polling client: POST /lp/connect (`?resume=<cursor>` to resume), a loop of
GET /lp/{conn}/poll, commands as POST /lp/{conn}, DELETE /lp/{conn} to close.

Connect, commands and DELETE go through the keep-alive pool of `HttpClient`
(geventhttpclient). The poll loop runs on a keep-alive socket of the client's own,
read by the process's reactor (loadgen.clients.reactor) like the event streams:
each read goes into a sans-I/O `ResponseReader` (httptools), and the callback that
completes a poll's response dispatches its events and writes the next poll
request at once (a small send on an idle keep-alive socket). A greenlet per
connection only minds the loop: it delivers the events read with the welcome,
reconnects the poll socket after a network failure and fails a poll left
unanswered for `POLL_TIMEOUT + POLL_SLACK` seconds.

Why: a published message completes every pending poll at once, so the load
generator gets one response per subscriber in a burst. Handled by a greenlet per
connection through geventhttpclient, each took ~70-100 us one after another, and
in a capacity ramp at ~6,000 deliveries/s the greenlet-lag canary's p99 reached
25 ms at ~49 % CPU: the step counted as load-side limited. Same run, broadcast,
201 users, 25 msg/s (~5,000 deliveries/s), 2 replicas on core 0, Locust on core
1, 3 alternating runs each, means (min-max) of the judged window
(results/published/longpoll-client-20261202.json, with the command):

    poll loop                     load-gen CPU     CPU per delivery   canary p99
    geventhttpclient, greenlets   50.5 % (47-52)   101 us (95-105)    12.0 ms (10.7-13.8)
    reactor (this module)         21.5 % (21-22)    43 us (42-44)      1.8 ms (1.5-2.1)

(CPU per delivery: the whole Locust process's, publishers and accounting included.)

Bytes on the wire per event: the response body plus `RESPONSE_HEAD_BYTES`,
shared among its events. `recv_us` is the time of the read that completed the
response, taken before parsing. A poll the server held until its timeout answers
an empty batch: polled again. A network failure (reset, malformed response, no
response in time, connect refused) is retried on a new socket, `POLL_RETRIES`
times in a row at most, then the connection ends with 1006; an HTTP error status
ends it at once (1006, with the error's code), so does a body that is not JSON;
the `closed` member ends it with its section 6 code.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlencode

import gevent
import orjson
from gevent.event import Event

from loadgen.clients.base import ClientError, OnEvent, RawSocket
from loadgen.clients.http import HttpClient, error_from
from loadgen.clients.httpresponse import ResponseError, ResponseReader
from loadgen.clients.tls import TlsSocket
from loadgen.measure import now_us
from loadgen.wire import CURSOR_TYPES, poll_batch
from servers.core.cursor import RESUME_PARAM

POLL_TIMEOUT = 20.0  # seconds the server may hold a poll (protocol maximum: poll_timeout)
# A poll unanswered this long after POLL_TIMEOUT is a network failure.
POLL_SLACK = 10.0

# Rough size of the response head (status line, date, server, content-type/length);
# spread over the events of the response when counting bytes on the wire.
RESPONSE_HEAD_BYTES = 150
# A poll that fails on the network (timeout, reset, malformed response) is retried at
# once on a new socket: events stay queued on the server until a poll takes them. Only
# this many failures in a row, or an HTTP error (404 unknown_session...), end the
# connection.
POLL_RETRIES = 3


class LongPollClient(RawSocket, HttpClient):
    transport: ClassVar[str] = "longpoll"

    _responses: ResponseReader | None = None
    _poll = b""  # the poll request, head only
    _sent = 0.0  # time.monotonic() when the poll in flight was sent
    _failures = 0  # network failures in a row

    def __init__(self, url: str, token: str, on_event: OnEvent | None = None,
                 timeout: float = 10.0, resume: Mapping[str, Any] | None = None,
                 tls_ca: str | None = None) -> None:
        super().__init__(url, token, on_event, timeout, resume, tls_ca)
        self._wake = Event()  # the poll socket failed, or the client closed

    def command_path(self) -> str:
        return f"/lp/{self.conn_id}"

    def _open(self) -> dict[str, Any]:
        self._connect_socket(self.host, self.port, self.timeout)  # for the poll loop
        try:
            path = "/lp/connect"
            if self.resume_cursor:
                path += f"?{urlencode({RESUME_PARAM: self.resume_cursor})}"
            status, body = self.request("POST", path)
            if status != 200:
                raise error_from(status, body)
            reply = orjson.loads(body)
            events: list[dict[str, Any]] = reply.get("events") or []
            if not events:
                raise ClientError("bad_welcome", "connect reply carried no welcome event")
        except BaseException:
            self._abort()
            raise
        self._early = events[1:]  # delivered by `_read_loop`, before the first poll
        self._early_share = (len(body) + RESPONSE_HEAD_BYTES) // len(events)
        return events[0]

    def _path(self) -> str:
        return f"/lp/{self.conn_id}/poll?timeout={POLL_TIMEOUT:g}"

    def _read_loop(self) -> None:
        """Deliver the events read with the welcome, start polling, then mind the loop."""
        self._poll = (f"GET {self._path()} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                      f"Authorization: Bearer {self.token}\r\n\r\n").encode("latin-1")
        early, self._early = self._early, []
        t = now_us()
        for ev in early:  # what a resumed connection missed, read with the welcome
            if ev.get("type") in CURSOR_TYPES:
                self.tracker.observe(ev)
            self.on_event(ev, self._early_share, t)
        wake = self._wake
        while not self.closed.is_set():
            sock = self._sock
            if sock is None:  # failed (or closed by the server): poll on a new socket
                try:
                    sock = self._connect_socket(self.host, self.port, self.timeout)
                except ClientError as exc:  # connect_failed
                    self._failed(str(exc))
                    continue
            if self._responses is None:
                self._responses = ResponseReader()
                self._start_reading(sock.fileno())
                self._send_poll(sock)
                continue
            left = self._sent + POLL_TIMEOUT + POLL_SLACK - time.monotonic()
            if left <= 0:
                self._failed(self._net(f"no response in {POLL_TIMEOUT + POLL_SLACK:g} s"))
            else:
                wake.wait(left)
                wake.clear()

    def _send_poll(self, sock: socket.socket | TlsSocket) -> bool:
        self._sent = time.monotonic()
        try:
            sock.sendall(self._poll)
        except OSError as exc:
            self._failed(self._net(repr(exc)))
            return False
        return True

    def _net(self, detail: str) -> str:
        return f"http_failed: GET {self._path()}: {detail}"

    def _failed(self, why: str) -> None:
        """A network failure of the poll: drop its socket; the minder polls on a new one,
        unless this was one failure too many."""
        self._drop()
        self._failures += 1
        if self._failures > POLL_RETRIES:
            self._ended(1006, f"poll failed: {why}")

    def _drop(self) -> None:
        self._abort()
        self._responses = None
        self._wake.set()

    def data_received(self, data: bytes, recv_us: int) -> bool:
        """The reactor's read of the poll socket (`recv_us` taken before parsing)."""
        reader, sock = self._responses, self._sock
        if reader is None or sock is None:
            return False
        try:
            done = reader.feed(data)
            if len(done) > 1:
                raise ResponseError(f"{len(done)} responses to one poll")
        except ResponseError as exc:
            self._failed(self._net(str(exc)))
            return False
        if not done:
            return True
        status, body, keep_alive = done[0]
        self._failures = 0
        try:
            if status != 200:
                raise error_from(status, body)
            events, closed = poll_batch(body)
        except (ClientError, ValueError) as exc:  # an error, or not a long-poll batch
            self._ended(1006, f"poll failed: {exc}")
            self._drop()
            return False
        if events:
            share = (len(body) + RESPONSE_HEAD_BYTES) // len(events)
            observe, on_event = self.tracker.observe, self.on_event
            for ev in events:
                if ev.get("type") in CURSOR_TYPES:
                    observe(ev)
                on_event(ev, share, recv_us)
        if closed:
            self._ended(*closed)
            self._drop()
            return False
        if self._sock is not sock:  # closed by an on_event callback
            return False
        if not keep_alive:  # the server closes this socket: the minder opens another
            self._drop()
            return False
        return self._send_poll(sock)

    def connection_lost(self, exc: Exception | None) -> None:
        self._read_fd = -1  # the reactor dropped it
        self._failed(self._net("connection closed by the server" if exc is None else repr(exc)))

    def close(self) -> None:
        reader, self._reader = self._reader, None
        open_session = bool(self.conn_id) and not self.closed.is_set()
        self._ended(1000, "closed by client")
        if reader is not None and reader is not gevent.getcurrent():
            reader.kill(block=True, timeout=1)
        self._drop()  # before DELETE: no event after close()
        if open_session:
            try:
                with gevent.Timeout(self.timeout):
                    self.request("DELETE", f"/lp/{self.conn_id}")
            except (ClientError, gevent.Timeout):
                pass  # the server drops the session after session_ttl anyway
        self.close_http()
