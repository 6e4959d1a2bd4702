"""Starlette requests in, shared Replies out: what the stack's adapters have in common."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from servers.transports.context import RequestView, parse_subprotocols
from servers.transports.replies import Reply


def offered_subprotocols(conn: HTTPConnection) -> list[str]:
    """WebSocket subprotocols the client offered (ASGI `subprotocols`; wsproto removes the
    header from the scope, the other implementations keep it)."""
    offered = conn.scope.get("subprotocols")
    if offered is None:
        return parse_subprotocols(conn.headers.get("sec-websocket-protocol", ""))
    return list(offered)


def view(conn: HTTPConnection) -> RequestView:
    """What the shared logic reads from a request (or a WebSocket handshake)."""
    subprotocols = offered_subprotocols(conn) if conn.scope["type"] == "websocket" else ()
    return RequestView(conn.headers, conn.query_params, subprotocols)


def response(reply: Reply) -> Response:
    return Response(reply.body or None, status_code=reply.status, headers=dict(reply.headers),
                    media_type=reply.content_type)


class Held:
    """A route endpoint for requests held open (SSE streams, waiting polls).

    Starlette wraps a plain function endpoint in two exception-handling layers
    whose frames live as long as the request; held by thousands of idle clients
    they cost about 2 KiB each. This calls `handler` and the ASGI app it returns
    directly (ServerErrorMiddleware still turns a bug into a 500).
    """

    __slots__ = ("handler",)

    def __init__(self, handler: Callable[[Request], Awaitable[ASGIApp]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await (await self.handler(Request(scope, receive)))(scope, receive, send)
