"""Long-polling client: POST /lp/connect (`?resume=<cursor>` to resume), a loop of
GET /lp/{conn}/poll, commands as POST /lp/{conn}, DELETE /lp/{conn} to close. Every
request is keep-alive."""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urlencode

import gevent
import orjson

from loadgen.clients.base import CURSOR_TYPES, ClientError
from loadgen.clients.http import HttpClient, error_from
from loadgen.measure import now_us
from servers.core.cursor import RESUME_PARAM

POLL_TIMEOUT = 20.0  # seconds the server may hold a poll (protocol maximum: poll_timeout)

# Rough size of the response head (status line, date, server, content-type/length);
# spread over the events of the response when counting bytes on the wire.
RESPONSE_HEAD_BYTES = 150
# A poll that fails on the network (timeout, reset) is retried at once: events stay
# queued on the server until a poll takes them. Only this many failures in a row,
# or an HTTP error (404 unknown_session...), end the connection.
POLL_RETRIES = 3
# bytes per recv of a poll response: a backlog comes as one body of megabytes, which
# geventhttpclient's 4 KiB default took in hundreds of reads and buffer copies
RECV_BYTES = 256 * 1024


class LongPollClient(HttpClient):
    transport: ClassVar[str] = "longpoll"

    def command_path(self) -> str:
        return f"/lp/{self.conn_id}"

    def _open(self) -> dict[str, Any]:
        self._poll_http = self._client(1, POLL_TIMEOUT + 10, RECV_BYTES)
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
        self._early = events[1:]  # delivered once the reader runs
        self._early_share = (len(body) + RESPONSE_HEAD_BYTES) // len(events)
        return events[0]

    def _read_loop(self) -> None:
        on_event = self.on_event
        observe = self.tracker.observe
        path = f"/lp/{self.conn_id}/poll?timeout={POLL_TIMEOUT:g}"
        early, self._early = self._early, []
        t = now_us()
        for ev in early:  # what a resumed connection missed, read with the welcome
            if ev.get("type") in CURSOR_TYPES:
                observe(ev)
            on_event(ev, self._early_share, t)
        failures = 0
        try:
            while True:
                try:
                    status, body = self.request("GET", path, http=self._poll_http)
                except ClientError:
                    failures += 1
                    if failures > POLL_RETRIES or self.closed.is_set():
                        raise
                    continue
                failures = 0
                t = now_us()
                if status != 200:
                    err = error_from(status, body)
                    self._ended(1006, f"poll failed: {err}")
                    return
                reply = orjson.loads(body)
                events = reply.get("events") or ()
                if events:
                    share = (len(body) + RESPONSE_HEAD_BYTES) // len(events)
                    for ev in events:
                        if ev.get("type") in CURSOR_TYPES:
                            observe(ev)
                        on_event(ev, share, t)
                closed = reply.get("closed")
                if closed:
                    self._ended(int(closed.get("code", 1000)), str(closed.get("reason", "")))
                    return
        except (ClientError, ValueError) as exc:
            self._ended(1006, f"poll failed: {exc}")

    def close(self) -> None:
        if self.closed.is_set() and self._reader is None:
            self.close_http()
            return
        reader, self._reader = self._reader, None
        open_session = bool(self.conn_id) and not self.closed.is_set()
        self._ended(1000, "closed by client")
        if open_session:
            try:
                with gevent.Timeout(self.timeout):
                    self.request("DELETE", f"/lp/{self.conn_id}")
            except (ClientError, gevent.Timeout):
                pass  # the server drops the session after session_ttl anyway
        if reader is not None:
            reader.kill(block=True, timeout=1)
        if hasattr(self, "_poll_http"):
            self._poll_http.close()
        self.close_http()
