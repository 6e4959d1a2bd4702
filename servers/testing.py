"""Process helpers shared by the tests and the harness: free ports, a private
redis-server, server replicas as real processes, waiting on health checks."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

REDIS_HINT = (
    "redis-server not found on PATH. Install it (Debian/Ubuntu: `sudo apt-get install "
    "redis-server`; macOS: `brew install redis`), pass --redis-url to use a running one, "
    "or --broker memory for a single-node run."
)


class MissingRedis(RuntimeError):
    """No redis-server binary to start a private Redis."""


class ServerSide(Protocol):
    """Where server processes run when not on this machine's loopback: the server side of
    a bench.network.Network (its own network namespace)."""

    @property
    def server_addr(self) -> str: ...

    def server_cmd(self, argv: Sequence[str]) -> list[str]: ...

    def call_in_server(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...


def _wait(side: ServerSide | None, port: int, timeout: float,
          proc: subprocess.Popen[bytes]) -> None:
    """wait_port on 127.0.0.1 where the process listens (`side`'s namespace or this one's)."""
    if side is None:
        wait_port("127.0.0.1", port, timeout, proc)
    else:
        side.call_in_server(wait_port, "127.0.0.1", port, timeout, proc)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None,
              ) -> None:
    """Block until `host:port` accepts a TCP connection (or the process died / time is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 8.0) -> int:
    """SIGTERM, wait, then SIGKILL; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)


@dataclass
class RedisServer:
    """A private redis-server on a free port, no persistence, in a temp dir."""

    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    workdir: str = ""
    side: ServerSide | None = None  # another network namespace (the URL is that side's)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which(os.environ.get("RTBENCH_REDIS_SERVER", "redis-server"))
        if binary is None:
            raise MissingRedis(REDIS_HINT)
        self.port = self.port or free_port()
        self.workdir = self.workdir or tempfile.mkdtemp(prefix="rtbench-redis-")
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", self.workdir, "--maxclients", "10000",
               "--protected-mode", "yes", "--loglevel", "warning"]
        if self.side is not None:
            cmd = self.side.server_cmd(cmd)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(self.side, self.port, 10, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class ServerProcess:
    """One `rtbench serve` replica as a child process, on `stack` (servers/stacks/; None:
    whatever RTBENCH_STACK says; gRPC has one server and leaves the flag out)."""

    transport: str
    port: int
    args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    stack: str | None = "starlette"
    side: ServerSide | None = None  # another network namespace: listens on all its addresses

    @property
    def url(self) -> str:
        scheme = "grpc" if self.transport == "grpc" else "http"
        host = "127.0.0.1" if self.side is None else self.side.server_addr
        return f"{scheme}://{host}:{self.port}"

    def start(self, timeout: float = 20.0, cpu: int | None = None) -> ServerProcess:
        cmd = [sys.executable, "-m", "servers.serve", "--transport", self.transport,
               "--port", str(self.port), *self.stack_args(), *self.args]
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu), *cmd]
        if self.side is not None:
            cmd = self.side.server_cmd([*cmd, "--host", "0.0.0.0"])  # its own namespace
        env = {**os.environ, **self.env}
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        finally:
            if not isinstance(log, int):
                log.close()  # the child has its own copy of the descriptor
        _wait(self.side, self.port, timeout, self.proc)
        return self

    def stack_args(self) -> list[str]:
        """`--stack` for the HTTP transports (none for gRPC)."""
        if self.transport == "grpc" or self.stack is None:
            return []
        return ["--stack", self.stack]

    def stop(self) -> int:
        return stop_process(self.proc) if self.proc is not None else 0


@contextlib.contextmanager
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
