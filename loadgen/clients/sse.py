"""Server-Sent Events client: one streaming GET /sse, commands as POST /sse/{conn}."""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from loadgen.clients.base import ClientError
from loadgen.clients.http import HttpClient, error_from
from loadgen.clients.ssefmt import SseParser, chunk_overhead
from loadgen.measure import now_us

STREAM_IDLE_TIMEOUT = 120.0  # seconds without a byte (the server comments every heartbeat)


class SseClient(HttpClient):
    transport: ClassVar[str] = "sse"

    _stream: Any = None

    def command_path(self) -> str:
        return f"/sse/{self.conn_id}"

    def _open(self) -> dict[str, Any]:
        self._stream_http = self._client(1, STREAM_IDLE_TIMEOUT)
        headers = {**self.auth, "Accept": "text/event-stream", "Cache-Control": "no-cache"}
        try:
            resp = self._stream_http.get("/sse", headers=headers)
        except OSError as exc:
            self._stream_http.close()
            raise ClientError("connect_failed", f"{self.url}: {exc!r}") from None
        if resp.status_code != 200:
            body = resp.read()
            resp.release()
            self._stream_http.close()
            raise error_from(int(resp.status_code), body)
        self._stream = resp
        self._parser = SseParser()
        first = self._next_event()
        if first is None:
            raise ClientError("closed", "stream ended before welcome")
        return first[0]

    def _next_event(self) -> tuple[dict[str, Any], int] | None:
        """Read lines until one event is complete; None at end of stream."""
        readline = self._stream.readline
        parser = self._parser
        start = parser.nbytes
        while True:
            raw = readline(b"\n")
            if not raw:
                return None
            data = parser.line(raw)
            if data is not None:
                n = parser.nbytes - start
                return orjson.loads(data), n + chunk_overhead(n)

    def _read_loop(self) -> None:
        readline = self._stream.readline
        parser = self._parser
        line = parser.line
        loads = orjson.loads
        on_event = self.on_event
        start = parser.nbytes
        try:
            while True:
                raw = readline(b"\n")
                if not raw:
                    self._ended(1006, "stream ended by the server")
                    return
                data = line(raw)
                if data is not None:
                    t = now_us()
                    n = parser.nbytes - start
                    start = parser.nbytes
                    on_event(loads(data), n + chunk_overhead(n), t)
        except (OSError, ValueError) as exc:  # socket errors, parse errors, bad JSON
            self._ended(1006, f"stream lost: {exc!r}")

    def close(self) -> None:
        self._ended(1000, "closed by client")
        if self._stream is not None:
            stream, self._stream = self._stream, None
            if self._reader is not None:
                self._reader.kill(block=True, timeout=1)
            stream.release()
            self._stream_http.close()
        self.close_http()
