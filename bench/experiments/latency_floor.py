"""Latency floor: at 1 message/s with one subscriber, rtbench's p50 (WebSocket by default,
`--transport` for the others; measured by the Locust load generator,
`loadgen/broadcast.py`) against a raw Redis PUBLISH -> subscriber
round trip with redis-py asyncio + hiredis (the standard Python client), in the same run.

    python -m bench.experiments.latency_floor --seconds 20 --rounds 3 \
        --json results/latency_floor.json
    # a server setting's share:
    python -m bench.experiments.latency_floor --server-args "--ws-impl websockets"

Each round runs six streams side by side for the same time, each at `--rate`, spread
over the send interval so that they never overlap (Locust keeps its own schedule; the
roles are in bench/experiments/latency_roles.py):

- `rtbench`: client -> server -> Redis -> server -> client, timed by Locust;
- `rtbench_asyncio_client`: the same path timed by a plain asyncio client (`loadgen.aio`),
  which tells the load generator's share from the server's;
- `redis`: the baseline, PUBLISH -> subscriber, both in one asyncio process;
- `redis_lean`: the same with `servers.fanout.resp`, the lean connection the servers'
  fanout layer itself uses since it replaced redis-py there: a stricter baseline, which
  takes redis-py's own ~0.1-0.2 ms out of it. Reported as `ratio_p50_lean_baseline`
  beside the verdict's ratio, so that the server's client is not credited for beating
  a slower client on the baseline's side;
- `floor.relay` and `floor.direct`: the same process hops with no work at all. A 16-byte
  message goes from a client on the load core through a relay process on the server
  core to an echo process on Redis's core and back (rtbench's four hops), or straight
  to the echo and back (the baseline's two hops), over plain blocking sockets.

At 1 message/s every hop wakes an idle process, often on the other core (a bare
cross-core ping-pong between two Python processes idle for 1 s took ~250 us on the
2-core VM this was written on, same-core ~140 us). rtbench's path has four hops and the
baseline two: `floor_ratio = relay / direct` is the ratio a server doing no work would
get, and `above_floor_us` is what each side's software adds over its own hops. The
verdict is on the median of the per-round ratios.

Placement is explicit, as in the other benchmarks: the server on core 0, clients on the
other core, and Redis on the server's core (`--redis-cpu server`: part of the system
under test; floor_ratio ~1.2-1.6). `load` puts Redis with the clients, where the
baseline's hops stay on one core and rtbench's all cross (floor_ratio ~2.4 by itself);
`none` leaves it to the scheduler, which may do either.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import ROOT
from bench.experiments.latency_roles import ROLES, WARMUP

# --------------------------------------------------------------------------- one round


def _pin_process(pid: int, cpu: int) -> None:
    """Pin every thread of `pid` (redis-server has background threads) to `cpu`."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(int(tid), {cpu})


def round_result(redis_floor: dict[str, Any], ws: dict[str, Any], aio: dict[str, Any],
                 floor: dict[str, dict[str, Any]], redis_lean: dict[str, Any] | None = None,
                 ) -> dict[str, Any]:
    """One round's streams and the ratios derived from them (None where a p50 is missing)."""

    def ratio(a: float, b: float | None) -> float | None:
        return a / b if a and b else None

    base = redis_floor["p50_us"]
    lean = redis_lean["p50_us"] if redis_lean else None
    relay, direct = floor["relay"]["p50_us"], floor["direct"]["p50_us"]
    return {
        "redis": redis_floor, "redis_lean": redis_lean, "rtbench": ws,
        "rtbench_asyncio_client": aio, "floor": floor,
        "ratio_p50": ratio(ws["p50_us"], base),
        "ratio_p50_asyncio_client": ratio(aio["p50_us"], base),
        "ratio_p50_lean_baseline": ratio(ws["p50_us"], lean),
        "floor_ratio": ratio(relay, direct),
        "above_floor_us": {"rtbench": ws["p50_us"] - relay,
                           "rtbench_asyncio_client": aio["p50_us"] - relay,
                           "redis": base - direct,
                           "redis_lean": None if lean is None else lean - direct},
    }


