"""`rtbench baseline update`: measure the working tree and store it as results/baseline/.

`rtbench regress` without --base compares against this file. Only trust it on
the machine (cpu model, cores) and parameters that produced it: regress answers
inconclusive otherwise. Refresh it after an accepted improvement or regression.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.compare import EXIT, samples_doc
from bench.regress import BASELINE, Plan, Side, machine_meta, measure
from bench.runs import write_json


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="rtbench baseline", description=__doc__.split("\n")[0])
    p.add_argument("action", choices=("update",))
    p.add_argument("--out", type=Path, default=BASELINE)
    p.add_argument("--transports", default="ws")
    p.add_argument("--samples", type=int, default=Plan.pairs)
    p.add_argument("--broker", default=Plan.broker, choices=("redis", "memory"))
    args = p.parse_args(argv)
    plan = Plan(tuple(args.transports.split(",")), pairs=args.samples, broker=args.broker)
    try:
        raw = measure([Side("head")], plan)
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(f"rtbench baseline: harness error: {exc}", file=sys.stderr)
        return EXIT["error"]
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "samples.json", samples_doc(machine_meta(plan), raw["head"]))
    print(f"baseline written: {args.out / 'samples.json'} ({len(raw['head'])} samples)")
    return 0
