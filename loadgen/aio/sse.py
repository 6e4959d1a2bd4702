"""Server-Sent Events client (docs/protocol.md 7.2): a streaming GET for events on a
connection of its own, one POST per command through a keep-alive pool.

The event stream needs no task: body chunks are parsed as the connection
receives them (`http11.Connection.stream` -> `SseParser` -> `_on_sse`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from loadgen.aio.base import ABNORMAL, CloseInfo, TokenPlacement
from loadgen.aio.http11 import Connection, HttpSessionClient, refused
from loadgen.aio.sse_parser import SseParser

if TYPE_CHECKING:
    import httpx

    from loadgen.aio.http11 import Pool


class SseClient(HttpSessionClient):
    transport = "sse"
    _stream: Connection | None = None
    _close_info: CloseInfo | None = None  # from the server's `close` event
    _welcome_seen = False

    @classmethod
    async def open(
        cls,
        url: str,
        token: str | None,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - kept as the per-command reply timeout
        token_in: TokenPlacement = "header",
        first: Sequence[dict[str, Any]] = (),
        http: Pool | httpx.AsyncClient | None = None,
    ) -> SseClient:
        """Open the event stream, wait for `welcome`, then send `first`.

        `http`: a shared `http11.Pool` for the commands; an httpx client is ignored."""
        self = cls(url, token, token_in, timeout, http)
        try:
            self._stream = await self.connection()
            parser = SseParser(self._on_sse)
            head = await self._stream.stream(
                "GET", self.target("/sse"), {**self._headers, "accept": "text/event-stream"},
                parser.feed, self._on_end, timeout)
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

    def _on_sse(self, event: bytes, data: bytes, recv_us: int) -> None:
        body = orjson.loads(data)
        if not self._welcome_seen:
            self._welcome_seen = True
            self._set_welcome(body)
        elif body.get("type") == "close":
            self._close_info = CloseInfo(int(body["code"]), str(body.get("reason", "")))
        else:
            self._deliver(body, recv_us)

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
