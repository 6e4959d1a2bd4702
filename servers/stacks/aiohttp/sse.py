"""SSE on aiohttp.web: the stream as a StreamResponse, the commands as a route
(servers/transports/sse.py has the framing and the stream's logic).

The request's own task waits for the end; aiohttp cancels it when the client goes
away (handler_cancellation, servers/stacks/aiohttp/app.py), which ends the stream
and closes its session.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from servers.stacks.aiohttp.http import response, view
from servers.transports import sse as shared
from servers.transports.context import Context
from servers.transports.replies import Reply
from servers.transports.sessions import SessionRegistry, requested_cursor


class _Stream(shared.EventStream):
    """The shared stream, writing to a StreamResponse."""

    __slots__ = ("response",)

    def __init__(self, sessions: SessionRegistry[shared.SseSession],
                 session: shared.SseSession, heartbeat: float, resp: web.StreamResponse,
                 transport: asyncio.WriteTransport | None) -> None:
        super().__init__(sessions, session, heartbeat, transport)
        self.response = resp

    async def write(self, chunk: bytes, more: bool) -> None:
        await self.response.write(chunk)
        if not more:
            await self.response.write_eof()


def add_routes(app: web.Application, ctx: Context) -> None:
    sessions = shared.make_sessions(ctx)

    async def stream(request: web.Request) -> web.StreamResponse:
        req = view(request)
        if request.method == "HEAD":  # a probe: same auth and headers, no connection
            return response(shared.probe(ctx, req))
        opened = await sessions.open(req, requested_cursor(req, last_event_id=True))
        if isinstance(opened, Reply):
            return response(opened)
        resp = web.StreamResponse(headers=shared.HEADERS)
        try:
            await resp.prepare(request)
        except BaseException:
            await sessions.close(opened)
            raise
        # a stalled client's connection is aborted: aiohttp then finishes the response
        # quietly (or cancels this task), nothing to wait for
        await _Stream(sessions, opened, ctx.settings.heartbeat, resp, request.transport).run()
        return resp

    async def command(request: web.Request) -> web.StreamResponse:
        conn_id = request.match_info["conn"]
        return response(await sessions.command(view(request), conn_id, request.content.iter_any()))

    app.router.add_get("/sse", stream)
    app.router.add_post("/sse/{conn}", command)
