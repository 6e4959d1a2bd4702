"""The cost of the delivery guarantees, per transport: history on vs off, and the time
a client takes to catch up after a 5-second outage.

Per transport, two single-replica servers share one private Redis, all pinned to
core 0 (this process, the load, to the other core): one with history on (the
default size), one with `--history-size 0`. Each serves its own room of
`--subscribers` subscribers plus the publisher (a member, so it receives its own
messages too). Measured windows alternate on, off, off, on, ... (ABBA, `--rounds`
pairs), so both sides meet the same machine conditions in the same run. In each
window the publisher sends `--rate` messages/s open-loop (a fixed load below
saturation) for `--seconds`, then we wait until every member got every message,
and read per side:

- publish-to-deliver p50/p99: receive time - the intended send time stamped in the
  payload (HDR histogram, µs; one clock, both ends are this process);
- deliveries per wall second (window start to the last delivery), whether every
  expected delivery came (`complete`) and whether that rate is within 85% of the
  offered one (`kept_up`; if not, the load was not below saturation);
- server CPU µs per delivery (the replica's process CPU clock, bench/harness/cpu.py) and
  its CPU use (% of a core: near 100 means the load is not below saturation);
- Redis CPU µs per published message (history on costs Lua scripts in Redis), raw
  and net of Redis's idle CPU (measured for 1 s with every client connected).

Outage (history-on server only, `--repeats` times; with history off a resume can only
report a gap):
a subscriber `victim` in the room, messages flowing at `--rate`; it takes its
cursor and closes; `--outage` seconds later, while publishing goes on, it
reconnects with the cursor. The target is the last message the publisher had sent
(its publish call had returned; on SSE/long-poll that is its HTTP ack) when the
reconnect starts. Reconnect-to-caught-up = from just before `connect(resume=cursor)`
to the receipt of the target message (its sequence stamp), including the handshake
and the replay of every message missed; we also check that every message from the
one seen last before closing to the target came exactly once, in offset order
(contiguous offsets from the cursor's).

    python -m bench.experiments.guarantees --subscribers 25 --rate 40 --seconds 3 --outage 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from bench.experiments.fanout import Sink, connect_many, drain, http_opts, publish_open_loop
from bench.experiments.output import run_each, write_json
from bench.harness.cluster import SERVER_CPU, Cluster, load_cpus, pin_self
from bench.harness.cpu import cpu_clock
from loadgen.aio import TRANSPORTS, Client, ClientError, Received, connect
from loadgen.measure import Histogram, now_us
from servers.core.auth import DEV_SECRET, make_token
from servers.testing import RedisServer

FORMAT = 1  # version of the result shape
SIDES = {"on": (), "off": ("--history-size", "0")}


@dataclass
class Params:
    subscribers: int = 25
    rate: float = 40.0  # messages per second (deliveries/s = rate x (subscribers + 1))
    seconds: float = 3.0  # per window
    rounds: int = 2  # ABBA pairs of windows
    warmup: float = 1.0
    outage: float = 5.0
    repeats: int = 3  # outages per transport
    limit: float = 20.0  # longest wait for a drain or a catch-up


@dataclass
class Side:
    """One server (history on or off), its clients and what its windows added up to."""

    name: str
    url: str
    room: str
    subs: list[Client]
    pub: Client
    sink: Sink
    server_cpu: Callable[[], float]
    seq: int = 0  # messages published so far
    published: int = 0  # in measured windows
    delivered: int = 0
    expected: int = 0
    cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    wall_s: float = 0.0

    @property
    def members(self) -> int:
        return len(self.subs) + 1

    def result(self, redis_idle: float, rate: float) -> dict[str, Any]:
        """What the windows added up to; `redis_idle`: Redis CPU s/s with no traffic."""
        h: Histogram = self.sink.hist
        redis_net = self.redis_cpu_s - redis_idle * self.wall_s
        per_s = self.delivered / self.wall_s if self.wall_s else 0.0
        return {
            "published": self.published, "expected": self.expected,
            "delivered": self.delivered, "complete": self.delivered == self.expected,
            "offered_per_s": round(rate * self.members),
            "deliveries_per_s": round(per_s),
            # the windows' tail (waiting for the last delivery) counts in the wall time
            "kept_up": per_s >= 0.85 * rate * self.members,
            "p50_us": h.percentile(50), "p99_us": h.percentile(99), "max_us": h.percentile(100),
            "server_cpu_us_per_delivery":
                round(self.cpu_s / self.delivered * 1e6, 3) if self.delivered else None,
            "server_cpu_percent": round(self.cpu_s / self.wall_s * 100, 1) if self.wall_s else None,
            "redis_cpu_us_per_message":
                round(self.redis_cpu_s / self.published * 1e6, 3) if self.published else None,
            "redis_net_cpu_us_per_message":
                round(redis_net / self.published * 1e6, 3) if self.published else None,
        }


async def window(side: Side, p: Params, redis_cpu: Callable[[], float], record: bool) -> None:
    """Publish for one window and wait for every delivery; add it up if `record`."""
    count = int(p.rate * (p.seconds if record else p.warmup))
    cpu0, redis0, got0, t0 = side.server_cpu(), redis_cpu(), side.sink.count, time.perf_counter()
    side.sink.recording = record
    side.seq += await publish_open_loop(side.pub, side.room, p.rate, count, side.seq)
    await drain(side.sink, side.seq * side.members, p.limit)
    side.sink.recording = False
    if record:
        side.published += count
        side.expected += count * side.members
        side.delivered += side.sink.count - got0
        side.cpu_s += side.server_cpu() - cpu0
        side.redis_cpu_s += redis_cpu() - redis0
        side.wall_s += time.perf_counter() - t0


async def outage(transport: str, side: Side, p: Params, opts: dict[str, Any], n: int = 0,
                 ) -> dict[str, Any]:
    """Disconnect a subscriber for `p.outage` s while publishing goes on, resume it with
    its cursor, time until it has the last message sent before the reconnect."""
    tok = make_token(f"victim{n}", DEV_SECRET)
    victim = await connect(transport, side.url, tok, **opts)
    await victim.join(side.room)
    last_sent = [-1]
    feed = asyncio.create_task(publish_open_loop(
        side.pub, side.room, p.rate, int(p.rate * (p.outage + p.limit + 5)), side.seq,
        sent=lambda seq: last_sent.__setitem__(0, seq)))
    resumed: Client | None = None
    try:
        for _ in range(max(1, int(p.rate / 4))):  # messages flowing (a quarter second)
            seen = (await victim.next_event("message", p.limit)).body
        cursor = victim.cursor
        await victim.close()
        await asyncio.sleep(p.outage)  # the outage itself: the thing measured
        target = last_sent[0]  # the last message sent before the reconnect starts
        got: list[dict[str, Any]] = []
        gaps: list[dict[str, Any]] = []
        caught = asyncio.get_running_loop().create_future()

        def on_event(ev: Received) -> None:
            if ev.type == "gap":
                gaps.append(ev.body)
            elif ev.type == "message" and not caught.done():
                got.append(ev.body)
                if ev.body["data"]["s"] >= target:
                    caught.set_result(ev.recv_us)

        start = now_us()
        resumed = await connect(transport, side.url, tok, resume=cursor, **opts)
        connected = now_us()
        for ev in resumed.take_events():  # what came with the welcome, then the rest
            on_event(ev)
        resumed.on_event = on_event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(caught), p.limit)
        done = caught.done()
        seqs = [m["data"]["s"] for m in got]
        offsets = [m["offset"] for m in got]
        expected = list(range(seen["data"]["s"] + 1, target + 1))
        return {
            "outage_s": p.outage, "missed": len(expected), "caught_up": done,
            "connect_ms": round((connected - start) / 1e3, 2),
            "catch_up_ms": round((caught.result() - start) / 1e3, 2) if done else None,
            "lost": len(set(expected) - set(seqs)), "duplicates": len(seqs) - len(set(seqs)),
            "in_order": seqs == sorted(seqs) and offsets == list(
                range(cursor["rooms"][side.room][0] + 1, cursor["rooms"][side.room][0]
                      + 1 + len(offsets))),
            "gaps": len(gaps),
        }
    finally:
        feed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed
        side.seq = max(side.seq, last_sent[0] + 1)  # stamps stay unique across outages
        await asyncio.gather(victim.close(), *([resumed.close()] if resumed else []),
                             return_exceptions=True)


async def measure_or_fail(transport: str, p: Params) -> dict[str, Any]:
    """`measure`, or the reason it could not finish (a refused command, a dropped
    client: on an overloaded machine Redis may miss its 3 s deadline)."""
    try:
        return await measure(transport, p)
    except (ClientError, TimeoutError) as exc:
        return {"format": FORMAT, "transport": transport, "error": f"{type(exc).__name__}: {exc}",
                "loadavg": [round(x, 2) for x in os.getloadavg()]}


async def measure(transport: str, p: Params) -> dict[str, Any]:
    redis = RedisServer().start()
    opts = http_opts(transport)
    sides: list[Side] = []
    try:
        assert redis.proc is not None
        with contextlib.suppress(OSError):
            os.sched_setaffinity(redis.proc.pid, {SERVER_CPU})
        redis_cpu = cpu_clock(redis.proc.pid)
        with contextlib.ExitStack() as stack:
            for name, args in SIDES.items():
                node = stack.enter_context(
                    Cluster(transport, broker="redis", redis_url=redis.url, server_args=args)
                ).nodes[0]
                room = f"g-{name}"  # one Redis namespace for both: a room each
                subs = await connect_many(transport, node.url, p.subscribers, opts, room,
                                           user=f"{name}-sub")
                pub = await connect(transport, node.url, make_token(f"{name}-pub", DEV_SECRET),
                                    **opts)
                await pub.join(room)
                side = Side(name, node.url, room, subs, pub, Sink(), cpu_clock(node.pid))
                for c in (*subs, pub):
                    c.on_event = side.sink
                sides.append(side)
            pin_self(load_cpus())
            redis0, t0 = redis_cpu(), time.perf_counter()
            await asyncio.sleep(1.0)  # Redis with every client connected, no traffic
            redis_idle = (redis_cpu() - redis0) / (time.perf_counter() - t0)
            me = psutil.Process()
            for side in sides:
                await window(side, p, redis_cpu, record=False)
            me.cpu_percent(None)
            for _ in range(p.rounds):
                for side in (*sides, *sides[::-1]):  # on, off, off, on
                    await window(side, p, redis_cpu, record=True)
            load_cpu = me.cpu_percent(None)
            outages = [await outage(transport, sides[0], p, opts, n) for n in range(p.repeats)]
    finally:
        await asyncio.gather(*(c.close() for s in sides for c in (*s.subs, s.pub)),
                             return_exceptions=True)
        if "http" in opts:
            await opts["http"].aclose()
        redis.stop()
    return {
        "format": FORMAT, "transport": transport, "subscribers": p.subscribers,
        "rate": p.rate, "seconds": p.seconds, "rounds": p.rounds,
        "history": {s.name: s.result(redis_idle, p.rate) for s in sides},
        "redis_idle_cpu_percent": round(redis_idle * 100, 2),
        "outage": summarize(outages), "outages": outages,
        "load_cpu_percent": round(load_cpu, 1), "load_saturated": load_cpu > 90.0,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def summarize(outages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The outages in one row: catch-up times (median, min, max), totals of the checks."""
    times = sorted(o["catch_up_ms"] for o in outages if o["caught_up"])
    return {
        "outage_s": outages[0]["outage_s"], "repeats": len(outages),
        "caught_up": sum(o["caught_up"] for o in outages),
        "missed": round(statistics.median(o["missed"] for o in outages)),
        "connect_ms": statistics.median(o["connect_ms"] for o in outages),
        "catch_up_ms": statistics.median(times) if times else None,
        "catch_up_ms_min": times[0] if times else None,
        "catch_up_ms_max": times[-1] if times else None,
        **{k: sum(o[k] for o in outages) for k in ("lost", "duplicates", "gaps")},
        "in_order": all(o["in_order"] for o in outages),
    }


