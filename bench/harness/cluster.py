"""Server replicas as pinned child processes, and what the benchmarks read off them.

Shared by the benchmarks and the `rtbench run` harness: start a private Redis,
start N replicas of one transport (or the reference fanout), wait until each is
healthy, read process CPU/RSS and the servers' own /metrics, stop everything.

The server stack (ws, sse, longpoll: starlette or aiohttp) goes to the replicas
as RTBENCH_STACK in their environment, never as `--stack`: `rtbench regress --base
REV` starts these commands in REV's tree, which may predate the flag (exit 2).
Without a stack (`stack=None`) the replicas run their default, or what the
caller's RTBENCH_STACK says; with one, each replica's `Server` header must name
it, so a server that ignored the variable is caught rather than mislabelled.

With `tls` (bench.harness.tls.CertPaths) the replicas serve over TLS (`--tls-cert`,
`--tls-key`): their URLs are https:// (grpcs:// for gRPC) and /healthz and /metrics are
read over TLS, verified against the CA (`trust_ca`; gRPC's metrics port stays plain).
"""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import psutil

from bench.harness.cpu import cpu_seconds
from bench.harness.tls import CertPaths
from servers.testing import (
    RedisServer,
    ServerProcess,
    ServerSide,
    free_port,
    stop_process,
    wait_port,
)

SERVER_CPU = 0  # servers on core 0, load generator on the others (2-core machine: core 1)
# what each HTTP stack's server says it is in the `Server` response header
SERVER_HEADER = {"starlette": "uvicorn", "aiohttp": "aiohttp/"}


def load_cpus() -> list[int]:
    """Cores for the load side: every core but the server's (all of them on a 1-core box)."""
    cpus = sorted(os.sched_getaffinity(0))
    rest = [c for c in cpus if c != SERVER_CPU]
    return rest or cpus


def pin_self(cpus: Sequence[int]) -> None:
    """Pin this (load generator) process to `cpus`."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, set(cpus))


@dataclass
class Replica:
    name: str
    url: str  # http://host:port (grpc://host:port for gRPC)
    proc: subprocess.Popen[bytes]
    metrics_url: str | None = None
    server: str | None = None  # its `Server` response header (HTTP transports)
    side: ServerSide | None = None  # the network namespace it runs in (None: this one's)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, url: str, timeout: float) -> tuple[int, str, str]:
        """`http_get` from where the replica's own endpoints are reachable."""
        if self.side is None:
            return http_get(url, timeout)
        return self.side.call_in_server(http_get, url, timeout)

    def cpu_seconds(self) -> float:
        """CPU seconds the replica has used so far, ns-precise (bench.harness.cpu: not 10 ms
        ticks)."""
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def metrics(self) -> dict[str, float]:
        """The replica's Prometheus samples as {name{labels}: value} (empty if none)."""
        if not self.metrics_url:
            return {}
        text = self.get(self.metrics_url, timeout=5)[2]
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out


