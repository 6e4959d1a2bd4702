"""The measuring roles of bench.experiments.latency_floor, each a child process started
as `python -m bench.experiments.latency_floor --role NAME ...`, each printing one JSON
line: the p50/p90/p99/max of its stream over its own schedule (`schedule`: every stream
sends at `--rate`, at its own phase of the interval, so that streams never overlap).

- `redis`: the baseline, PUBLISH -> subscriber with redis-py asyncio + hiredis, the
  standard Python client;
- `redis-lean`: the same with `servers.fanout.resp`, the lean connection the servers'
  fanout layer uses (no redis-py machinery on either side): how much of the baseline is
  the client library's;
- `aio`: the rtbench path of `--transport` timed by plain asyncio clients;
- `floor` (with its `echo` and `relay` helpers): the zero-work hop floor.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import ROOT

WARMUP = 3.0  # seconds of start-up (imports, connects, cold paths) left out on every stream
# each stream's phase, as a fraction of the send interval (floor.direct: see DIRECT_PHASE)
STREAM_PHASES = {"aio": 0.25, "redis-lean": 0.375, "redis": 0.5, "floor": 0.75}
DIRECT_PHASE = 0.125  # ... runs this much of the interval after floor.relay


def summary(values: list[int], sent: int) -> dict[str, Any]:
    from loadgen.measure import Histogram

    hist = Histogram()
    for v in values:
        hist.record(v)
    return {"count": hist.count, "sent": sent, "p50_us": hist.percentile(50),
            "p90_us": hist.percentile(90), "p99_us": hist.percentile(99),
            "max_us": hist.percentile(100)}


def schedule(args: argparse.Namespace, role: str) -> tuple[list[float], int]:
    """Wall-clock due times of this role's sends, and how many of them are warm-up."""
    interval = 1.0 / args.rate
    first = args.t0 + STREAM_PHASES[role] * interval
    n_warm = int(WARMUP * args.rate)
    return [first + k * interval for k in range(n_warm + int(args.seconds * args.rate))], n_warm


