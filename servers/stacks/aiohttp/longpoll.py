"""Long-polling on aiohttp.web: routes onto the shared endpoints
(servers/transports/longpoll.py). A held poll whose client goes away is cancelled
by aiohttp (handler_cancellation); its events stay queued for the next poll."""

from __future__ import annotations

from aiohttp import web

from servers.stacks.aiohttp.http import response, transport_gone, view
from servers.transports.context import Context
from servers.transports.longpoll import LongPoll
from servers.transports.replies import Reply


def add_routes(app: web.Application, ctx: Context) -> None:
    lp = LongPoll(ctx)

    async def connect(request: web.Request) -> web.StreamResponse:
        return response(await lp.connect(view(request)))

    async def poll(request: web.Request) -> web.StreamResponse:
        checked = lp.check_poll(view(request), request.match_info["conn"], request.method)
        if isinstance(checked, Reply):
            return response(checked)

        async def disconnected() -> bool:
            return transport_gone(request)

        return response(await lp.poll(*checked, disconnected))

    async def command(request: web.Request) -> web.StreamResponse:
        conn_id = request.match_info["conn"]
        return response(await lp.command(view(request), conn_id, request.content.iter_any()))

    async def delete(request: web.Request) -> web.StreamResponse:
        return response(await lp.delete(view(request), request.match_info["conn"]))

    app.router.add_post("/lp/connect", connect)
    app.router.add_get("/lp/{conn}/poll", poll)
    app.router.add_post("/lp/{conn}", command)
    app.router.add_delete("/lp/{conn}", delete)
