"""Idle publish-to-deliver latency across replicas, per transport.

Two replicas share a private Redis; the subscriber is connected to replica 2 and
the publisher to replica 1, so every message crosses Redis. Messages go out
open-loop at a low rate (idle system); latency = subscriber receive time - the
intended send time stamped in the payload (one clock: both ends are this
process). Recorded in an HDR histogram (µs).

    python -m bench.experiments.latency --messages 1000 --rate 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from typing import Any

from bench.experiments.fanout import publish_open_loop
from bench.experiments.output import run_each, write_json
from bench.harness.cluster import Cluster, load_cpus, pin_self
from bench.harness.plan import TRANSPORTS
from loadgen.aio import Received, connect
from loadgen.measure import Histogram, parse_stamp
from servers.core.auth import DEV_SECRET, make_token


async def measure(transport: str, messages: int, rate: float) -> dict[str, Any]:
    with Cluster(transport, replicas=2, broker="redis") as cluster:
        pin_self(load_cpus())
        a, b = cluster.nodes
        sub = await connect(transport, b.url, make_token("sub", DEV_SECRET))
        pub = await connect(transport, a.url, make_token("pub", DEV_SECRET))
        hist = Histogram()
        seen: set[int] = set()
        done = asyncio.get_running_loop().create_future()

        def on_event(ev: Received) -> None:
            if ev.type != "message":
                return
            stamp = parse_stamp(ev.body.get("data"))
            if stamp is None or stamp.seq in seen:
                return
            seen.add(stamp.seq)
            hist.record(ev.recv_us - stamp.intended_us)
            if len(seen) == messages and not done.done():
                done.set_result(None)

        try:
            await sub.join("lat")
            await pub.join("lat")
            sub.on_event = on_event
            await publish_open_loop(pub, "lat", rate, messages)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done, 10)
        finally:
            await asyncio.gather(sub.close(), pub.close(), return_exceptions=True)
    return {
        "transport": transport, "messages": messages, "received": len(seen), "rate": rate,
        "p50_us": hist.percentile(50), "p90_us": hist.percentile(90),
        "p99_us": hist.percentile(99), "p999_us": hist.percentile(99.9),
        "max_us": hist.percentile(100),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.experiments.latency",
                                description=__doc__.split("\n")[0])
    p.add_argument("--transports", default=",".join(TRANSPORTS))
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--rate", type=float, default=100.0, help="messages per second")
    p.add_argument("--json", help="write results to this file")
    args = p.parse_args(argv)
    results = run_each(args.transports, lambda t: measure(t, args.messages, args.rate))
    print(f"\n{'transport':<10} {'recv':>6} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
          f"{'max ms':>7}")
    for r in results:
        print(f"{r['transport']:<10} {r['received']:>6} {r['p50_us'] / 1e3:>7.3f} "
              f"{r['p90_us'] / 1e3:>7.3f} {r['p99_us'] / 1e3:>7.3f} {r['max_us'] / 1e3:>7.3f}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
