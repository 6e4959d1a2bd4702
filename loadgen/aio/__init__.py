"""asyncio clients for the four rtbench transports, one API (docs/protocol.md).

    client = await connect("ws", "http://127.0.0.1:8000", token)
    await client.join("lobby")
    await client.publish("lobby", {"text": "hi"})
    ev = await client.next_event("message")

`url` is the server's base URL (`http://host:port`; `grpc://host:port` for gRPC).
Options common to all transports: `timeout` (handshake and command replies) and
`first` (commands sent as soon as the transport allows, before `welcome` is
awaited; their replies arrive as events). Per transport: `token_in`
("header", "query"; WebSocket also "subprotocol"), `http` (SSE/long-poll: a shared
httpx.AsyncClient), `poll_timeout` (long-poll), `channel` (gRPC: a shared channel).
"""

from __future__ import annotations

from typing import Any

from loadgen.aio.base import (
    Client,
    ClientError,
    CloseInfo,
    CommandError,
    EventCallback,
    Received,
    ServerClosed,
)

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
]


async def connect(transport: str, url: str, token: str | None, **opts: Any) -> Client:
    """Open one connection and wait for its `welcome` (ServerClosed if refused)."""
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
