"""Validate `rtbench regress`: power against an injected slowdown, false alarms on identical code.

1. Calibrate the knob on what the check measures: the head's server CPU per
   delivery (the same fanout samples `rtbench regress` takes), times the
   members a broker message is delivered to, is the CPU one broker message
   costs; the knob (servers/fanout/slowdown.py, RTBENCH_INJECT_WORK_US) is set
   to `--slowdown` (20%) of it, so CPU per delivery grows by that share.
   Each power trial's JSON verdict reports the growth the check measured
   (`cpu_ratio`), which verifies the calibration trial by trial.
2. Alternate trials: `rtbench regress --base-dir .` with the knob on the head
   side (power: want exit 1 in >= 9/10) and with nothing injected (false alarm:
   want exit 1 in <= 1/10; exit 2, inconclusive, is counted apart).
Each trial is appended to `--out` (JSON lines) as it ends, with its exit code,
wall time, rounds, measured CPU ratio and the load average around it, so an
interrupted validation still reports the trials it finished; each trial's full
verdict JSON is kept beside it.

    python -m bench.regress.validate --trials 10 --out results/regress-validation.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.cli import HelpFormatter
from bench.harness.plan import TRANSPORTS
from bench.regress.samples import Plan, Side, measure


def per_message_cost_us(plan: Plan, samples: int = 6) -> float:
    """Server CPU per broker message (µs), measured as the check measures it."""
    raw = measure([Side("head")], dataclasses.replace(plan, samples=samples))
    cpu = statistics.median(r["metrics"]["cpu_per_delivery"] for r in raw["head"])
    return float(cpu * (plan.subscribers + 1))


def _summary(path: Path) -> dict[str, Any]:
    """What a trial's verdict JSON says about the primary metric and the rounds."""
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    cpu: dict[str, Any] = next((c for c in doc.get("comparisons", [])
                                if c["metric"] == "cpu_per_delivery"), {})
    return {"verdict": doc.get("verdict"), "rounds": len(doc.get("rounds", [])),
            "cpu_ratio": cpu.get("ratio"), "cpu_ci": [cpu.get("ci_low"), cpu.get("ci_high")],
            "cpu_p": cpu.get("p_value"), "cpu_verdict": cpu.get("verdict"),
            "inconclusive_metrics": [c["metric"] for c in doc.get("comparisons", [])
                                     if c["verdict"] == "inconclusive"],
            "notes": doc.get("notes", [])}


def trial(kind: str, i: int, inject_us: float, out: Path,
          extra: Sequence[str]) -> dict[str, Any]:
    verdict = out.with_suffix(f".{kind}{i}.json")
    cmd = [sys.executable, "-m", "bench.cli", "regress", "--base-dir", ".",
           "--json", str(verdict), *extra]
    if kind == "power":
        cmd += ["--head-env", f"RTBENCH_INJECT_WORK_US={inject_us:.1f}"]
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return {"kind": kind, "exit_code": rc, "wall_s": round(time.monotonic() - t0, 1),
            "inject_us": inject_us if kind == "power" else 0,
            "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)], **_summary(verdict)}


def report(results: Sequence[dict[str, Any]]) -> None:
    for kind in ("power", "identical"):
        rs = [r for r in results if r["kind"] == kind]
        if not rs:
            continue
        c = Counter(r["exit_code"] for r in rs)
        wall = statistics.median(float(r["wall_s"]) for r in rs)
        ratios = [r["cpu_ratio"] for r in rs if r.get("cpu_ratio")]
        measured = f"; cpu/delivery ratio median {statistics.median(ratios):.3f}" if ratios else ""
        second = sum(r.get("rounds") == 2 for r in rs)
        print(f"{kind}: {len(rs)} trials, regression {c[1]}, inconclusive {c[2]}, pass {c[0]}, "
              f"harness error {c[3]}; median wall {wall:.0f} s{measured}; "
              f"{second} needed a second round")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.regress.validate",
                                description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--trials", type=int, default=10, help="trials of each kind")
    p.add_argument("--slowdown", type=float, default=0.20,
                   help="the injected share of the server CPU per broker message")
    # one transport: the knob's share is calibrated on that transport's cost
    p.add_argument("--transport", default="ws", choices=TRANSPORTS,
                   help="the transport checked (the trials pass --transports to regress)")
    p.add_argument("--out", type=Path, default=Path("results/regress-validation.jsonl"),
                   help="the trials, one JSON line each; their verdicts beside it")
    p.add_argument("--report", action="store_true",
                   help="only summarize the trials already in --out")
    p.add_argument("regress_args", nargs="*", help="extra `rtbench regress` options (after --)")
    args = p.parse_args(argv)
    if args.report:
        report([orjson.loads(line) for line in args.out.read_bytes().splitlines() if line])
        return 0
    plan = Plan(transports=(args.transport,))
    cost = per_message_cost_us(plan)
    inject = cost * args.slowdown
    print(f"server CPU per broker message {cost:.0f} µs; injecting {inject:.0f} µs "
          f"({args.slowdown:.0%})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for i in range(args.trials):
        for kind in ("power", "identical"):
            r = trial(kind, i + 1, inject, args.out,
                      ["--transports", args.transport, *args.regress_args])
            results.append(r)
            with open(args.out, "ab") as f:
                f.write(orjson.dumps({"trial": i + 1, "cost_us": round(cost, 1), **r}) + b"\n")
            print(f"trial {i + 1} {kind}: exit {r['exit_code']} in {r['wall_s']} s "
                  f"(cpu ratio {r.get('cpu_ratio') or float('nan'):.3f}, "
                  f"load {r['loadavg_1m']})", flush=True)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
