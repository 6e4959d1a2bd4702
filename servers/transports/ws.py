"""WebSocket transport: Starlette + uvicorn. One JSON command or event per text frame."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from servers.core.errors import AuthError, BrokerUnavailable
from servers.core.hub import Connection, Hub
from servers.core.types import CloseReason, Event
from servers.transports.http import SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX, Context

log = logging.getLogger("rtbench.ws")

CLOSE_TEXT = {
    CloseReason.GOING_AWAY: "server shutting down",
    CloseReason.SLOW_CONSUMER: "slow consumer: outbound queue full",
    CloseReason.NORMAL: "",
}


def _subprotocol(ws: WebSocket) -> str | None:
    offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",")]
    if SUBPROTOCOL in offered:
        return SUBPROTOCOL
    # a browser that sent only `bearer.<token>` must get one of its offers back
    return next((p for p in offered if p.startswith(TOKEN_SUBPROTOCOL_PREFIX)), None)


async def _pump(ws: WebSocket, conn: Connection) -> None:
    """Outbox -> socket. Ends when the outbox closes; then closes the socket with its reason."""
    outbox = conn.outbox
    send = ws.send
    while await _send_batch(send, await outbox.get()):
        pass
    reason = outbox.close_reason or CloseReason.NORMAL
    with contextlib.suppress(Exception):
        await ws.close(int(reason), CLOSE_TEXT.get(reason, reason.name.lower()))


async def _send_batch(send: Send, events: list[Event]) -> bool:
    """Write one batch; a function of its own so that no sent event stays referenced
    while the pump waits for the next batch (an idle connection holds nothing)."""
    for ev in events:
        await send({"type": "websocket.send", "text": ev.text()})
    return bool(events)


class _Endpoint:
    """The /ws endpoint as a plain ASGI app: a class instance, so Starlette routes to it
    without its per-session exception wrapper (about 1 KB per held connection)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.hub: Hub = ctx.hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ws = WebSocket(scope, receive, send)
        hub = self.hub
        try:
            user = self.ctx.authenticate(ws)
        except AuthError as exc:
            # close after accept so that browsers can read the code and reason
            await ws.accept(_subprotocol(ws))
            await ws.close(int(CloseReason.UNAUTHORIZED), exc.message[:120])
            return
        await ws.accept(_subprotocol(ws))
        try:
            conn = await hub.open(user, "json")
        except BrokerUnavailable as exc:
            await ws.close(int(CloseReason.INTERNAL), f"unavailable: {exc}"[:120])
            return
        pump = asyncio.create_task(_pump(ws, conn))
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
            await hub.close(conn)
            if not pump.done():
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump


def routes(ctx: Context) -> list[BaseRoute]:
    return [WebSocketRoute("/ws", _Endpoint(ctx))]
