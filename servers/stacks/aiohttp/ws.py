"""WebSocket on aiohttp.web: the pump between WebSocketResponse and the hub
(servers/transports/ws.py has the handshake rules and the sender)."""

from __future__ import annotations

import logging

from aiohttp import WSMsgType, web

from servers.core.connection import Connection
from servers.settings import Settings
from servers.stacks.aiohttp.http import view
from servers.transports import ws as shared
from servers.transports.context import Context

log = logging.getLogger("rtbench.ws")

_DATA = (WSMsgType.TEXT, WSMsgType.BINARY)  # anything else ends the loop: close or error


def _websocket(settings: Settings, subprotocol: str | None) -> web.WebSocketResponse:
    """A WebSocketResponse with the shared limits: frame size, keepalive, no compression."""
    ping = shared.keepalive(settings)
    ws = web.WebSocketResponse(
        protocols=(subprotocol,) if subprotocol else (),
        heartbeat=ping,
        compress=shared.PER_MESSAGE_DEFLATE,
        max_msg_size=shared.max_message_size(settings),
    )
    if ping is not None:
        # aiohttp waits heartbeat / 2 for the pong; the protocol (6.1) gives a peer
        # `heartbeat` to answer. `_pong_heartbeat` is internal (aiohttp 3.x; pyproject pins <4)
        ws._pong_heartbeat = ping
    return ws


class _Sender(shared.Sender):
    """The shared sender, writing to a WebSocketResponse."""

    __slots__ = ("ws",)

    def __init__(self, ws: web.WebSocketResponse, conn: Connection) -> None:
        super().__init__(conn)
        self.ws = ws

    async def send_text(self, text: str) -> None:
        await self.ws.send_str(text)

    async def close_socket(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode())


def add_routes(app: web.Application, ctx: Context) -> None:
    hub = ctx.hub

    async def endpoint(request: web.Request) -> web.StreamResponse:
        accepted: list[web.WebSocketResponse] = []

        async def accept(subprotocol: str | None) -> None:
            ws = _websocket(ctx.settings, subprotocol)
            await ws.prepare(request)
            accepted.append(ws)

        async def close(code: int, reason: str) -> None:
            await accepted[0].close(code=code, message=reason.encode())

        conn = await shared.handshake(ctx, view(request, websocket=True), accept, close)
        ws = accepted[0]
        if conn is None:
            return ws
        sender = _Sender(ws, conn)
        try:
            sender.start()
            while (msg := await ws.receive()).type in _DATA:
                await hub.handle_raw(conn, msg.data)
        except Exception:
            log.exception("ws connection %s failed", conn.id)
        finally:
            # a client whose socket is gone cancels this task (handler_cancellation),
            # maybe while the sender's close is awaited: the hub hears of it anyway
            try:
                await sender.stop()
            finally:
                await hub.close(conn)
        return ws

    app.router.add_get("/ws", endpoint)
