"""A peer that vanishes without closing is reaped and shown offline (docs/protocol.md 6.1).

Per transport, a client in a child process joins a room, then goes silent without
closing; the server must close its connection (the `rtbench_connections` gauge
drops) and another client sees it leave (`presence` event) and offline (presence
query), within the documented bound for the small settings used here:

- silent: the child is SIGSTOPped. Its kernel still ACKs, the client answers
  nothing: WebSocket pings go unanswered, gRPC keepalive pings too, long-poll
  polls stop. (An SSE stream carries nothing from the client: a stopped reader
  looks like an idle one, so SSE is tested as vanished only.)
- vanished: the child runs in a network namespace whose link then goes down:
  nothing the server sends is ACKed (TCP_USER_TIMEOUT aborts the socket) and
  nothing comes back. Needs root and `ip netns`; skipped otherwise.

One replica on the session's private Redis per test; the Starlette stack for every
transport, and the aiohttp stack for WebSocket (its keepalive is aiohttp's own) and SSE
(its sockets come from the same listening socket code).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadgen.aio import Client, Received, connect
from servers.testing import RedisServer, ServerProcess, free_port, wait_port
from servers.transports.listen import server_socket
from tests.cluster import Target, server, start_all, stop_all, token, unique
from tests.httpclient import get

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parent.parent
HEARTBEAT = 0.5
SESSION_TTL = 1.0
POLL_TIMEOUT = 1.0
USER_TIMEOUT = 1.0
# the bounds of docs/protocol.md 6.1 for these settings, with slack for a busy machine
BOUND = {"ws": 2 * HEARTBEAT, "grpc": 2 * HEARTBEAT, "sse": HEARTBEAT + USER_TIMEOUT,
         "longpoll": POLL_TIMEOUT + 1.25 * SESSION_TTL}
SLACK = 5.0

SETTINGS = ("--heartbeat", str(HEARTBEAT), "--session-ttl", str(SESSION_TTL),
            "--poll-timeout", str(POLL_TIMEOUT), "--tcp-user-timeout", str(USER_TIMEOUT))

# the silent client: connect, join, say so, then wait (for a SIGSTOP or a dead link)
CHILD = """
import asyncio, sys
from loadgen.aio import connect

async def main(transport, url, token, room):
    client = await connect(transport, url, token, poll_timeout=float(sys.argv[5])) \\
        if transport == "longpoll" else await connect(transport, url, token)
    await client.join(room)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:5]))
