"""Long-polling on Starlette: routes onto the shared endpoints
(servers/transports/longpoll.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from servers.stacks.starlette.http import Held, response, view
from servers.transports.context import Context
from servers.transports.longpoll import LongPoll
from servers.transports.replies import Reply


def routes(ctx: Context) -> list[BaseRoute]:
    lp = LongPoll(ctx)

    async def connect(request: Request) -> Response:
        return response(await lp.connect(view(request)))

    async def poll(request: Request) -> Response:
        checked = lp.check_poll(view(request), request.path_params["conn"], request.method)
        if isinstance(checked, Reply):
            return response(checked)
        # Reads the (empty) request message now, so that the check after the
        # wait sees only a disconnect.
        await request.is_disconnected()
        return response(await lp.poll(*checked, request.is_disconnected))

    async def command(request: Request) -> Response:
        conn_id: str = request.path_params["conn"]
        return response(await lp.command(view(request), conn_id, request.stream()))

    async def delete(request: Request) -> Response:
        return response(await lp.delete(view(request), request.path_params["conn"]))

    return [
        Route("/lp/connect", connect, methods=["POST"]),
        Route("/lp/{conn}/poll", Held(poll), methods=["GET"]),
        Route("/lp/{conn}", command, methods=["POST"]),
        Route("/lp/{conn}", delete, methods=["DELETE"]),
    ]
