"""gevent-friendly clients, one per transport, one API (see `loadgen.clients.base`).

Importing this package imports no gevent: the sans-I/O framing modules
(`wsframes`, `ssestream`, `httpresponse`, `grpcframes`) are tested in the plain pytest
process. The clients themselves (and `base`) need a gevent-patched process, such as Locust's.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loadgen.clients.base import Client

TRANSPORTS = ("ws", "sse", "longpoll", "grpc")
# gRPC: "h2" (own HTTP/2 on a gevent socket, `grpc_h2`) or "grpcio" (its gevent mode)
GRPC_CLIENTS = ("h2", "grpcio")
_MODULES = {"ws": ("ws", "WsClient"), "sse": ("sse", "SseClient"),
            "longpoll": ("longpoll", "LongPollClient"), "grpc": ("grpc_h2", "GrpcH2Client"),
            "grpc/grpcio": ("grpc", "GrpcClient")}

__all__ = ["GRPC_CLIENTS", "TRANSPORTS", "client_class"]


def client_class(transport: str, grpc_client: str = "h2") -> type[Client]:
    """The client class of `transport` (imported on use: a WS run never imports grpc)."""
    if grpc_client not in GRPC_CLIENTS:
        raise ValueError(f"gRPC client {grpc_client!r}: expected one of "
                         f"{', '.join(GRPC_CLIENTS)}")
    key = "grpc/grpcio" if transport == "grpc" and grpc_client == "grpcio" else transport
    try:
        module, name = _MODULES[key]
    except KeyError:
        raise ValueError(f"transport {transport!r}: expected one of {', '.join(TRANSPORTS)}"
                         ) from None
    cls: type[Client] = getattr(importlib.import_module(f"loadgen.clients.{module}"), name)
    return cls
