"""WebSocket transport: Starlette + uvicorn. One JSON command or event per text frame."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from servers.core.connection import Connection
from servers.core.cursor import RESUME_HEADER, RESUME_PARAM, Cursor, decode_cursor
from servers.core.errors import AuthError, BrokerUnavailable, ProtocolError
from servers.core.hub import Hub
from servers.core.types import CloseReason
from servers.transports import eager
from servers.transports.http import (
    SUBPROTOCOL,
    TOKEN_SUBPROTOCOL_PREFIX,
    Context,
    offered_subprotocols,
)

log = logging.getLogger("rtbench.ws")

def _subprotocol(ws: WebSocket) -> str | None:
    offered = offered_subprotocols(ws)
    if SUBPROTOCOL in offered:
        return SUBPROTOCOL
    # a browser that sent only `bearer.<token>` must get one of its offers back
    return next((p for p in offered if p.startswith(TOKEN_SUBPROTOCOL_PREFIX)), None)


class _Sender:
    """Outbox -> socket, started eagerly when events arrive: the frames are written in
    the delivering callback itself, and only a send that has to wait (the client reads
    slower than we write) goes on as a task until the outbox is empty.

    An idle connection holds this small object and no task (about 1 KB less per held
    connection than a permanent pump). When the outbox closes, the socket is closed
    with the outbox's reason once what was queued has been written.
    """

    __slots__ = ("conn", "runner", "send")

    def __init__(self, send: Send, conn: Connection) -> None:
        self.send = send
        self.conn = conn
        self.runner = eager.Runner()

    def ready(self) -> None:
        self.runner.run(self._drain)

    async def _drain(self) -> None:
        outbox, send = self.conn.outbox, self.send
        try:
            while events := outbox.take():
                for ev in events:
                    if outbox.close_reason is CloseReason.SLOW_CONSUMER:
                        outbox.take()  # it fell behind: drop the backlog, say why, go
                        break
                    await send({"type": "websocket.send", "text": ev.text()})
                del events
            if outbox.close_reason is not None:
                reason = outbox.close_reason
                with contextlib.suppress(Exception):
                    await send({"type": "websocket.close", "code": int(reason),
                                "reason": reason.text})
        except Exception:
            outbox.listen(None)  # the socket is gone; the reader sees the disconnect

    async def stop(self) -> None:
        self.conn.outbox.listen(None)
        task = self.runner.cancel()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task


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
        conn.outbox.listen(sender.ready)
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
            await sender.stop()
            await hub.close(conn)

    async def _handshake(self, ws: WebSocket) -> Connection | None:
        """Authenticate, accept, open the hub connection; None when refused (and closed).

        Its own coroutine so that the Starlette WebSocket object (and what it caches)
        is not kept for the connection's lifetime.
        """
        hub = self.hub
        try:
            user = self.ctx.authenticate(ws)
        except AuthError as exc:
            # close after accept so that browsers can read the code and reason
            await ws.accept(_subprotocol(ws))
            await ws.close(int(CloseReason.UNAUTHORIZED), exc.message[:120])
            return None
        await ws.accept(_subprotocol(ws))
        try:
            return await hub.open(user, "json", _cursor(ws, hub))
        except ProtocolError as exc:  # a bad resume cursor: refused like a bad token
            reason = f"{exc.code}: {exc.message}".encode()[:120].decode(errors="ignore")
            await ws.close(int(CloseReason.BAD_REQUEST), reason)  # 123 bytes at most
        except BrokerUnavailable as exc:
            await ws.close(int(CloseReason.INTERNAL), f"unavailable: {exc}"[:120])
        return None


def _cursor(ws: WebSocket, hub: Hub) -> Cursor | None:
    """The resume cursor of `?resume=` or the `X-Rtbench-Resume` header, if any."""
    raw = ws.query_params.get(RESUME_PARAM) or ws.headers.get(RESUME_HEADER)
    return decode_cursor(raw, hub.limits) if raw else None


def routes(ctx: Context) -> list[BaseRoute]:
    return [WebSocketRoute("/ws", _Endpoint(ctx))]
