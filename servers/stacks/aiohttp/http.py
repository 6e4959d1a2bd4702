"""aiohttp requests in, shared Replies out: what the stack's adapters have in common."""

from __future__ import annotations

from aiohttp import web

from servers.transports.context import RequestView, parse_subprotocols
from servers.transports.replies import Reply


def view(request: web.BaseRequest, websocket: bool = False) -> RequestView:
    """What the shared logic reads from a request (or a WebSocket handshake)."""
    subprotocols = (
        parse_subprotocols(request.headers.get("sec-websocket-protocol", "")) if websocket else ()
    )
    return RequestView(request.headers, request.query, subprotocols)


def response(reply: Reply) -> web.Response:
    resp = web.Response(status=reply.status, body=reply.body or None, headers=reply.headers)
    if reply.content_type is not None:
        resp.content_type = reply.content_type
    return resp


def transport_gone(request: web.BaseRequest) -> bool:
    """The client's connection is closed or closing (nobody will read a response)."""
    transport = request.transport
    return transport is None or transport.is_closing()