def _ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.2f}"


def print_table(results: Sequence[dict[str, Any]]) -> None:
    print(f"\n{'transport':<9} {'hist':<4} {'p50 ms':>7} {'p99 ms':>7} {'deliv/s':>8} "
          f"{'srv us/dlv':>10} {'srv %':>6} {'redis us/msg':>12} {'complete':>8} "
          f"{'kept up':>7} {'load%':>6}")
    for r in results:
        if "error" in r:
            print(f"{r['transport']:<9} failed: {r['error']}")
            continue
        for name, h in r["history"].items():
            print(f"{r['transport']:<9} {name:<4} {_ms(h['p50_us']):>7} {_ms(h['p99_us']):>7} "
                  f"{h['deliveries_per_s'] or 0:>8} {h['server_cpu_us_per_delivery'] or 0:>10} "
                  f"{h['server_cpu_percent'] or 0:>6} {h['redis_net_cpu_us_per_message'] or 0:>12} "
                  f"{h['complete']!s:>8} {h['kept_up']!s:>7} {r['load_cpu_percent']:>6}")
    idle = ", ".join(f"{r['transport']} {r['redis_idle_cpu_percent']}%" for r in results)
    print(f"(redis us/msg: net of Redis's idle CPU: {idle})")
    print(f"\n{'transport':<9} {'outage s':>8} {'missed':>6} {'connect ms':>10} "
          f"{'caught-up ms (median, min-max)':>30} {'lost':>4} {'dupes':>5} {'gaps':>4}")
    for r in results:
        if "error" in r:
            continue
        o = r["outage"]
        spread = (f"{o['catch_up_ms']} ({o['catch_up_ms_min']}-{o['catch_up_ms_max']})"
                  f"{'' if o['caught_up'] == o['repeats'] else ' NOT ALL CAUGHT UP'}")
        print(f"{r['transport']:<9} {o['outage_s']:>8} {o['missed']:>6} {o['connect_ms']:>10} "
              f"{spread:>30} {o['lost']:>4} {o['duplicates']:>5} {o['gaps']:>4}")
    print(f"\nload average at the end: {' '.join(map(str, os.getloadavg()))}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.experiments.guarantees",
                                description=__doc__.split("\n")[0])
    d = Params()
    p.add_argument("--transports", default=",".join(TRANSPORTS))
    p.add_argument("--subscribers", type=int, default=d.subscribers)
    p.add_argument("--rate", type=float, default=d.rate, help="messages per second")
    p.add_argument("--seconds", type=float, default=d.seconds, help="per measured window")
    p.add_argument("--rounds", type=int, default=d.rounds, help="ABBA pairs of windows")
    p.add_argument("--warmup", type=float, default=d.warmup)
    p.add_argument("--outage", type=float, default=d.outage, help="seconds disconnected")
    p.add_argument("--repeats", type=int, default=d.repeats, help="outages per transport")
    p.add_argument("--json", help="write results to this file")
    args = p.parse_args(argv)
    params = Params(args.subscribers, args.rate, args.seconds, args.rounds, args.warmup,
                    args.outage, args.repeats)
    results = run_each(args.transports, lambda t: measure_or_fail(t, params))
    print_table(results)
    write_json(args.json, results)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
