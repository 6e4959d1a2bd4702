"""asyncio clients for the four rtbench transports, one API (docs/protocol.md): WebSocket on
aiohttp's client, SSE and long-poll on a hand-written HTTP/1.1 client (`loadgen.aio.http11`:
aiohttp's was measurably the bottleneck there, its docstring has the figures), gRPC on
grpc.aio.

    client = await connect("ws", "http://127.0.0.1:8000", token)
    await client.join("lobby")
    await client.publish("lobby", {"text": "hi"})
    ev = await client.next_event("message")

Events that are not replies to the client's own commands go to `client.on_event`
when set (nothing is buffered then; set it right after `connect`), otherwise to a
buffer read with `next_event(types, timeout)` / `take_events(types)`. Each is a
`Received` (`type`, decoded `body`, local `recv_us`). A failed command raises
CommandError; a connection the server refused or ended raises ServerClosed, and
`closed_reason` then says why (section 6 code and reason). An `on_event` that raises
ends the connection (1006) and goes to the loop's exception handler.

`url` is the server's base URL (`http://host:port`; `grpc://host:port` for gRPC; over TLS
`https://` (or `wss://`) and `grpcs://`, whose certificate every client verifies against
`tls_ca=` (a PEM CA file; None: the system's trust store)).
Options common to all transports: `timeout` (handshake and command replies) and
`first` (commands sent as soon as the transport allows, before `welcome` is
awaited; their replies arrive as events). Per transport: `token_in`
("header", "query"; WebSocket also "subprotocol"), `http` (a pool shared by many
clients, each otherwise has its own: SSE and long-poll, an `http11.Pool`; WebSocket, an
aiohttp.ClientSession from `http_session()`; anything else is ignored with a
DeprecationWarning), `poll_timeout` (long-poll), `channel` (gRPC: a shared channel).

The wire rules are shared with the gevent clients (`loadgen.clients`): `loadgen.wire`,
`loadgen.sse_parser`, `loadgen.grpc_codec`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loadgen.aio.base import (
    Client,
    ClientError,
    CloseInfo,
    CommandError,
    EventCallback,
    Received,
    ServerClosed,
)

if TYPE_CHECKING:
    import aiohttp

TRANSPORTS = ("ws", "sse", "longpoll", "grpc")

__all__ = [
    "TRANSPORTS",
    "Client",
    "ClientError",
    "CloseInfo",
    "CommandError",
    "EventCallback",
    "Received",
    "ServerClosed",
    "connect",
    "http_session",
]


def http_session() -> aiohttp.ClientSession:
    """An aiohttp.ClientSession to share among many WebSocket clients as `http=` (no
    connection limit: `loadgen.aio.ws.http_session`); `await session.close()` when done."""
    from loadgen.aio.ws import http_session as make

    return make()


async def connect(transport: str, url: str, token: str | None, **opts: Any) -> Client:
    """Open one connection and wait for its `welcome` (ServerClosed if refused).

    `opts` go to the transport's client; every transport takes `timeout` and
    `resume=<an earlier client's .cursor>` (docs/protocol.md 4.1: the missed events,
    then the live stream; a refused cursor is ServerClosed 4400)."""
    # imported on use: a WebSocket run should not pay for importing grpc
    if transport == "ws":
        from loadgen.aio.ws import WsClient

        return await WsClient.open(url, token, **opts)
    if transport == "sse":
        from loadgen.aio.sse import SseClient

        return await SseClient.open(url, token, **opts)
    if transport == "longpoll":
        from loadgen.aio.longpoll import LongPollClient

        return await LongPollClient.open(url, token, **opts)
    if transport == "grpc":
        from loadgen.aio.grpc import GrpcClient

        return await GrpcClient.open(url, token, **opts)
    raise ValueError(f"transport {transport!r}: expected one of {', '.join(TRANSPORTS)}")