"""


@dataclass
class Scene:
    server: ServerProcess
    url: str  # where the clients connect
    metrics: str  # the server's /metrics URL


def redis_args(redis_server: RedisServer) -> list[str]:
    return ["--broker", "redis", "--redis-url", redis_server.url,
            "--namespace", "dead" + uuid.uuid4().hex[:8], *SETTINGS]


def metrics_url(proc: ServerProcess, host: str = "127.0.0.1") -> str:
    args = list(proc.args)
    port = int(args[args.index("--metrics-port") + 1]) if proc.transport == "grpc" else proc.port
    return f"http://{host}:{port}/metrics"


async def connections(metrics: str) -> int:
    text = (await get(metrics)).text()
    found = re.search(r"^rtbench_connections\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    assert found, "no rtbench_connections gauge"
    return int(float(found.group(1)))


async def spawn(prefix: Sequence[str], transport: str, url: str, user: str, room: str,
                ) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-c", CHILD, transport, url, token(user), room,
        str(POLL_TIMEOUT), cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), 20)
    assert line == b"ready\n", f"the silent client did not start ({line!r})"
    return child


def end(child: asyncio.subprocess.Process) -> None:
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.kill()  # SIGKILL ends a stopped process too


async def presence_of(client: Client, user: str, within: float) -> Received:
    """The next `presence` event about `user` (the observer's own are skipped)."""
    async with asyncio.timeout(within):
        for _ in range(100):
            ev = await client.next_event("presence", within)
            if ev["user"] == user:
                return ev
    raise AssertionError(f"no presence event about {user}")


async def check_reaped(scene: Scene, transport: str, silence: Sequence[str],
                       stop: object) -> None:
    """Observer + silent child; `stop(child)` silences it; reaped within the bound?"""
    room, who = unique("room"), unique("silent")
    observer = await connect(transport, scene.url, token(unique("obs")))
    child: asyncio.subprocess.Process | None = None
    try:
        await observer.join(room, presence=True)
        child = await spawn(silence, transport, scene.url, who, room)
        assert (await presence_of(observer, who, 10))["status"] == "joined"
        assert await observer.presence([who]) == {who: True}
        assert await connections(scene.metrics) == 2
        loop = asyncio.get_running_loop()
        start = loop.time()
        await stop(child)  # type: ignore[operator]
        ev = await presence_of(observer, who, BOUND[transport] + SLACK)
        took = loop.time() - start
        assert ev["status"] == "left"
        assert await observer.presence([who]) == {who: False}
        assert await connections(scene.metrics) == 1  # the observer only
        print(f"{transport}: reaped after {took:.2f} s (bound {BOUND[transport]:.2f} s)")
    finally:
        if child is not None:
            end(child)
            await child.wait()
        await observer.close()


# ------------------------------------------------------------------ sockets


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux only")
def test_accepted_sockets_inherit_the_user_timeout() -> None:
    listener = server_socket("127.0.0.1", free_port(), 1.5)
    try:
        # not listening yet: the server listens once it is ready (its port then means so)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(listener.getsockname(), timeout=5).close()
        listener.listen()
        with socket.create_connection(listener.getsockname(), timeout=5):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 1500
    finally:
        listener.close()
    off = server_socket("127.0.0.1", free_port(), 0)
    with off:
        assert off.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 0


# ------------------------------------------------------------------- silent


@pytest.fixture
def local(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Scene]:
    target: Target = request.param
    proc = server(target.transport, redis_args(redis_server), target.stack)
    start_all([proc])
    try:
        yield Scene(proc, proc.url, metrics_url(proc))
    finally:
        stop_all([proc])


@pytest.mark.parametrize(
    "local", [Target("ws"), Target("grpc"), Target("longpoll"), Target("ws", "aiohttp")],
    indirect=True, ids=str)
async def test_a_stopped_client_is_reaped(local: Scene) -> None:
    async def sigstop(child: asyncio.subprocess.Process) -> None:
        child.send_signal(signal.SIGSTOP)

    await check_reaped(local, local.server.transport, (), sigstop)


# ----------------------------------------------------------------- vanished


def _netns_unavailable() -> str | None:
    if sys.platform != "linux" or shutil.which("ip") is None:
        return "needs Linux and iproute2 (`ip`)"
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Netns:
    name: str
    host_if: str
    peer_if: str
    host_ip: str
    peer_ip: str

    def link_down(self) -> None:
        """Cut the link on the client's side: what the server sends vanishes."""
        _ip("-n", self.name, "link", "set", self.peer_if, "down")


@contextlib.contextmanager
def netns() -> Iterator[Netns]:
    """A namespace joined to this one by a veth pair on a private /30 (removed after)."""
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    # a random /30 of 10.213.0.0/16: concurrent runs are unlikely to pick the same
    net = f"10.213.{int(tag[:2], 16)}.{int(tag[2:4], 16) % 64 * 4}"
    prefix, last = net.rsplit(".", 1)
    ns = Netns(f"rtbench-{tag}", f"rtbh{tag}", f"rtbp{tag}",
               f"{prefix}.{int(last) + 1}", f"{prefix}.{int(last) + 2}")
    try:
        _ip("netns", "add", ns.name)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot create a network namespace: {exc}")
    try:
        _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", ns.peer_if,
            "netns", ns.name)
        _ip("addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if)
        _ip("link", "set", ns.host_if, "up")
        _ip("-n", ns.name, "addr", "add", f"{ns.peer_ip}/30", "dev", ns.peer_if)
        _ip("-n", ns.name, "link", "set", ns.peer_if, "up")
        _ip("-n", ns.name, "link", "set", "lo", "up")
        yield ns
    finally:
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            _ip("link", "del", ns.host_if)  # deletes its peer too
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            _ip("netns", "del", ns.name)


def start_on(host: str, target: Target, args: Sequence[str]) -> ServerProcess:
    """A replica listening on `host` (ServerProcess.start waits on 127.0.0.1 only)."""
    proc = ServerProcess(target.transport, free_port(host), args=[*args, "--host", host],
                         stack=target.stack)
    proc.proc = subprocess.Popen(
        [sys.executable, "-m", "servers.serve", "--transport", target.transport,
         "--port", str(proc.port), *proc.stack_args(), *proc.args], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(host, proc.port, 20, proc.proc)
    except BaseException:
        proc.stop()
        raise
    return proc


@contextlib.asynccontextmanager
async def across(target: Target, redis_server: RedisServer) -> AsyncIterator[
        tuple[Scene, Netns]]:
    """A server listening on the host end of a fresh veth pair."""
    with netns() as ns:
        args = redis_args(redis_server)
        if target.transport == "grpc":
            args += ["--metrics-port", str(free_port())]
        proc = start_on(ns.host_ip, target, args)
        try:
            url = proc.url.replace("127.0.0.1", ns.host_ip)
            yield Scene(proc, url, metrics_url(proc, ns.host_ip)), ns
        finally:
            proc.stop()


@pytest.mark.parametrize("target", [Target("sse"), Target("ws"), Target("grpc"),
                                    Target("longpoll"), Target("sse", "aiohttp")], ids=str)
async def test_a_vanished_client_is_reaped(target: Target, redis_server: RedisServer) -> None:
    transport = target.transport
    async with across(target, redis_server) as (scene, ns):
        async def cut(child: asyncio.subprocess.Process) -> None:
            await asyncio.to_thread(ns.link_down)

        await check_reaped(scene, transport, ("ip", "netns", "exec", ns.name), cut)
