"""gevent-friendly clients, one per transport, one API (see `loadgen.clients.base`).

Importing this package imports no gevent: the sans-I/O framing modules
(`wsframes`, `ssefmt`) are tested in the plain pytest process. The clients
themselves (and `base`) need a gevent-patched process, such as Locust's.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loadgen.clients.base import Client

TRANSPORTS = ("ws", "sse", "longpoll", "grpc")
_MODULES = {"ws": ("ws", "WsClient"), "sse": ("sse", "SseClient"),
            "longpoll": ("longpoll", "LongPollClient"), "grpc": ("grpc", "GrpcClient")}

__all__ = ["TRANSPORTS", "client_class"]


def client_class(transport: str) -> type[Client]:
    """The client class of `transport` (imported on use: a WS run never imports grpc)."""
    try:
        module, name = _MODULES[transport]
    except KeyError:
        raise ValueError(f"transport {transport!r}: expected one of {', '.join(TRANSPORTS)}"
                         ) from None
    cls: type[Client] = getattr(importlib.import_module(f"loadgen.clients.{module}"), name)
    return cls
