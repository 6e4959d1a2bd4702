"""Broadcast fanout cost: one room of N local subscribers on one server process.

For each target (the reference `websockets.broadcast` server, then each rtbench
transport) the server runs pinned to core 0 and this process (subscribers and
the open-loop publisher) to the other core. The publisher sends at a fixed rate
well below the load side's saturation, and we read:

- server CPU seconds per delivery (psutil, over the measured window): the
  comparable cost; `capacity = deliveries / server CPU second` is what one
  fully busy server core would sustain;
- deliveries per wall second actually observed (bounded by the offered load);
- end-to-end latency from the payload stamps (HDR, µs);
- the load side's own CPU use (a run above 90% is flagged: it measured us).

    python -m bench.experiments.fanout --subscribers 1000 --rate 20 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import psutil

from bench.experiments.output import run_each, write_json
from bench.harness.cluster import Cluster, Replica, load_cpus, pin_self
from loadgen.aio import Client, Received, connect
from loadgen.measure import Histogram, now_us, parse_stamp
from servers.core.auth import DEV_SECRET, make_token

TARGETS = ("reference", "ws", "sse", "longpoll", "grpc")


class Sink:
    """Counts deliveries and records latency; the subscribers' shared on_event callback."""

    def __init__(self) -> None:
        self.count = 0
        self.hist = Histogram()
        self.recording = False

    def __call__(self, ev: Received) -> None:
        if ev.type != "message":
            return
        self.count += 1
        if self.recording:
            stamp = parse_stamp(ev.body.get("data"))
            if stamp is not None:
                self.hist.record(ev.recv_us - stamp.intended_us)


async def connect_many(transport: str, url: str, n: int, opts: dict[str, Any],
                       room: str = "fan", user: str = "sub") -> list[Client]:
    """`n` clients (users `{user}0`...) that joined `room`, 100 handshakes at a time."""
    sem = asyncio.Semaphore(100)

    async def one(i: int) -> Client:
        async with sem:
            c = await connect(transport, url, make_token(f"{user}{i}", DEV_SECRET), **opts)
            await c.join(room)
            return c

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def publish_open_loop(pub: Client, room: str, rate: float, count: int,
                            start_seq: int = 0, sent: Callable[[int], None] | None = None,
                            ) -> int:
    """Open-loop: message k is due at t0 + k/rate whatever happened before, stamped with
    that intended time (sequence numbers from `start_seq`); returns `count`. `sent` is
    called with each sequence number once its publish has returned."""
    interval = 1.0 / rate
    t0 = time.perf_counter()
    wall0 = now_us()
    for k in range(count):
        due = t0 + k * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        data = {"p": "pub", "s": start_seq + k, "t": wall0 + int(k * interval * 1e6), "x": ""}
        await pub.publish(room, data, ack=False)
        if sent is not None:
            sent(start_seq + k)
    return count


async def publish_for(pub: Client, rate: float, seconds: float, start_seq: int,
                      room: str = "fan") -> int:
    """`rate` x `seconds` messages to `room`, open-loop; returns the count."""
    return await publish_open_loop(pub, room, rate, int(rate * seconds), start_seq)


def http_opts(transport: str) -> dict[str, Any]:
    """Connect options for many clients: SSE/long-poll share one keep-alive pool."""
    if transport not in ("sse", "longpoll"):
        return {}
    from loadgen.aio.http11 import Pool

    return {"http": Pool()}


