"""The signal of `rtbench regress`: fanout samples of each side, interleaved, on pinned servers.

One room of `Plan.subscribers` on one server per side (core 0), the clients on
the other core, connected and warmed up once per round and kept connected, so
a sample is only its measured window (reconnecting 100 clients per sample cost
~1 s and added its own noise). Per sample: the server's CPU per delivery and
its inverse (bench.harness.cpu's ns process clock), latency percentiles, lost and
duplicated messages. Sides are measured in the order A B B A A B ..., one transport
after the other (all four by default).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness.cpu import cpu_clock
from bench.harness.plan import TRANSPORTS, parse_list

SCENARIO = "fanout"
MEASURED_PATHS = ("servers", "loadgen", "bench")  # the code a sample runs


@dataclass(frozen=True)
class Plan:
    transports: tuple[str, ...] = TRANSPORTS
    # light enough that the load side (one core) is far from saturation: its
    # latency figures otherwise measure the load generator (spread > 100% seen
    # at 200 x 50/s)
    subscribers: int = 100
    rate: float = 20.0
    seconds: float = 4.0
    warmup: float = 1.0
    # per side per round (in `regress`, that many A/B pairs). 10: n=8 missed ~3% of +20%
    # trials under load (paired sd(log) 0.11), see README
    samples: int = 10
    broker: str = "redis"

    def params(self) -> dict[str, Any]:
        return {"transports": list(self.transports), "subscribers": self.subscribers,
                "rate": self.rate, "seconds": self.seconds, "warmup": self.warmup,
                "broker": self.broker, "scenario": SCENARIO}


def add_plan_args(p: argparse.ArgumentParser) -> None:
    """The options that make a Plan, the same in `rtbench regress` and `rtbench baseline`
    (a stored baseline only compares with a check of the same parameters)."""
    d = Plan()
    p.add_argument("--transports", default=",".join(d.transports), metavar="LIST",
                   help=f"comma-separated subset of {','.join(TRANSPORTS)}, or all")
    p.add_argument("--samples", type=int, default=d.samples, metavar="N",
                   help="measured windows per transport (regress: per side and round, "
                        "taken in back-to-back pairs)")
    p.add_argument("--subscribers", type=int, default=d.subscribers, metavar="N",
                   help="subscribers in the measured room")
    p.add_argument("--rate", type=float, default=d.rate, metavar="PER_S",
                   help="messages published per second")
    p.add_argument("--seconds", type=float, default=d.seconds, metavar="S",
                   help="one sample's measured window")
    p.add_argument("--broker", default=d.broker, choices=("redis", "memory"),
                   help="the servers' broker (memory: no Redis)")


def plan_from_args(args: argparse.Namespace) -> Plan:
    """The Plan of `add_plan_args`' options; ValueError names an unknown transport."""
    transports = parse_list(args.transports, TRANSPORTS)
    unknown = [t for t in transports if t not in TRANSPORTS]
    if unknown:
        raise ValueError(f"--transports: unknown {', '.join(unknown)} "
                         f"(expected some of {', '.join(TRANSPORTS)})")
    return Plan(tuple(transports), args.subscribers, args.rate, args.seconds,
                samples=args.samples, broker=args.broker)


@dataclass
class Side:
    name: str
    tree: Path | None = None  # None: this process's own code
    env: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def _side_env(side: Side) -> Iterator[None]:
    """While a side's servers start: its tree first on the path, its extra env set."""
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    try:
        os.environ.update(side.env)
        if side.tree is not None:
            # `python -m servers.serve` puts its cwd first on sys.path
            os.environ["PYTHONPATH"] = str(side.tree)
            os.chdir(side.tree)
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


