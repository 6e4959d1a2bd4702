"""What TLS costs, per transport: connect time and server CPU per delivery, with and without.

For each transport the same server (one replica, `--broker`, pinned to core 0) runs
plain and over TLS (a throwaway CA and certificate, bench.harness.tls), in alternating
order (plain, tls, tls, plain, ... over `--rounds`), with this process (asyncio clients,
loadgen.aio, verifying the certificate) on the other core. Each arm measures:

- connect: `--connects` connections opened one after another, each on fresh sockets
  (TCP, then the TLS handshake, then the transport's own: WebSocket upgrade, SSE
  stream, long-poll session, gRPC channel and stream), from `connect()` to `welcome`,
  then closed; p50/p99 in µs, and the server's CPU per connect (its handshakes);
- fanout: `--subscribers` members of one room and an open-loop publisher at `--rate`
  msg/s for `--seconds` (bench.experiments.fanout's method): server CPU µs per
  delivery, latency p50/p99, the load side's CPU (above 90 % the row measured us).

The table puts the arms side by side with the TLS/plain ratio (medians over rounds).

    python -m bench.experiments.tls_cost --transports ws,sse,longpoll,grpc --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from bench.experiments.fanout import http_opts, room_window
from bench.experiments.output import write_json
from bench.harness.cluster import Cluster, Replica, load_cpus, pin_self
from bench.harness.tls import CertPaths, make_certs
from loadgen.aio import connect
from loadgen.measure import Histogram
from servers.core.auth import DEV_SECRET, make_token

TRANSPORTS = ("ws", "sse", "longpoll", "grpc")
ARMS = ("plain", "tls")


def _url(node: Replica) -> str:
    return node.url


async def measure_connects(transport: str, node: Replica, n: int, tls_ca: str | None,
                           ) -> dict[str, Any]:
    """`n` sequential connects on fresh sockets: latency to `welcome`, server CPU each."""
    hist = Histogram()
    times: list[int] = []
    cpu0 = node.cpu_seconds()
    for i in range(n):
        t0 = time.perf_counter_ns()
        client = await connect(transport, _url(node), make_token(f"c{i}", DEV_SECRET),
                               tls_ca=tls_ca)
        us = (time.perf_counter_ns() - t0) // 1000
        await client.close()
        hist.record(max(1, us))
        times.append(us)
    cpu = node.cpu_seconds() - cpu0  # includes each close's share, the same in both arms
    return {"connects": n, "connect_p50_us": hist.percentile(50),
            "connect_p99_us": hist.percentile(99),
            "connect_mean_us": round(statistics.fmean(times)),
            "server_cpu_us_per_connect": round(cpu / n * 1e6, 1)}


async def measure_fanout(transport: str, node: Replica, subscribers: int, rate: float,
                         seconds: float, tls_ca: str | None, warmup: float = 1.0,
                         ) -> dict[str, Any]:
    """Server CPU per delivery broadcasting to one room (bench.experiments.fanout)."""
    opts = {**http_opts(transport), "tls_ca": tls_ca}
    sink, w = await room_window(transport, _url(node), node, subscribers, rate, seconds, opts,
                                warmup, room="tls")
    cpu, delivered, load_cpu = w["cpu"], w["delivered"], w["load_cpu"]
    return {"subscribers": subscribers, "rate": rate, "seconds": seconds,
            "expected": w["expected"], "delivered": delivered, "complete": w["complete"],
            "cpu_us_per_delivery": round(cpu / delivered * 1e6, 3) if delivered else None,
            "p50_us": sink.hist.percentile(50), "p99_us": sink.hist.percentile(99),
            "load_cpu_percent": round(load_cpu, 1), "load_saturated": load_cpu > 90.0}


async def measure(transport: str, arm: str, certs: CertPaths, args: argparse.Namespace,
                  ) -> dict[str, Any]:
    tls = certs if arm == "tls" else None
    tls_ca = str(certs.ca) if tls else None
    with Cluster(transport, broker=args.broker, tls=tls) as cluster:
        node = cluster.nodes[0]
        pin_self(load_cpus())
        row: dict[str, Any] = {"transport": transport, "arm": arm, "broker": args.broker}
        row.update(await measure_connects(transport, node, args.connects, tls_ca))
        row.update(await measure_fanout(transport, node, args.subscribers, args.rate,
                                        args.seconds, tls_ca))
    return row


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per transport: each arm's medians over rounds and the TLS/plain ratios."""
    keys = ("connect_p50_us", "connect_p99_us", "server_cpu_us_per_connect",
            "cpu_us_per_delivery", "p50_us", "p99_us", "load_cpu_percent")
    out = []
    for t in dict.fromkeys(r["transport"] for r in results):
        row: dict[str, Any] = {"transport": t}
        for arm in ARMS:
            rows = [r for r in results if r["transport"] == t and r["arm"] == arm]
            for k in keys:
                row[f"{arm}_{k}"] = _median(rows, k)
            row[f"{arm}_valid"] = all(r["complete"] and not r["load_saturated"] for r in rows)
        for k in keys[:4]:
            p, s = row[f"plain_{k}"], row[f"tls_{k}"]
            row[f"ratio_{k}"] = round(s / p, 2) if p and s else None
        out.append(row)
    return out


