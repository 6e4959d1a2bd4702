"""Server-Sent Events client (docs/protocol.md 7.2): a streaming GET for events on a
connection of its own, one POST per command through a keep-alive pool (both on the
hand-written HTTP/1.1 client, `loadgen.aio.http11`, which says why not aiohttp).

The event stream needs no task: body chunks are parsed as the connection receives
them (`http11.Connection.stream` -> `loadgen.sse_parser.SseParser` -> `_on_sse`), and
`recv_us` is taken when a read arrives, before parsing.

`resume=` (a `client.cursor`) goes as `?resume=`; the server also writes the cursor
after each event that moves it as the event's `id:`, kept in `last_id` (what a
browser's EventSource would send back as `Last-Event-ID`). The stream's last event,
`close`, gives the section 6 code; a stream that just ends is 1006, a malformed one
1002.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from loadgen.aio.base import ABNORMAL, CallbackError, CloseInfo, TokenPlacement
from loadgen.aio.http11 import Connection, HttpSessionClient, Pool, refused
from loadgen.sse_parser import SseError, SseParser
from loadgen.wire import close_of
from servers.core.cursor import RESUME_PARAM, encode_cursor


class SseClient(HttpSessionClient):
    transport = "sse"
    _stream: Connection | None = None
    _close_info: CloseInfo | None = None  # the server's `close` event, or why we cut
    _welcome_seen = False
    _parser: SseParser | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        token: str | None,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - kept as the per-command reply timeout
        token_in: TokenPlacement = "header",
        first: Sequence[dict[str, Any]] = (),
        http: Pool | object | None = None,
        resume: Mapping[str, Any] | None = None,
        tls_ca: str | None = None,
    ) -> SseClient:
        """Open the event stream, wait for `welcome`, then send `first`.

        `http`: a shared `http11.Pool` for the commands (see `http11.pool_of`).
        `resume`: a `cursor` of an earlier connection; the server sends what was missed
        since, then the live stream (ServerClosed 4400 if the cursor is refused)."""
        self = cls(url, token, token_in, timeout, http, resume, tls_ca)
        params = {} if resume is None else {RESUME_PARAM: encode_cursor(resume)}
        try:
            self._stream = await self.connection()
            self._parser = SseParser(self._on_sse)
            head = await self._stream.stream(
                "GET", self.target("/sse", **params),
                {**self._headers, "accept": "text/event-stream"},
                self._feed, self._on_end, timeout)
        except BaseException:
            await self._abandon()
            raise
        if head.status != 200:
            await self._abandon()
            raise refused(head)
        await self._await_welcome()
        self.command_path = f"/sse/{self.welcome['conn']}"
        for cmd in first:
            await self.send_raw(orjson.dumps(cmd))
        return self

    @property
    def last_id(self) -> str:
        """The last `id:` the stream carried (the server's cursor, encoded), or ""."""
        return self._parser.last_id.decode() if self._parser is not None else ""

    def _feed(self, chunk: bytes, recv_us: int) -> None:
        """A body chunk of the stream; a malformed stream or a failing `on_event` ends it."""
        assert self._parser is not None
        try:
            self._parser.feed(chunk, recv_us)
        except (SseError, orjson.JSONDecodeError, CallbackError) as exc:
            self._close_info = self._reader_error(exc)
            if self._stream is not None:
                self._stream.close()  # -> _on_end

    def _on_sse(self, event: bytes, data: bytes, recv_us: int) -> None:
        body = orjson.loads(data)
        if not self._welcome_seen:
            self._welcome_seen = True
            self._set_welcome(body)
        elif body.get("type") != "close":
            self._deliver(body, recv_us)
        else:
            self._close_info = CloseInfo(*(close_of(body) or (ABNORMAL, "")))

    def _on_end(self, exc: BaseException | None) -> None:
        info = self._close_info
        if info is None:
            why = "event stream ended" if exc is None else f"event stream failed: {exc}"
            info = CloseInfo(ABNORMAL, why)
        self._finish(info)

    async def close(self) -> None:
        self._closing = True
        if self._stream is not None:
            await self._stream.aclose()
        self._finish(None)
        await self._close_pool()