async def room_window(transport: str, url: str, node: Replica, subscribers: int, rate: float,
                      seconds: float, opts: dict[str, Any], warmup: float,
                      room: str = "fan") -> tuple[Sink, dict[str, Any]]:
    """`subscribers` and a publisher in `room` of `node`, a warm-up of `warmup` s, then one
    measured window of `rate` msg/s for `seconds`: (the sink, {expected, delivered,
    complete, server CPU s, wall s, this process's CPU %}). Closes every client."""
    sink = Sink()
    subs = await connect_many(transport, url, subscribers, opts, room=room)
    pub = await connect(transport, url, make_token("publisher", DEV_SECRET), **opts)
    await pub.join(room)
    for c in (*subs, pub):
        c.on_event = sink
    members = subscribers + 1  # the publisher is a member and receives its own messages
    try:
        sent = await publish_for(pub, rate, warmup, 0, room=room)
        await drain(sink, sent * members, 10)
        me = psutil.Process()
        me.cpu_percent(None)
        cpu0, count0, t0 = node.cpu_seconds(), sink.count, time.perf_counter()
        sink.recording = True
        n = await publish_for(pub, rate, seconds, sent, room=room)
        complete = await drain(sink, (sent + n) * members, 10)
        wall = time.perf_counter() - t0
        cpu = node.cpu_seconds() - cpu0
        load_cpu = me.cpu_percent(None)
        delivered = sink.count - count0
    finally:
        await asyncio.gather(*(c.close() for c in (*subs, pub)), return_exceptions=True)
        if "http" in opts:
            await opts["http"].aclose()
    return sink, {"expected": n * members, "delivered": delivered, "complete": complete,
                  "cpu": cpu, "wall": wall, "load_cpu": load_cpu}


async def measure(target: str, subscribers: int, rate: float, seconds: float, broker: str,
                  warmup: float = 2.0) -> dict[str, Any]:
    transport = "ws" if target == "reference" else target
    with Cluster(target, broker=broker) as cluster:
        node = cluster.nodes[0]
        pin_self(load_cpus())
        sink, w = await room_window(transport, node.url, node, subscribers, rate, seconds,
                                    http_opts(transport), warmup)
    h = sink.hist
    cpu, delivered, load_cpu = w["cpu"], w["delivered"], w["load_cpu"]
    return {
        "target": target, "broker": "none" if target == "reference" else broker,
        "subscribers": subscribers, "rate": rate, "seconds": seconds,
        "expected": w["expected"], "delivered": delivered, "complete": w["complete"],
        "server_cpu_s": round(cpu, 4),
        "cpu_us_per_delivery": round(cpu / delivered * 1e6, 3) if delivered else None,
        "capacity_per_cpu_s": round(delivered / cpu) if cpu > 0 else None,
        "observed_per_s": round(delivered / w["wall"]),
        "p50_us": h.percentile(50), "p99_us": h.percentile(99), "max_us": h.percentile(100),
        "load_cpu_percent": round(load_cpu, 1), "load_saturated": load_cpu > 90.0,
    }


async def drain(sink: Sink, target: int, limit_s: float) -> bool:
    """Wait (bounded) until `target` deliveries were counted; False if they never came."""
    deadline = time.monotonic() + limit_s
    while sink.count < target and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # a counter fed by 1000 callbacks: polling is the cheap way
    return sink.count >= target


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.experiments.fanout",
                                description=__doc__.split("\n")[0])
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--rate", type=float, default=20.0, help="messages per second")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--broker", default="redis", choices=("redis", "memory"))
    p.add_argument("--json", help="write results to this file")
    args = p.parse_args(argv)
    results = run_each(args.targets, lambda t: measure(
        t, args.subscribers, args.rate, args.seconds, args.broker))
    ref = next((r for r in results if r["target"] == "reference"), None)
    print(f"\n{'target':<10} {'deliv/cpu-s':>12} {'ratio':>6} {'cpu us/deliv':>13} "
          f"{'obs/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'complete':>8} {'load%':>6}")
    for r in results:
        ratio = (r["capacity_per_cpu_s"] / ref["capacity_per_cpu_s"]
                 if ref and ref["capacity_per_cpu_s"] and r["capacity_per_cpu_s"] else None)
        print(f"{r['target']:<10} {r['capacity_per_cpu_s'] or 0:>12} "
              f"{(f'{ratio:.2f}' if ratio else '-'):>6} {r['cpu_us_per_delivery'] or 0:>13} "
              f"{r['observed_per_s']:>8} {r['p50_us'] / 1000:>7.2f} {r['p99_us'] / 1000:>7.2f} "
              f"{r['complete']!s:>8} {r['load_cpu_percent']:>6}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
