"""The Starlette stack: one Starlette app per HTTP transport plus /healthz and /metrics,
served by uvicorn (uvloop, httptools, websockets-sansio by default)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from types import FrameType

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from servers import metrics
from servers.core.hub import Hub
from servers.settings import Settings
from servers.startup import load_tls, start_hub
from servers.transports import ws
from servers.transports.context import Context, keepalive_timeout
from servers.transports.listen import BACKLOG, server_socket

log = logging.getLogger("rtbench.http")

_ADAPTERS = {"ws": "servers.stacks.starlette.ws", "sse": "servers.stacks.starlette.sse",
             "longpoll": "servers.stacks.starlette.longpoll"}


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


def build_app(ctx: Context) -> App:
    """Starlette app for one HTTP transport plus /healthz and /metrics, on a started hub;
    its lifespan hooks the exit signals and shuts the hub down."""
    hub, settings = ctx.hub, ctx.settings
    registry = metrics.make_registry(hub, settings.transport)

    async def healthz(request: Request) -> Response:
        return JSONResponse(ctx.health())

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(registry), media_type=metrics.CONTENT_TYPE)

    module = importlib.import_module(_ADAPTERS[settings.transport])
    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/metrics", metrics_endpoint),
        *module.routes(ctx),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        unhook = _chain_exit_signals(ctx.exit_signal)
        try:
            yield
        finally:
            unhook()
            await hub.shutdown()

    return App(Starlette(routes=routes, lifespan=lifespan))


def run(s: Settings, hub: Hub) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code."""
    import uvicorn

    ping = ws.keepalive(s)
    # read and checked here (StartupError, one line); uvicorn loads the same files again
    tls = load_tls(s)
    config = uvicorn.Config(
        build_app(Context.create(s, hub)),
        host=s.host,
        port=s.port,
        loop="auto",  # uvloop when installed
        http="auto",  # httptools when installed
        ws=s.ws_impl,
        ws_max_size=ws.max_message_size(s),
        ws_per_message_deflate=ws.PER_MESSAGE_DEFLATE,
        ws_ping_interval=ping,
        ws_ping_timeout=ping,
        lifespan="on",
        log_level=s.log_level,
        access_log=False,
        backlog=BACKLOG,
        timeout_keep_alive=int(keepalive_timeout(s)),
        timeout_graceful_shutdown=5,
        ssl_certfile=s.tls_cert if tls else None,
        ssl_keyfile=s.tls_key if tls else None,
    )
    server = uvicorn.Server(config)
    sock = server_socket(s.host, s.port, s.tcp_user_timeout)

    async def serve() -> None:
        # The hub starts here, not in the lifespan, whose failure uvicorn prints as a
        # traceback before exiting 3: an unreachable broker raises StartupError instead.
        # Still before uvicorn's startup makes the socket listen; the lifespan's exit,
        # within uvicorn's shutdown, stops the hub. A signal meanwhile goes to uvicorn,
        # as it did while the lifespan started the hub: it serves, then stops at once.
        exit_signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, server.handle_exit) for sig in exit_signals}
        try:
            await start_hub(hub, s)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        await server.serve(sockets=[sock])

    # uvicorn re-raises the signal it caught once its graceful shutdown is done; with
    # SIGTERM ignored by then, a clean shutdown exits 0 as process managers expect
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:  # as run() does
            runner.run(serve())
    finally:
        sock.close()
    return 0 if server.started else 1
