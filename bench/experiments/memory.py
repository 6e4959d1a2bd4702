"""Server memory per idle held connection, per transport.

The server (one replica, Redis broker, pinned to core 0) is measured with psutil:
RSS after a warm-up of `warmup` connections, then after `connections` more idle
connections are open (each has a welcome and nothing else); the figure is the
RSS delta divided by the number of added connections, core registry included.
The server's own `rtbench_connections` gauge confirms the count.

    python -m bench.experiments.memory --connections 5000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.experiments.fanout import http_opts
from bench.experiments.output import run_each, write_json
from bench.harness.cluster import Cluster, Replica, load_cpus, pin_self
from loadgen.aio import Client, connect
from servers.core.auth import DEV_SECRET, make_token

TARGETS = ("ws", "sse", "longpoll", "grpc")


async def _open(transport: str, url: str, first: int, n: int, opts: dict[str, Any],
                ) -> list[Client]:
    sem = asyncio.Semaphore(200)

    async def one(i: int) -> Client:
        async with sem:
            return await connect(transport, url, make_token(f"idle{i}", DEV_SECRET), **opts)

    return list(await asyncio.gather(*(one(first + i) for i in range(n))))


def _gauge(node: Replica) -> int:
    for name, value in node.metrics().items():
        if name.startswith("rtbench_connections{"):
            return int(value)
    return -1


async def _settled_rss(node: Replica, expect: int, limit_s: float = 20.0) -> int:
    """RSS once the server reports `expect` connections and RSS stopped moving."""
    deadline = time.monotonic() + limit_s
    while _gauge(node) != expect and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    last = node.rss()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = node.rss()
        if abs(now - last) < 64 * 1024:
            return now
        last = now
    return node.rss()


async def measure(transport: str, connections: int, warmup: int) -> dict[str, Any]:
    with Cluster(transport, broker="redis") as cluster:
        node = cluster.nodes[0]
        pin_self(load_cpus())
        opts = http_opts(transport)  # SSE/long-poll: one keep-alive pool for every client
        clients: list[Client] = []
        try:
            clients += await _open(transport, node.url, 0, warmup, opts)
            base = await _settled_rss(node, warmup)
            t0 = time.perf_counter()
            clients += await _open(transport, node.url, warmup, connections, opts)
            connect_s = time.perf_counter() - t0
            held = _gauge(node)
            after = await _settled_rss(node, warmup + connections)
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
            if "http" in opts:
                await opts["http"].aclose()
            gc.collect()
    return {
        "transport": transport, "connections": connections, "held": held - warmup,
        "rss_before_mb": round(base / 2**20, 1), "rss_after_mb": round(after / 2**20, 1),
        "bytes_per_connection": round((after - base) / connections),
        "connect_rate_per_s": round(connections / connect_s),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.experiments.memory",
                                description=__doc__.split("\n")[0])
    p.add_argument("--transports", default=",".join(TARGETS))
    p.add_argument("--connections", type=int, default=5000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--json", help="write results to this file")
    args = p.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = run_each(args.transports, lambda t: measure(t, args.connections, args.warmup))
    print(f"\n{'transport':<10} {'held':>6} {'KB/conn':>8} {'RSS before MB':>14} "
          f"{'after MB':>9} {'conn/s':>7}")
    for r in results:
        print(f"{r['transport']:<10} {r['held']:>6} {r['bytes_per_connection'] / 1024:>8.1f} "
              f"{r['rss_before_mb']:>14} {r['rss_after_mb']:>9} {r['connect_rate_per_s']:>7}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
