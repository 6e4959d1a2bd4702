"""Validate `rtbench regress`: power against an injected slowdown, false alarms on identical code.

1. Measure the head's server CPU per broker message (fanout samples), and set
   the slowdown knob (servers/fanout/slowdown.py, RTBENCH_INJECT_WORK_US) to
   `--slowdown` (20%) of it: every message then costs that much more CPU.
2. Alternate trials: `rtbench regress --base-dir .` with the knob on the head
   side (power: want exit 1 in >= 9/10) and with nothing injected (false alarm:
   want exit 1 in <= 1/10; exit 2, inconclusive, is counted apart).
Each trial's exit code and wall time is appended to `--out` as it ends, so an
interrupted validation still reports the trials it finished.

    python -m bench.validate_regress --trials 10 --out results/regress-validation.jsonl
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import orjson

from bench.regress import Plan, Side, measure


def per_message_cost_us(plan: Plan) -> float:
    raw = measure([Side("head")], Plan(plan.transports, plan.subscribers, plan.rate,
                                       plan.seconds, pairs=3, broker=plan.broker))
    cpu = statistics.median(r["metrics"]["cpu_per_delivery"] for r in raw["head"])
    return float(cpu * (plan.subscribers + 1))


def trial(kind: str, inject_us: float, out: Path, extra: Sequence[str]) -> dict[str, object]:
    cmd = [sys.executable, "-m", "bench.cli", "regress", "--base-dir", ".",
           "--json", str(out.with_suffix(f".{kind}.json")), *extra]
    if kind == "power":
        cmd += ["--head-env", f"RTBENCH_INJECT_WORK_US={inject_us:.1f}"]
    t0 = time.monotonic()
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return {"kind": kind, "exit_code": rc, "wall_s": round(time.monotonic() - t0, 1),
            "inject_us": inject_us if kind == "power" else 0}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.validate_regress",
                                description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=10, help="trials of each kind")
    p.add_argument("--slowdown", type=float, default=0.20)
    p.add_argument("--out", type=Path, default=Path("results/regress-validation.jsonl"))
    p.add_argument("regress_args", nargs="*", help="extra `rtbench regress` options (after --)")
    args = p.parse_args(argv)
    plan = Plan()
    cost = per_message_cost_us(plan)
    inject = cost * args.slowdown
    print(f"server CPU per broker message {cost:.0f} µs; injecting {inject:.0f} µs "
          f"({args.slowdown:.0%})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for i in range(args.trials):
        for kind in ("power", "identical"):
            r = trial(kind, inject, args.out, args.regress_args)
            results.append(r)
            with open(args.out, "ab") as f:
                f.write(orjson.dumps({"trial": i + 1, "cost_us": round(cost, 1), **r}) + b"\n")
            print(f"trial {i + 1} {kind}: exit {r['exit_code']} in {r['wall_s']} s", flush=True)
    for kind in ("power", "identical"):
        rs = [r for r in results if r["kind"] == kind]
        c = Counter(r["exit_code"] for r in rs)
        wall = statistics.median(float(str(r["wall_s"])) for r in rs)
        print(f"{kind}: {len(rs)} trials, regression {c[1]}, inconclusive {c[2]}, pass {c[0]}, "
              f"harness error {c[3]}; median {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
