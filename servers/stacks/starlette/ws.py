"""WebSocket on Starlette + uvicorn: the pump between ASGI messages and the hub
(servers/transports/ws.py has the handshake rules and the sender)."""

from __future__ import annotations

import logging

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from servers.core.connection import Connection
from servers.core.hub import Hub
from servers.stacks.starlette.http import view
from servers.transports import ws as shared
from servers.transports.context import Context

log = logging.getLogger("rtbench.ws")


class _Sender(shared.Sender):
    """The shared sender, writing ASGI messages."""

    __slots__ = ("send",)

    def __init__(self, send: Send, conn: Connection) -> None:
        super().__init__(conn)
        self.send = send

    async def send_text(self, text: str) -> None:
        await self.send({"type": "websocket.send", "text": text})

    async def close_socket(self, code: int, reason: str) -> None:
        await self.send({"type": "websocket.close", "code": code, "reason": reason})


class _Endpoint:
    """The /ws endpoint as a plain ASGI app: a class instance, so Starlette routes to it
    without its per-session exception wrapper (about 1 KB per held connection)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.hub: Hub = ctx.hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = await self._handshake(WebSocket(scope, receive, send))
        if conn is None:
            return
        hub = self.hub
        sender = _Sender(send, conn)
        sender.start()
        try:
            while True:
                msg = await receive()
                if msg["type"] == "websocket.disconnect":
                    break
                data = msg.get("text")
                if data is None:
                    data = msg.get("bytes") or b""
                await hub.handle_raw(conn, data)
        except Exception:
            log.exception("ws connection %s failed", conn.id)
        finally:
            try:
                await sender.stop()
            finally:
                await hub.close(conn)

    async def _handshake(self, ws: WebSocket) -> Connection | None:
        """Its own coroutine so that the Starlette WebSocket object (and what it caches)
        is not kept for the connection's lifetime."""

        async def close(code: int, reason: str) -> None:
            await ws.close(code, reason)

        return await shared.handshake(self.ctx, view(ws), ws.accept, close)


def routes(ctx: Context) -> list[BaseRoute]:
    return [WebSocketRoute("/ws", _Endpoint(ctx))]