@dataclass
class Cluster:
    """N replicas of one transport ('reference' = bench.experiments.reference_fanout, one
    process), on `stack` (ws/sse/longpoll; None: the servers' default or RTBENCH_STACK)."""

    transport: str
    replicas: int = 1
    broker: str = "redis"
    redis_url: str | None = None
    server_args: Sequence[str] = ()
    cpu: int | None = SERVER_CPU
    stack: str | None = None
    tls: CertPaths | None = None
    side: ServerSide | None = None  # run in this network namespace (bench.network)
    nodes: list[Replica] = field(default_factory=list)
    _redis: RedisServer | None = None

    def start(self) -> Cluster:
        if self.tls is not None:
            trust_ca(str(self.tls.ca))
        if self.broker == "redis" and self.redis_url is None and self.transport != "reference":
            self._redis = RedisServer(side=self.side).start()
            self.redis_url = self._redis.url
        try:
            for _ in range(self.replicas):
                self.nodes.append(self._start_one())
        except BaseException:
            self.stop()
            raise
        return self

    def _start_one(self) -> Replica:
        port = free_port()
        if self.transport == "reference":
            cmd = [sys.executable, "-m", "bench.experiments.reference_fanout", "--port", str(port)]
            if self.cpu is not None:
                cmd = ["taskset", "-c", str(self.cpu), *cmd]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port("127.0.0.1", port, 20, proc)
            return Replica("reference", f"http://127.0.0.1:{port}", proc)
        args = ["--broker", self.broker, *self.server_args]
        if self.tls is not None:
            args += ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key)]
        if self.broker == "redis":
            assert self.redis_url is not None
            args += ["--redis-url", self.redis_url, "--namespace", f"bench{os.getpid()}"]
        metrics_port = free_port() if self.transport == "grpc" else None
        if metrics_port is not None:
            args += ["--metrics-port", str(metrics_port)]
        # no --stack flag (see the module doc): the environment carries the stack
        env = {"RTBENCH_STACK": self.stack} \
            if self.stack is not None and self.transport != "grpc" else {}
        server = ServerProcess(self.transport, port, args=args, env=env, stack=None,
                               side=self.side)
        server.start(cpu=self.cpu)
        assert server.proc is not None
        try:  # a replica that never became ready is not in `nodes`: stop it here
            return self._ready(server.proc, port, metrics_port)
        except BaseException:
            stop_process(server.proc)
            raise

    def _ready(self, proc: subprocess.Popen[bytes], port: int, metrics_port: int | None,
               ) -> Replica:
        host = "127.0.0.1" if self.side is None else self.side.server_addr
        base = f"{host}:{port}"
        s = "s" if self.tls is not None else ""
        if metrics_port is not None:
            if self.side is None:
                wait_port("127.0.0.1", metrics_port, 10, proc)
            else:
                self.side.call_in_server(wait_port, "127.0.0.1", metrics_port, 10, proc)
            return Replica("grpc", f"grpc{s}://{base}", proc,
                           f"http://{host}:{metrics_port}/metrics", side=self.side)
        replica = Replica(self.transport, f"http{s}://{base}", proc,
                          f"http{s}://{base}/metrics", side=self.side)
        url = f"http{s}://{base}/healthz"
        replica.server = _wait_healthy(url, proc) if self.side is None \
            else self.side.call_in_server(_wait_healthy, url, proc)
        self._check_stack(replica)
        return replica

    def _check_stack(self, replica: Replica) -> None:
        want = SERVER_HEADER.get(self.stack or "")
        if want is not None and want not in (replica.server or ""):
            raise RuntimeError(f"{replica.url} answered as {replica.server!r}, not the "
                               f"{self.stack} stack ({want}): does this revision's server "
                               "read RTBENCH_STACK?")

    def stop(self) -> None:
        for node in self.nodes:
            stop_process(node.proc)
        self.nodes.clear()
        if self._redis is not None:
            self._redis.stop()
            self._redis = None

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_trusted: ssl.SSLContext | None = None  # what https:// endpoints are verified against


def trust_ca(ca_file: str) -> None:
    """Verify the servers' https:// endpoints (`http_get`) against `ca_file` from now on."""
    global _trusted
    _trusted = ssl.create_default_context(cafile=ca_file)


def http_get(url: str, timeout: float) -> tuple[int, str, str]:
    """(status, `Server` header or '', body) of one GET on the servers' own loopback
    endpoints (/healthz, /metrics; https:// verified against `trust_ca`'s CA, else the
    system's); OSError (urllib.error.URLError and HTTPError are OSErrors) when there is
    no 2xx answer."""
    context = _trusted if url.startswith("https:") else None
    with urllib.request.urlopen(url, timeout=timeout, context=context) as reply:
        return reply.status, reply.headers.get("server", ""), reply.read().decode()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> str:
    """Poll `url` until it answers 200; its `Server` header ('' when none)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        with contextlib.suppress(OSError):  # refused, reset, timed out, or not 200 yet
            status, server, _ = http_get(url, timeout=1)
            if status == 200:
                return server
        time.sleep(0.05)
    raise TimeoutError(f"{url} not healthy after {timeout}s")


@contextlib.contextmanager
def cluster(transport: str, **kwargs: object) -> Iterator[Cluster]:
    with Cluster(transport, **kwargs) as c:  # type: ignore[arg-type]
        yield c