class _Room:
    """One side's subscribers and publisher, connected once and warmed up, then sampled."""

    def __init__(self, transport: str, url: str, cpu: Callable[[], float], plan: Plan) -> None:
        from bench.experiments.fanout import Sink

        self.transport, self.url, self.cpu, self.plan = transport, url, cpu, plan
        self.sink = Sink()
        self.opts: dict[str, Any] = {}
        self.clients: list[Any] = []
        self.sent = 0

    async def open(self) -> None:
        from bench.experiments.fanout import connect_many, drain, http_opts, publish_for
        from loadgen.aio import connect
        from servers.core.auth import DEV_SECRET, make_token

        plan = self.plan
        self.opts = http_opts(self.transport)
        self.clients = await connect_many(self.transport, self.url, plan.subscribers, self.opts)
        self.pub = await connect(self.transport, self.url, make_token("publisher", DEV_SECRET),
                                 **self.opts)
        self.clients.append(self.pub)
        await self.pub.join("fan")
        for c in self.clients:
            c.on_event = self.sink
        self.sent = await publish_for(self.pub, plan.rate, plan.warmup, 0)
        await drain(self.sink, self.sent * len(self.clients), 10)

    async def sample(self) -> dict[str, float]:
        """One measured window: publish for `plan.seconds`, drain, read the server's CPU."""
        from bench.experiments.fanout import drain, publish_for
        from loadgen.measure import Histogram

        sink, members = self.sink, len(self.clients)
        sink.hist = Histogram()
        await drain(sink, self.sent * members, 10)  # stragglers of the last window
        cpu0, count0 = self.cpu(), sink.count
        sink.recording = True
        n = await publish_for(self.pub, self.plan.rate, self.plan.seconds, self.sent)
        self.sent += n
        await drain(sink, self.sent * members, 10)
        sink.recording = False
        cpu, delivered = self.cpu() - cpu0, sink.count - count0
        # cumulative: a message late past its window's drain is not counted twice
        missing = self.sent * members - sink.count
        h = sink.hist
        measured = cpu > 0 and delivered > 0
        return {"cpu_per_delivery": cpu / delivered * 1e6 if measured else float("nan"),
                "throughput": delivered / cpu if measured else float("nan"),
                "p50": h.percentile(50) / 1000, "p95": h.percentile(95) / 1000,
                "p99": h.percentile(99) / 1000,
                "lost": max(0, missing), "duplicates": max(0, -missing)}

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
        if "http" in self.opts:
            await self.opts["http"].aclose()


async def _measure(sides: Sequence[Side], transport: str, nodes: dict[str, Any], plan: Plan,
                   out: dict[str, list[dict[str, Any]]], log: Any) -> None:
    rooms = {s.name: _Room(transport, nodes[s.name].url, cpu_clock(nodes[s.name].pid), plan)
             for s in sides}
    try:
        for room in rooms.values():
            await room.open()
        for i in range(plan.samples):
            order = list(sides) if i % 2 == 0 else list(reversed(sides))
            for side in order:
                metrics = await rooms[side.name].sample()
                out[side.name].append({"transport": transport, "scenario": SCENARIO,
                                       "metrics": metrics})
                print(f"  {transport} {side.name:<4} #{i + 1}: "
                      f"{metrics['cpu_per_delivery']:.2f} µs/delivery, "
                      f"p50 {metrics['p50']:.2f} ms", file=log, flush=True)
    finally:
        await asyncio.gather(*(r.close() for r in rooms.values()), return_exceptions=True)


def measure(sides: Sequence[Side], plan: Plan, log: Any = sys.stderr) -> dict[str, list[
        dict[str, Any]]]:
    """Samples per side, interleaved A B B A ...; one server per side, its clients kept
    connected between its samples (a sample is then only the measured window)."""
    from bench.harness.cluster import Cluster, load_cpus, pin_self

    out: dict[str, list[dict[str, Any]]] = {s.name: [] for s in sides}
    pin_self(load_cpus())
    for transport in plan.transports:
        with contextlib.ExitStack() as stack:
            nodes = {}
            for side in sides:
                with _side_env(side):
                    cl = stack.enter_context(Cluster(transport, broker=plan.broker))
                nodes[side.name] = cl.nodes[0]
            asyncio.run(_measure(sides, transport, nodes, plan, out, log))
    return out


def machine_meta(plan: Plan) -> dict[str, Any]:
    from bench.harness.runs import cpu_model, git_state

    # dirty: uncommitted changes in the measured code, so the revision is not what ran
    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "python": sys.version.split()[0],
            "git": git_state(*MEASURED_PATHS),
            "parameters": plan.params(), "created_unix": int(time.time())}
