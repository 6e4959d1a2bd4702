"""`rtbench baseline update`: measure the working tree and store it as results/baseline/.

`rtbench regress` without --base compares against `results/baseline/samples.json`
(the fanout samples of every transport, the machine's metadata and the calibration
loop's CPU time: a few KiB, committed). Only trust it on the machine (cpu model,
cores, core speed within 10%) and parameters that produced it: regress answers
inconclusive otherwise, and for a transport it holds no samples of. Refresh it after
an accepted improvement or regression, on the machine CI runs on (the perf
workflow's `update_baseline` dispatch uploads one); on a quiet 2-core machine:

    flock /tmp/rtbench-measure.lock rtbench baseline update   # ~4 minutes, all four
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.cli import HelpFormatter
from bench.harness.cpu import calibrate
from bench.harness.runs import write_json
from bench.regress.check import BASELINE
from bench.regress.compare import EXIT, samples_doc
from bench.regress.samples import (
    Side,
    add_plan_args,
    machine_meta,
    measure,
    plan_from_args,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtbench baseline", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("action", choices=("update",),
                   help="update: measure the working tree, write DIR/samples.json")
    p.add_argument("--out", type=Path, default=BASELINE, metavar="DIR",
                   help="where samples.json goes")
    add_plan_args(p)
    return p


def main(argv: Sequence[str]) -> int:
    from bench.harness.cluster import load_cpus, pin_self

    p = parser()
    args = p.parse_args(argv)
    try:
        plan = plan_from_args(args)
    except ValueError as exc:
        p.error(str(exc))
    try:
        pin_self(load_cpus())  # the calibration loop runs where regress will run it
        c0 = calibrate()
        raw = measure([Side("head")], plan)
        c1 = calibrate()
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(f"rtbench baseline: harness error: {exc}", file=sys.stderr)
        return EXIT["error"]
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {**machine_meta(plan), "calibration_s": [c0, c1]}
    write_json(args.out / "samples.json", samples_doc(meta, raw["head"]))
    print(f"baseline written: {args.out / 'samples.json'} ({len(raw['head'])} samples)")
    if meta["git"]["dirty"]:
        print("warning: servers/, loadgen/ or bench/ has uncommitted changes, so the recorded "
              "revision is not what was measured: `rtbench regress` will use the stored "
              "samples (unpaired) until a baseline is recorded from a clean tree",
              file=sys.stderr)
    return 0