def summarize(rounds: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Medians over rounds of every ratio and excess; the verdict is on `ratio_p50`."""

    def median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    keys = ("ratio_p50", "ratio_p50_asyncio_client", "ratio_p50_lean_baseline", "floor_ratio")
    out: dict[str, Any] = {k: median([r.get(k) for r in rounds]) for k in keys}
    out["above_floor_us"] = {k: median([r["above_floor_us"].get(k) for r in rounds])
                             for k in ("rtbench", "rtbench_asyncio_client", "redis", "redis_lean")}
    out["target"] = target
    out["ok"] = out["ratio_p50"] is not None and out["ratio_p50"] <= target
    out["valid"] = all(r["rtbench"]["valid"] and not r["rtbench"]["missing"] for r in rounds)
    return out


def _run_round(url: str, redis_url: str, seconds: float, rate: float, server_cpu: int,
               redis_cpu: int, transport: str = "ws") -> dict[str, Any]:
    from loadgen import result as result_mod

    load_before = os.getloadavg()
    t0 = time.time() + 2.0  # every stream's schedule starts here, once the processes are up
    common = ["--seconds", str(seconds), "--rate", str(rate), "--t0", repr(t0)]
    me = [sys.executable, "-m", "bench.experiments.latency_floor"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "floor.json"
        children = {
            "redis": subprocess.Popen([*me, "--role", "redis", "--redis-url", redis_url, *common],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT),
            "redis-lean": subprocess.Popen(
                [*me, "--role", "redis-lean", "--redis-url", redis_url, *common],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT),
            "aio": subprocess.Popen([*me, "--role", "aio", "--url", url, "--transport", transport,
                                     *common],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT),
            "floor": subprocess.Popen([*me, "--role", "floor", "--server-cpu", str(server_cpu),
                                       "--redis-cpu", str(redis_cpu), *common],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT),
        }
        # 1 publisher + 1 subscriber; both receive, both are one-subscriber samples
        run = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(ROOT / "loadgen" / "broadcast.py"),
             "--headless", "-u", "2", "-r", "10", "-t", f"{seconds + WARMUP + 4:g}s",
             "--servers", url, "--transport", transport,
             "--publish-rate", str(rate), "--drain", "2", "--warmup", str(WARMUP),
             "--result-file", str(out), "--only-summary", "--invalid-exit-code", "0"],
            cwd=ROOT, capture_output=True, timeout=seconds + 120)
        raw = {}
        for name, proc in children.items():
            stdout, stderr = proc.communicate(timeout=seconds + 60)
            if proc.returncode != 0:
                raise RuntimeError(f"latency_floor role {name} failed ({proc.returncode}):\n"
                                   f"{stderr.decode(errors='replace')[-3000:]}")
            raw[name] = json.loads(stdout.decode().strip().splitlines()[-1])
        if not out.exists():
            raise RuntimeError(f"locust wrote no result:\n{run.stdout.decode()[-3000:]}"
                               f"{run.stderr.decode()[-3000:]}")
        res = result_mod.load(out)
    lat = res["latency_us"]["all"]
    ws = {"count": lat["count"], "p50_us": lat["percentiles"]["p50"],
          "p90_us": lat["percentiles"]["p90"], "p99_us": lat["percentiles"]["p99"],
          "max_us": lat["max"], "missing": res["delivery"]["missing"],
          "valid": res["validity"]["valid"], "saturation_reasons": res["validity"]["reasons"]}
    r = round_result(raw["redis"], ws, raw["aio"], raw["floor"], raw["redis-lean"])
    r["loadavg"] = [round(x, 2) for x in (*load_before, *os.getloadavg())]
    return r


def measure(seconds: float, rate: float, rounds: int = 3, redis_cpu: str = "server",
            target: float = 2.0, server_args: Sequence[str] = (), transport: str = "ws",
            ) -> dict[str, Any]:
    from bench.harness.cluster import SERVER_CPU, Cluster, load_cpus, pin_self
    from servers.testing import RedisServer

    load = load_cpus()
    pin_self(load)
    cpu = {"server": SERVER_CPU, "load": load[0], "none": None}[redis_cpu]
    redis = RedisServer().start()
    try:
        assert redis.proc is not None
        if cpu is not None:
            _pin_process(redis.proc.pid, cpu)
        with Cluster(transport, replicas=1, broker="redis", redis_url=redis.url,
                     server_args=server_args) as cluster:
            results = []
            for i in range(rounds):
                r = _run_round(cluster.nodes[0].url, redis.url, seconds, rate, SERVER_CPU,
                               SERVER_CPU if cpu is None else cpu, transport)
                r["round"] = i + 1
                results.append(r)
                _print_round(r)
    finally:
        redis.stop()
    return {"transport": transport, "seconds": seconds, "rate": rate,
            "server_args": list(server_args), "rounds": results,
            "placement": {"server_cpu": SERVER_CPU, "load_cpus": load, "redis_cpu": redis_cpu},
            "summary": summarize(results, target)}


def _fmt(x: float | None, unit: str = "") -> str:
    return "-" if x is None else f"{x:.2f}{unit}"


def _print_round(r: dict[str, Any]) -> None:
    f = r["floor"]
    print(f"round {r['round']}: p50 ms  locust {r['rtbench']['p50_us'] / 1e3:.3f}  "
          f"asyncio {r['rtbench_asyncio_client']['p50_us'] / 1e3:.3f}  "
          f"redis {r['redis']['p50_us'] / 1e3:.3f} (lean {r['redis_lean']['p50_us'] / 1e3:.3f})  "
          f"floor relay {f['relay']['p50_us'] / 1e3:.3f} direct {f['direct']['p50_us'] / 1e3:.3f}"
          f"  | ratio {_fmt(r['ratio_p50'])} (asyncio {_fmt(r['ratio_p50_asyncio_client'])}, "
          f"lean baseline {_fmt(r['ratio_p50_lean_baseline'])}, floor {_fmt(r['floor_ratio'])})  "
          f"samples {r['rtbench']['count']} redis {r['redis']['count']}  "
          f"loadavg {r['loadavg'][0]:.2f}->{r['loadavg'][3]:.2f}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.experiments.latency_floor",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rate", type=float, default=1.0, help="messages per second")
    p.add_argument("--transport", default="ws", choices=("ws", "sse", "longpoll", "grpc"),
                   help="the transport measured (the issue's target is on ws)")
    p.add_argument("--target", type=float, default=2.0, help="allowed p50 ratio")
    p.add_argument("--redis-cpu", default="server", help="server | load | none (unpinned)")
    p.add_argument("--server-args", default="",
                   help="extra `rtbench serve` arguments, e.g. '--ws-impl websockets'")
    p.add_argument("--json", help="write the result to this file")
    p.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    for hidden in ("--redis-url", "--url"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    for hidden in ("--port", "--echo-port", "--conns", "--cpu", "--server-cpu"):
        p.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    p.add_argument("--t0", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role is not None:
        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})
        if args.role in ("floor",):
            args.redis_cpu = int(args.redis_cpu)
        out = ROLES[args.role](args)
        print(json.dumps(out), flush=True)
        return 0
    if args.redis_cpu not in ("server", "load", "none") or args.rounds < 1 or args.rate <= 0:
        p.error("--redis-cpu is server, load or none; --rounds >= 1; --rate > 0")
    r = measure(args.seconds, args.rate, args.rounds, args.redis_cpu, args.target,
                shlex.split(args.server_args), args.transport)
    s = r["summary"]
    print(f"\n{args.transport}, median over {args.rounds} rounds: ratio {_fmt(s['ratio_p50'])} "
          f"({'ok' if s['ok'] else 'ABOVE'} target {args.target}), asyncio client "
          f"{_fmt(s['ratio_p50_asyncio_client'])}, against the lean Redis baseline "
          f"{_fmt(s['ratio_p50_lean_baseline'])}, zero-work hop floor {_fmt(s['floor_ratio'])}; "
          f"above the hop floor: {args.transport} {s['above_floor_us']['rtbench']} us, "
          f"redis {s['above_floor_us']['redis']} us"
          f"{'' if s['valid'] else '  (INVALID: lost messages or saturated load generator)'}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0 if s["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
