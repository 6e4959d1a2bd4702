"""SSE on Starlette + uvicorn: the stream as a raw ASGI response, the commands as a route
(servers/transports/sse.py has the framing and the stream's logic).

A raw ASGI response rather than sse-starlette's EventSourceResponse: that one runs
four tasks per connection (stream, ping, disconnect listener, shutdown watcher) and
measured 42-46 KiB of server RSS per idle stream against 17-19 KiB for this one
(results/published/history-20261127-20261128.json, server-choices-20261128), where
the request's own task waits for the end and one small task waits for the client to
go away.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from servers.stacks.starlette.http import Held, response, view
from servers.transports import sse as shared
from servers.transports.context import Context
from servers.transports.replies import Reply
from servers.transports.sessions import SessionRegistry, requested_cursor

_HEADERS = [(k.encode(), v.encode()) for k, v in shared.HEADERS.items()]


def _transport(receive: Receive) -> asyncio.WriteTransport | None:
    """The transport under an ASGI request, if the server lets us see it.

    uvicorn (httptools and h11 alike) passes the bound `receive` of its request cycle,
    which holds the transport; Starlette's middleware passes `receive` through as is.
    """
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    needed = ("abort", "get_write_buffer_size", "get_write_buffer_limits")
    return transport if all(callable(getattr(transport, n, None)) for n in needed) else None


class _Stream(shared.EventStream):
    """The shared stream as an ASGI app, writing `http.response.body` messages."""

    __slots__ = ("send",)

    def __init__(self, sessions: SessionRegistry[shared.SseSession],
                 session: shared.SseSession, heartbeat: float) -> None:
        super().__init__(sessions, session, heartbeat, None)
        self.send: Send | None = None

    async def write(self, chunk: bytes, more: bool) -> None:
        assert self.send is not None
        await self.send({"type": "http.response.body", "body": chunk, "more_body": more})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.transport = _transport(receive)
        self.send = send
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        watch = asyncio.create_task(self._watch(receive))
        try:
            if await self.run():
                # the server learns of the abort a moment later: returning before it has
                # would have it log (and close) an unfinished response
                await asyncio.wait({watch}, timeout=1.0)
        finally:
            watch.cancel()

    async def _watch(self, receive: Receive) -> None:
        """Close the session as soon as the client goes away (the stream then ends)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        await self.client_left()


def routes(ctx: Context) -> list[BaseRoute]:
    sessions = shared.make_sessions(ctx)

    async def stream(request: Request) -> ASGIApp:
        req = view(request)
        if request.method == "HEAD":  # a probe: same auth and headers, no connection
            return response(shared.probe(ctx, req))
        opened = await sessions.open(req, requested_cursor(req, last_event_id=True))
        if isinstance(opened, Reply):
            return response(opened)
        return _Stream(sessions, opened, ctx.settings.heartbeat)

    async def command(request: Request) -> ASGIApp:
        conn_id: str = request.path_params["conn"]
        return response(await sessions.command(view(request), conn_id, request.stream()))

    return [
        Route("/sse", Held(stream), methods=["GET"]),
        Route("/sse/{conn}", command, methods=["POST"]),
    ]
