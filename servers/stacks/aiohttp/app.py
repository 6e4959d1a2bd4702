"""The aiohttp stack: one aiohttp.web Application per HTTP transport plus /healthz and
/metrics, on aiohttp's own server (uvloop when installed, like uvicorn's "auto").

Where it differs from the Starlette stack (docs/protocol.md holds for both):

- A request's handler is cancelled when its client disconnects (aiohttp's
  `handler_cancellation`): that is how an SSE stream or a held poll learns the client
  left (Starlette reads `http.disconnect`). A command whose client leaves mid-request
  may therefore be cut short, as on gRPC; the hub is safe to cancel at any await.
- WebSocket keepalive: aiohttp sends a ping after `heartbeat` seconds without
  receiving anything from the client (uvicorn: every `heartbeat` seconds); a peer
  that does not answer within `heartbeat` is dropped on both, so a dead peer is
  closed within 2 x `heartbeat` (6.1) either way.
- `--ws-impl` is uvicorn's and is ignored; a plain GET /ws (no upgrade) gets 400
  rather than 404.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal

import orjson
from aiohttp import web

from servers import metrics
from servers.core.hub import Hub
from servers.settings import Settings
from servers.stacks.aiohttp.http import response
from servers.startup import load_tls, start_hub
from servers.transports.context import Context, keepalive_timeout, max_header_bytes
from servers.transports.listen import BACKLOG, server_socket
from servers.transports.replies import json_reply

log = logging.getLogger("rtbench.http")

_ADAPTERS = {"ws": "servers.stacks.aiohttp.ws", "sse": "servers.stacks.aiohttp.sse",
             "longpoll": "servers.stacks.aiohttp.longpoll"}
SHUTDOWN_TIMEOUT = 5.0  # how long a stop waits for open requests (uvicorn's graceful timeout)


def build_app(ctx: Context) -> web.Application:
    """aiohttp app for one HTTP transport plus /healthz and /metrics; its startup starts
    the hub and its cleanup shuts it down."""
    hub = ctx.hub
    registry = metrics.make_registry(hub, ctx.settings.transport)

    async def healthz(request: web.Request) -> web.StreamResponse:
        return response(json_reply(orjson.dumps(ctx.health())))

    async def metrics_endpoint(request: web.Request) -> web.StreamResponse:
        return web.Response(body=metrics.render(registry),
                            headers={"content-type": metrics.CONTENT_TYPE})

    async def start(app: web.Application) -> None:
        await start_hub(hub, ctx.settings)  # StartupError (one line) if the broker is not there

    async def stop_hub(app: web.Application) -> None:
        await hub.shutdown()

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    importlib.import_module(_ADAPTERS[ctx.settings.transport]).add_routes(app, ctx)
    app.on_startup.append(start)
    app.on_cleanup.append(stop_hub)
    return app


async def serve(s: Settings, hub: Hub) -> None:
    """Serve until SIGINT/SIGTERM, then tell every connection to go away (1001), wait for
    open requests (at most SHUTDOWN_TIMEOUT) and stop the hub."""
    tls = load_tls(s)  # first: a bad certificate or key is one line (StartupError)
    ctx = Context.create(s, hub)
    runner = web.AppRunner(
        build_app(ctx),
        handle_signals=False,  # ours, below: the connections hear the signal first
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        keepalive_timeout=keepalive_timeout(s),
        access_log=None,
        # aiohttp refuses lines and fields over 8190 bytes; httptools (uvicorn) has no limit
        max_line_size=max_header_bytes(s),
        max_field_size=max_header_bytes(s),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # bound first (a taken port fails before Redis is tried), listening once the hub started
    sock = server_socket(s.host, s.port, s.tcp_user_timeout)
    try:
        await runner.setup()  # starts the hub
    except BaseException:
        sock.close()
        raise
    try:
        site = web.SockSite(runner, sock, backlog=BACKLOG,
                            ssl_context=tls.context if tls else None)
        await site.start()
        await stop.wait()
        ctx.exit_signal()
    finally:
        await runner.cleanup()


def run(s: Settings, hub: Hub) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(s, hub))
    return 0
