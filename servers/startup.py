"""Start-up failures a user can fix: each is one line that names the address and the fix.

`rtbench serve` prints it and exits 2 (servers/serve.py) instead of a traceback. Every
transport checks in the same order: the TLS certificate and key are read (`load_tls`),
its ports are bound (nothing listens yet), then the hub starts (the broker connects), then
the port listens (servers/transports/listen.py).
"""

from __future__ import annotations

import errno
import socket
import ssl
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class ServerTls:
    """The server's TLS material, read and checked at start: an SSLContext for the HTTP
    stacks and the PEM bytes for grpcio (which takes bytes, not a context)."""

    context: ssl.SSLContext
    cert_pem: bytes
    key_pem: bytes


def load_tls(s: Settings) -> ServerTls | None:
    """The TLS material of `--tls-cert`/`--tls-key` (None without them); a file that cannot
    be read, or a pair that is not a PEM certificate chain and its key, is a StartupError
    naming the flag and the file."""
    if not s.tls_cert:
        return None
    pems: list[bytes] = []
    for flag, path in (("--tls-cert", s.tls_cert), ("--tls-key", s.tls_key)):
        try:
            with open(path, "rb") as f:
                pems.append(f.read())
        except OSError as exc:
            raise StartupError(f"{flag} {path}: cannot read it ({exc.strerror or exc}); pass a "
                               "readable PEM file (or RTBENCH_TLS_CERT / RTBENCH_TLS_KEY)"
                               ) from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(s.tls_cert, s.tls_key)
    except (ssl.SSLError, OSError) as exc:
        why = " ".join(str(getattr(exc, "reason", None) or exc).split())
        raise StartupError(f"--tls-cert {s.tls_cert} and --tls-key {s.tls_key}: not a PEM "
                           f"certificate chain and its private key ({why})") from None
    return ServerTls(context, pems[0], pems[1])
