"""Latency floor: at 1 message/s with one subscriber, rtbench's WebSocket p50 (measured by the
Locust load generator, `loadgen/broadcast.py`) against a raw Redis PUBLISH -> subscriber
round trip (redis-py asyncio + hiredis, the server's own fanout client), in the same run.

All run side by side for the same time on the load core (server pinned to core 0):
rtbench's path is client -> server -> Redis -> server -> client, the baseline is
the Redis hop alone, so the ratio is what the server stack adds to the one hop
it cannot avoid. Target: ratio <= 2. A third stream, the same WebSocket path
timed by a plain asyncio client (`loadgen.aio`), tells the load generator's share
from the server's.

    python -m bench.latency_floor --seconds 60 --json results/latency_floor.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 3.0  # seconds of start-up (imports, connects) left out on both sides


def _redis_role(args: argparse.Namespace) -> int:
    """Baseline: PUBLISH at `rate`, time each message from just before PUBLISH to receipt."""
    import asyncio

    import redis.asyncio as redis

    from loadgen.measure import Histogram, now_us

    async def go() -> dict[str, Any]:
        pub = redis.Redis.from_url(args.redis_url)
        sub = redis.Redis.from_url(args.redis_url)
        ps = sub.pubsub()
        await ps.subscribe("floor")
        await ps.get_message(timeout=5)  # the subscribe confirmation
        hist = Histogram()
        sent: dict[int, int] = {}
        count = int((args.seconds + WARMUP) * args.rate)
        interval = 1.0 / args.rate
        loop = asyncio.get_running_loop()
        start = loop.time() + interval / 2  # out of phase with the Locust publisher's sends
        try:
            for k in range(count):
                await asyncio.sleep(max(0.0, start + k * interval - loop.time()))
                sent[k] = now_us()
                await pub.publish("floor", str(k))
                msg = await ps.get_message(timeout=5)
                while msg is not None and msg.get("type") != "message":
                    msg = await ps.get_message(timeout=5)
                if msg is None or k < WARMUP * args.rate:
                    continue
                hist.record(now_us() - sent[int(msg["data"])])
        finally:
            await ps.aclose()  # type: ignore[no-untyped-call]
            await pub.aclose()
            await sub.aclose()
        return {"count": hist.count, "sent": count, "p50_us": hist.percentile(50),
                "p90_us": hist.percentile(90), "p99_us": hist.percentile(99),
                "max_us": hist.percentile(100)}

    print(json.dumps(asyncio.run(go())), flush=True)
    return 0


def _aio_ws_role(args: argparse.Namespace) -> int:
    """The same WebSocket path, timed by asyncio clients (publisher + subscriber)."""
    import asyncio

    import orjson

    from loadgen.aio import Received, connect
    from loadgen.measure import Histogram, build_payload, now_us, parse_stamp
    from servers.core.auth import DEV_SECRET, make_token

    async def go() -> dict[str, Any]:
        sub = await connect("ws", args.url, make_token("floor-aio-sub", DEV_SECRET))
        pub = await connect("ws", args.url, make_token("floor-aio-pub", DEV_SECRET))
        hist = Histogram()
        warm = now_us() + int(WARMUP * 1e6)

        def on_event(ev: Received) -> None:
            stamp = parse_stamp(ev.body.get("data")) if ev.type == "message" else None
            if stamp is not None and stamp.intended_us >= warm:
                hist.record(ev.recv_us - stamp.intended_us)

        sub.on_event = on_event
        await sub.join("floor-aio")
        await pub.join("floor-aio")
        loop = asyncio.get_running_loop()
        interval = 1.0 / args.rate
        start = loop.time() + interval / 4  # out of phase with the other two streams
        try:
            for k in range(int((args.seconds + WARMUP) * args.rate)):
                await asyncio.sleep(max(0.0, start + k * interval - loop.time()))
                payload = build_payload("floor-aio-pub", k, now_us(), 100)
                await pub.publish("floor-aio", orjson.loads(payload), ack=False)
            await asyncio.sleep(1)
        finally:
            await asyncio.gather(sub.close(), pub.close(), return_exceptions=True)
        return {"count": hist.count, "p50_us": hist.percentile(50),
                "p90_us": hist.percentile(90), "p99_us": hist.percentile(99),
                "max_us": hist.percentile(100)}

    print(json.dumps(asyncio.run(go())), flush=True)
    return 0


def measure(seconds: float, rate: float) -> dict[str, Any]:
    from bench.cluster import Cluster, load_cpus, pin_self
    from loadgen import result as result_mod

    with Cluster("ws", replicas=1, broker="redis") as cluster, \
            tempfile.TemporaryDirectory() as tmp:
        pin_self(load_cpus())
        assert cluster.redis_url is not None
        out = Path(tmp) / "floor.json"
        baseline = subprocess.Popen(
            [sys.executable, "-m", "bench.latency_floor", "--role", "redis", "--redis-url",
             cluster.redis_url, "--seconds", str(seconds), "--rate", str(rate)],
            stdout=subprocess.PIPE)
        aio_ws = subprocess.Popen(
            [sys.executable, "-m", "bench.latency_floor", "--role", "aio-ws", "--url",
             cluster.nodes[0].url, "--seconds", str(seconds), "--rate", str(rate)],
            stdout=subprocess.PIPE)
        with baseline, aio_ws:
            # 1 publisher + 1 subscriber; both receive, both are one-subscriber samples
            run = subprocess.run(
                [sys.executable, "-m", "locust", "-f", str(ROOT / "loadgen" / "broadcast.py"),
                 "--headless", "-u", "2", "-r", "10", "-t", f"{seconds + WARMUP + 2:g}s",
                 "--servers", cluster.nodes[0].url, "--transport", "ws",
                 "--publish-rate", str(rate), "--drain", "2", "--warmup", str(WARMUP),
                 "--result-file", str(out),
                 "--only-summary", "--invalid-exit-code", "0"],
                cwd=ROOT, capture_output=True, timeout=seconds + 120)
            raw, _ = baseline.communicate(timeout=seconds + 60)
            raw_aio, _ = aio_ws.communicate(timeout=seconds + 60)
        if not out.exists():
            raise RuntimeError(f"locust wrote no result:\n{run.stdout.decode()[-3000:]}"
                               f"{run.stderr.decode()[-3000:]}")
        res = result_mod.load(out)
    redis_floor = json.loads(raw.decode().strip().splitlines()[-1])
    aio_floor = json.loads(raw_aio.decode().strip().splitlines()[-1])
    lat = res["latency_us"]["all"]
    p50 = lat["percentiles"]["p50"]
    return {
        "seconds": seconds, "rate": rate,
        "redis": redis_floor,
        "ws": {"count": lat["count"], "p50_us": p50, "p90_us": lat["percentiles"]["p90"],
               "p99_us": lat["percentiles"]["p99"], "max_us": lat["max"],
               "missing": res["delivery"]["missing"], "valid": res["validity"]["valid"],
               "saturation_reasons": res["validity"]["reasons"]},
        "ws_asyncio_client": aio_floor,
        "ratio_p50": p50 / redis_floor["p50_us"] if redis_floor["p50_us"] else None,
        "ratio_p50_asyncio_client": (aio_floor["p50_us"] / redis_floor["p50_us"]
                                     if redis_floor["p50_us"] else None),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.latency_floor",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=1.0, help="messages per second")
    p.add_argument("--target", type=float, default=2.0, help="allowed p50 ratio")
    p.add_argument("--json", help="write the result to this file")
    p.add_argument("--role", choices=("redis", "aio-ws"), help=argparse.SUPPRESS)
    p.add_argument("--redis-url", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "redis":
        return _redis_role(args)
    if args.role == "aio-ws":
        return _aio_ws_role(args)
    r = measure(args.seconds, args.rate)
    print(json.dumps(r), flush=True)
    ratio = r["ratio_p50"]
    ok = ratio is not None and ratio <= args.target
    print(f"\nredis PUBLISH->subscriber p50 {r['redis']['p50_us'] / 1e3:.3f} ms "
          f"({r['redis']['count']} samples)")
    print(f"rtbench ws (locust)      p50 {r['ws']['p50_us'] / 1e3:.3f} ms "
          f"({r['ws']['count']} samples, missing {r['ws']['missing']})")
    print(f"rtbench ws (asyncio)     p50 {r['ws_asyncio_client']['p50_us'] / 1e3:.3f} ms "
          f"({r['ws_asyncio_client']['count']} samples)")
    print(f"ratio {ratio if ratio is None else round(ratio, 2)}  "
          f"{'ok' if ok else 'ABOVE'} target {args.target}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
