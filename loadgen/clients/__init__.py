"""gevent-friendly clients, one per transport, one API (see `loadgen.clients.base`)."""

from __future__ import annotations

import importlib

from loadgen.clients.base import Client, ClientError, ConnectionClosed, OnEvent

TRANSPORTS = ("ws", "sse", "longpoll", "grpc")
_MODULES = {"ws": ("ws", "WsClient"), "sse": ("sse", "SseClient"),
            "longpoll": ("longpoll", "LongPollClient"), "grpc": ("grpc", "GrpcClient")}

__all__ = ["TRANSPORTS", "Client", "ClientError", "ConnectionClosed", "OnEvent", "client_class"]


def client_class(transport: str) -> type[Client]:
    """The client class of `transport` (imported on use: a WS run never imports grpc)."""
    try:
        module, name = _MODULES[transport]
    except KeyError:
        raise ValueError(f"transport {transport!r}: expected one of {', '.join(TRANSPORTS)}"
                         ) from None
    cls: type[Client] = getattr(importlib.import_module(f"loadgen.clients.{module}"), name)
    return cls