async def _time_publishes(args: argparse.Namespace, role: str,
                          publish: Callable[[int], Awaitable[Any]],
                          receive: Callable[[], Awaitable[int | None]]) -> dict[str, Any]:
    """The Redis baselines' loop: PUBLISH message k on schedule, time it from just before
    the PUBLISH to its receipt (`receive`: the next message's k, None if none came)."""
    import asyncio

    dues, n_warm = schedule(args, role)
    samples: list[int] = []
    for k, due in enumerate(dues):
        await asyncio.sleep(max(0.0, due - time.time()))
        sent = time.time_ns()
        await publish(k)
        got = await receive()
        if got is not None and k >= n_warm and got == k:
            samples.append((time.time_ns() - sent) // 1000)
    return summary(samples, len(dues) - n_warm)


def _redis_role(args: argparse.Namespace) -> dict[str, Any]:
    """Baseline: PUBLISH, time each message from just before PUBLISH to its receipt."""
    import asyncio

    import redis.asyncio as redis

    async def go() -> dict[str, Any]:
        pub = redis.Redis.from_url(args.redis_url)
        sub = redis.Redis.from_url(args.redis_url)
        ps = sub.pubsub()
        await ps.subscribe("floor")
        await ps.get_message(timeout=5)  # the subscribe confirmation

        async def receive() -> int | None:
            msg = await ps.get_message(timeout=5)
            while msg is not None and msg.get("type") != "message":
                msg = await ps.get_message(timeout=5)
            return None if msg is None else int(msg["data"])

        try:
            return await _time_publishes(args, "redis", lambda k: pub.publish("floor", str(k)),
                                         receive)
        finally:
            await ps.aclose()  # type: ignore[no-untyped-call]
            await pub.aclose()
            await sub.aclose()

    return asyncio.run(go())


def _redis_lean_role(args: argparse.Namespace) -> dict[str, Any]:
    """The baseline with `servers.fanout.resp` on both sides instead of redis-py."""
    import asyncio

    from servers.fanout.resp import open_connection, pack

    async def go() -> dict[str, Any]:
        got: asyncio.Queue[Any] = asyncio.Queue()
        pub = await open_connection(args.redis_url, 5.0)

        def on_push(replies: list[Any]) -> None:
            for reply in replies:
                got.put_nowait(reply)

        sub = await open_connection(args.redis_url, 5.0, on_push=on_push)
        sub.send(pack(("SUBSCRIBE", "floor-lean")))
        await asyncio.wait_for(got.get(), 5)  # the subscribe confirmation

        async def receive() -> int | None:
            msg = await asyncio.wait_for(got.get(), 5)
            return int(msg[2]) if msg[0] == b"message" else None

        try:
            return await _time_publishes(
                args, "redis-lean", lambda k: pub.call("PUBLISH", "floor-lean", str(k)), receive)
        finally:
            pub.close()
            sub.close()

    return asyncio.run(go())


def _aio_role(args: argparse.Namespace) -> dict[str, Any]:
    """The rtbench path of `--transport`, timed by asyncio clients (publisher + subscriber)."""
    import asyncio

    import orjson

    from loadgen.aio import Received, connect
    from loadgen.measure import build_payload, now_us, parse_stamp
    from servers.core.auth import DEV_SECRET, make_token

    async def go() -> dict[str, Any]:
        sub = await connect(args.transport, args.url, make_token("floor-aio-sub", DEV_SECRET))
        pub = await connect(args.transport, args.url, make_token("floor-aio-pub", DEV_SECRET))
        dues, n_warm = schedule(args, "aio")
        samples: list[int] = []

        def on_event(ev: Received) -> None:
            stamp = parse_stamp(ev.body.get("data")) if ev.type == "message" else None
            if stamp is not None and stamp.seq >= n_warm:
                samples.append(ev.recv_us - stamp.intended_us)

        sub.on_event = on_event
        await sub.join("floor-aio")
        await pub.join("floor-aio")
        try:
            for k, due in enumerate(dues):
                await asyncio.sleep(max(0.0, due - time.time()))
                # stamped with the actual send time, like the baseline
                payload = build_payload("floor-aio-pub", k, now_us(), 100)
                await pub.publish("floor-aio", orjson.loads(payload), ack=False)
            await asyncio.sleep(1)
        finally:
            await asyncio.gather(sub.close(), pub.close(), return_exceptions=True)
        return summary(samples, len(dues) - n_warm)

    return asyncio.run(go())


def _echo_role(args: argparse.Namespace) -> dict[str, Any]:
    """Echo every message back on each of `args.conns` connections (no work: the floor)."""
    listener = socket.create_server(("127.0.0.1", args.port))
    sel = selectors.DefaultSelector()
    for _ in range(args.conns):
        conn, _addr = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sel.register(conn, selectors.EVENT_READ)
    listener.close()
    open_conns = args.conns
    while open_conns:
        for key, _ in sel.select():
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            data = sock.recv(4096)
            if data:
                sock.sendall(data)
            else:
                sel.unregister(sock)
                sock.close()
                open_conns -= 1
    return {}


def _relay_role(args: argparse.Namespace) -> dict[str, Any]:
    """Forward each message to the echo and its answer back (the server's two extra hops)."""
    listener = socket.create_server(("127.0.0.1", args.port))
    client, _addr = listener.accept()
    listener.close()
    echo = socket.create_connection(("127.0.0.1", args.echo_port))
    for s in (client, echo):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := client.recv(4096):
        echo.sendall(data)
        client.sendall(_recv_exactly(echo, len(data)))
    return {}


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def _connect(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port))
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _floor_role(args: argparse.Namespace) -> dict[str, Any]:
    """The hop floor: relay (4 hops) and direct (2 hops) round trips of 16 bytes."""
    from servers.testing import free_port

    echo_port = relay_port = free_port()
    while relay_port == echo_port:  # free_port can hand out the same port twice
        relay_port = free_port()
    me = [sys.executable, "-m", "bench.experiments.latency_floor"]
    procs = [
        subprocess.Popen([*me, "--role", "echo", "--port", str(echo_port), "--conns", "2",
                          "--cpu", str(args.redis_cpu)], cwd=ROOT),
        subprocess.Popen([*me, "--role", "relay", "--port", str(relay_port),
                          "--echo-port", str(echo_port), "--cpu", str(args.server_cpu)], cwd=ROOT),
    ]
    try:
        # not servers.testing.wait_port: its probe connection would be taken for the client
        direct = _connect(echo_port, procs[0])  # first: the relay connects to the echo
        relay = _connect(relay_port, procs[1])
        for s in (relay, direct):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        dues, n_warm = schedule(args, "floor")
        gap = DIRECT_PHASE / args.rate
        out: dict[str, list[int]] = {"relay": [], "direct": []}
        for k, due in enumerate(dues):
            for name, sock, at in (("relay", relay, due), ("direct", direct, due + gap)):
                time.sleep(max(0.0, at - time.time()))
                t = time.time_ns()
                sock.sendall(b"%016d" % k)
                _recv_exactly(sock, 16)
                if k >= n_warm:
                    out[name].append((time.time_ns() - t) // 1000)
        relay.close()
        direct.close()
    finally:
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return {name: summary(v, len(dues) - n_warm) for name, v in out.items()}


ROLES = {"redis": _redis_role, "redis-lean": _redis_lean_role, "aio": _aio_role,
         "floor": _floor_role, "echo": _echo_role, "relay": _relay_role}
