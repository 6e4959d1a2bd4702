"""HTTP server stacks for the ws, sse and longpoll transports (`rtbench serve --stack`).

Each stack is a package with the same modules: `app.py` (the application with
/healthz and /metrics, and `run`), `ws.py`, `sse.py` and `longpoll.py`, thin pumps
between the framework and the transport logic of servers/transports/, which is
framework-free and shared. Both stacks serve the same endpoints and the same wire
protocol (docs/protocol.md) on the same hub and broker:

- `starlette`: Starlette on uvicorn (uvloop, httptools, websockets-sansio); the default.
- `aiohttp`: aiohttp.web on its own server (uvloop when installed).

Where they differ, the stack's `app.py` docstring says so.
"""

from __future__ import annotations

import importlib

from servers.core.hub import Hub
from servers.settings import STACKS, Settings

__all__ = ["STACKS", "run"]


def run(settings: Settings, hub: Hub) -> int:
    """Serve `settings.transport` on `settings.stack` until SIGINT/SIGTERM; the exit code."""
    if settings.stack not in STACKS:
        raise ValueError(f"stack {settings.stack!r}: expected one of {', '.join(STACKS)}")
    module = importlib.import_module(f"servers.stacks.{settings.stack}.app")
    code: int = module.run(settings, hub)
    return code
