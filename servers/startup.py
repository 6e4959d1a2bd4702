"""Start-up failures a user can fix: each is one line that names the address and the fix.

`rtbench serve` prints it and exits 2 (servers/serve.py) instead of a traceback. Every
transport checks in the same order: its ports are bound first (nothing listens yet), then
the hub starts (the broker connects), then the port listens (servers/transports/listen.py).
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING

from servers.core.errors import BrokerUnavailable
from servers.settings import Settings, redact_url

if TYPE_CHECKING:
    from servers.core.hub import Hub


class StartupError(Exception):
    """The server cannot start for a reason the user can fix; the message is one line."""


def cannot_listen(host: str, port: int, exc: OSError, flag: str = "--port") -> StartupError:
    """Binding `host:port` failed: say why and which flag to change."""
    if isinstance(exc, socket.gaierror):
        why = f"unknown host ({exc.strerror}); pass --host an address of this machine"
    elif exc.errno == errno.EADDRINUSE:
        why = f"address already in use; stop the process that holds it or pick another {flag}"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = ("address not available; --host must be an address of this machine "
               "(127.0.0.1, 0.0.0.0, ...)")
    elif exc.errno == errno.EACCES:
        why = f"permission denied (ports below 1024 need privileges); pick another {flag}"
    else:
        why = exc.strerror or str(exc)
    return StartupError(f"cannot listen on {host}:{port}: {why}")


async def start_hub(hub: Hub, s: Settings) -> None:
    """`hub.start()`, with an unreachable broker turned into a StartupError naming the fix."""
    try:
        await hub.start()
    except BrokerUnavailable as exc:
        url = redact_url(s.redis_url)
        # one line, without the empty tail of a bare TimeoutError
        detail = " ".join(str(exc).replace(s.redis_url, url).split()).rstrip(": ")
        if url not in detail:
            detail = f"Redis at {url}: {detail}"
        raise StartupError(
            f"{detail}; start redis-server (or point --redis-url / RTBENCH_REDIS_URL at a "
            "running Redis), or run a single node without Redis: --broker memory") from None