def _print(summary: list[dict[str, Any]]) -> None:
    def f(v: float | None, scale: float = 1.0) -> str:
        return "-" if v is None else f"{v / scale:.1f}"

    print(f"\n{'transport':<9} {'connect p50 ms':>21} {'server us/connect':>21} "
          f"{'server us/delivery':>21} {'valid':>6}")
    print(f"{'':<9} {'plain   tls  x':>21} {'plain   tls  x':>21} {'plain   tls  x':>21}")
    for r in summary:
        cells = []
        for k, scale in (("connect_p50_us", 1000.0), ("server_cpu_us_per_connect", 1.0),
                         ("cpu_us_per_delivery", 1.0)):
            ratio = r[f"ratio_{k}"]
            cells.append(f"{f(r[f'plain_{k}'], scale):>7} {f(r[f'tls_{k}'], scale):>6} "
                         f"{'-' if ratio is None else f'{ratio:.2f}':>5}")
        valid = "yes" if r["plain_valid"] and r["tls_valid"] else "no"
        print(f"{r['transport']:<9} {cells[0]:>21} {cells[1]:>21} {cells[2]:>21} {valid:>6}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.experiments.tls_cost",
                                description=__doc__.split("\n")[0])
    p.add_argument("--transports", default=",".join(TRANSPORTS))
    p.add_argument("--rounds", type=int, default=2,
                   help="alternating rounds per transport: plain,tls then tls,plain, ...")
    p.add_argument("--connects", type=int, default=200, help="sequential connects per arm")
    p.add_argument("--subscribers", type=int, default=200)
    p.add_argument("--rate", type=float, default=20.0, help="messages per second")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--broker", default="memory", choices=("redis", "memory"))
    p.add_argument("--json", help="write every round and the summary to this file")
    args = p.parse_args(argv)
    transports = [t for t in args.transports.split(",") if t]
    bad = [t for t in transports if t not in TRANSPORTS]
    if bad or args.rounds < 1 or args.connects < 1 or args.subscribers < 1:
        print(f"tls_cost: transports must be among {','.join(TRANSPORTS)}; --rounds, "
              "--connects and --subscribers at least 1", file=sys.stderr)
        return 2
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rtbench-tls-") as tmp:
        certs = make_certs(tmp)
        for t in transports:
            for i in range(args.rounds):
                for arm in (ARMS if i % 2 == 0 else ARMS[::-1]):
                    row = asyncio.run(measure(t, arm, certs, args))
                    row["round"] = i
                    results.append(row)
                    print({k: row[k] for k in ("transport", "arm", "round", "connect_p50_us",
                                               "cpu_us_per_delivery")}, flush=True)
    summary = summarize(results)
    _print(summary)
    write_json(args.json, [{"summary": summary, "rounds": results,
                            "parameters": vars(args)}])
    return 0


if __name__ == "__main__":
    sys.exit(main())
