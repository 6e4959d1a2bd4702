"""Server processes for end-to-end tests: per transport and stack, two Redis-backed
replicas that share a namespace plus one single replica on the memory broker.

`TARGETS` is what the end-to-end suites run against: each HTTP transport on each
server stack (servers/stacks/), and gRPC with its one server. Parametrize a fixture
with `params=TARGETS, ids=str` to run a suite on all of them.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from servers.core.auth import DEV_SECRET, make_token
from servers.settings import STACKS, TRANSPORTS
from servers.testing import ServerProcess, free_port

# small limits so that the bad-input tests stay cheap
MAX_FRAME_BYTES = 4096
MAX_ROOMS = 6
LIMIT_ARGS = ("--max-frame-bytes", str(MAX_FRAME_BYTES), "--max-rooms", str(MAX_ROOMS))


@dataclass(frozen=True)
class Target:
    """One transport on one server stack."""

    transport: str
    stack: str = "starlette"

    def __str__(self) -> str:
        return self.transport if self.transport == "grpc" else f"{self.stack}-{self.transport}"


# every HTTP transport on every stack, then gRPC (one server, no stack)
TARGETS = tuple(
    [Target(t, stack) for stack in STACKS for t in TRANSPORTS if t != "grpc"] + [Target("grpc")]
)


@dataclass(frozen=True)
class Cluster:
    transport: str
    replicas: tuple[ServerProcess, ...]  # Redis broker, one namespace
    single: ServerProcess  # memory broker, alone
    stack: str = "starlette"

    def url(self, replica: int = 0) -> str:
        return self.replicas[replica % len(self.replicas)].url


def server(transport: str, args: Sequence[str], stack: str = "starlette") -> ServerProcess:
    extra: list[str] = []
    if transport == "grpc":  # its default metrics port (port + 1000) may be taken
        extra = ["--metrics-port", str(free_port())]
    return ServerProcess(transport, free_port(), args=[*args, *LIMIT_ARGS, *extra], stack=stack)


def start_all(procs: Sequence[ServerProcess], timeout: float = 20.0) -> None:
    """Start every process concurrently; if one fails, stop them all and raise."""
    try:
        with ThreadPoolExecutor(len(procs)) as pool:
            for future in [pool.submit(p.start, timeout) for p in procs]:
                future.result()
    except BaseException:
        stop_all(procs)
        raise


def stop_all(procs: Sequence[ServerProcess]) -> None:
    for p in procs:
        with contextlib.suppress(Exception):
            p.stop()


@contextlib.contextmanager
def cluster(transport: str, redis_url: str, stack: str = "starlette") -> Iterator[Cluster]:
    namespace = f"conf-{transport}-{uuid.uuid4().hex[:8]}"
    redis_args = ["--broker", "redis", "--redis-url", redis_url, "--namespace", namespace]
    procs = (server(transport, redis_args, stack), server(transport, redis_args, stack),
             server(transport, ["--broker", "memory"], stack))
    start_all(procs)
    try:
        yield Cluster(transport, procs[:2], procs[2], stack)
    finally:
        stop_all(procs)


_serial = itertools.count(1)


def unique(prefix: str) -> str:
    """A user or room name no other test uses (presence state lives in Redis)."""
    return f"{prefix}{next(_serial)}-{uuid.uuid4().hex[:6]}"


def token(user: str, ttl: float = 3600.0, secret: str = DEV_SECRET) -> str:
    return make_token(user, secret, ttl=ttl)


def tls_args(cert: object, key: object) -> list[str]:
    """`rtbench serve` flags that serve over TLS with this certificate and key."""
    return ["--tls-cert", str(cert), "--tls-key", str(key)]


def tls_url(proc: ServerProcess) -> str:
    """The URL of a replica started with `tls_args`: https:// (grpcs:// for gRPC)."""
    return proc.url.replace("http://", "https://", 1).replace("grpc://", "grpcs://", 1)
