"""The Starlette app shared by the ws, sse and longpoll transports."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import FrameType

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from servers import metrics
from servers.core.auth import TokenVerifier
from servers.core.errors import AuthError, ErrorCode, ProtocolError
from servers.core.hub import Hub
from servers.settings import Settings

log = logging.getLogger("rtbench.http")

SUBPROTOCOL = "rtbench.v1"
TOKEN_SUBPROTOCOL_PREFIX = "bearer."


@dataclass(slots=True)
class Context:
    """What an adapter needs: the hub, the settings and the token verifier."""

    hub: Hub
    settings: Settings
    verifier: TokenVerifier
    # run when SIGINT/SIGTERM arrives, before the server waits for open responses
    on_exit_signal: list[Callable[[], None]] = field(default_factory=list)

    def authenticate(self, conn: HTTPConnection) -> str:
        """The user id from the request's token, or AuthError."""
        return self.verifier.verify(token_from(conn))


def offered_subprotocols(conn: HTTPConnection) -> list[str]:
    """WebSocket subprotocols the client offered (ASGI `subprotocols`; wsproto removes the
    header from the scope, the other implementations keep it)."""
    offered = conn.scope.get("subprotocols")
    if offered is None:
        header = conn.headers.get("sec-websocket-protocol", "")
        offered = [p.strip() for p in header.split(",") if p.strip()]
    return list(offered)


def token_from(conn: HTTPConnection) -> str | None:
    """Token from `Authorization: Bearer`, a `bearer.<token>` WS subprotocol, or `?token=`."""
    header = conn.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value:
            return value.strip()
    for proto in offered_subprotocols(conn):
        if proto.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return proto[len(TOKEN_SUBPROTOCOL_PREFIX) :]
    return conn.query_params.get("token")


def auth_failed(exc: AuthError) -> JSONResponse:
    return JSONResponse(
        {"type": "error", "code": "unauthorized", "message": exc.message},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="rtbench"'},
    )


def protocol_failed(exc: ProtocolError) -> JSONResponse:
    from servers.core.errors import HTTP_STATUS

    return JSONResponse(exc.body(), status_code=HTTP_STATUS[exc.code])


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (TOO_LARGE) more than `limit` bytes without buffering it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"body of {declared} bytes exceeds the {limit} limit"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"body exceeds the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _chain_exit_signals(callback: Callable[[], None]) -> Callable[[], None]:
    """Run `callback` on the loop when SIGINT/SIGTERM arrives, then the server's own handler.

    uvicorn's graceful shutdown waits (up to its timeout) for open responses to end
    and only then runs the lifespan shutdown, so long-lived responses (SSE streams,
    held polls) would be cancelled without a word. Hearing the signal itself lets
    them send their `going_away` close first. Returns the function that unhooks it.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    saved: dict[int, Callable[[int, FrameType | None], object]] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue  # nobody (uvicorn) handles it: the default action ends the process

        def handler(signum: int, frame: FrameType | None,
                    previous: Callable[[int, FrameType | None], object] = previous) -> None:
            loop.call_soon_threadsafe(callback)
            previous(signum, frame)

        saved[sig] = previous
        signal.signal(sig, handler)

    def unhook() -> None:
        for sig, previous in saved.items():
            signal.signal(sig, previous)

    return unhook


_ADAPTERS = {"ws": "servers.transports.ws", "sse": "servers.transports.sse",
             "longpoll": "servers.transports.longpoll"}


class App:
    """The Starlette app, with WebSocket sessions routed past its middleware stack.

    Every coroutine frame between the server and the endpoint lives as long as
    the connection: Starlette's two exception middlewares and its router cost
    about 3 KiB per held WebSocket. A WebSocket has no HTTP 500 to send and the
    adapter handles its own errors, so WebSocket routes with a fixed path whose
    endpoint is an ASGI app are called directly; everything else (other
    WebSocket paths, HTTP, lifespan) goes through the full app.
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self._ws: dict[str, ASGIApp] = {
            r.path: r.app for r in app.routes
            if isinstance(r, WebSocketRoute) and "{" not in r.path
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope["app"] = self.app
            endpoint = self._ws.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
            else:
                await self.app.router(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def build_app(settings: Settings, hub: Hub) -> App:
    """Starlette app for one HTTP transport plus /healthz and /metrics."""
    ctx = Context(hub, settings, TokenVerifier(settings.secret))
    # every connection hears "going away" (1001) before uvicorn stops waiting for them
    ctx.on_exit_signal.append(hub.drain)
    registry = metrics.make_registry(hub, settings.transport)

    async def healthz(request: Request) -> Response:
        return JSONResponse(
            {"status": "ok", "transport": settings.transport, "server": hub.server_id,
             "broker": hub.broker.name, "connections": hub.connection_count}
        )

    async def metrics_endpoint(request: Request) -> Response:
        return PlainTextResponse(metrics.render(registry), media_type=metrics.CONTENT_TYPE)

    module = importlib.import_module(_ADAPTERS[settings.transport])
    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/metrics", metrics_endpoint),
        *module.routes(ctx),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.start()

        def exit_signal() -> None:
            for callback in ctx.on_exit_signal:
                try:
                    callback()
                except Exception:
                    log.exception("exit-signal callback %r failed", callback)

        unhook = _chain_exit_signals(exit_signal)
        try:
            yield
        finally:
            unhook()
            await hub.shutdown()

    return App(Starlette(routes=routes, lifespan=lifespan))
