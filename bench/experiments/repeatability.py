"""How far repeated runs agree: the knees, validity and CPU per delivery of several runs.

    python -m bench.experiments.repeatability results/RUN1 results/RUN2 results/RUN3 \\
        [--json results/published/repeatability-YYYYMMDD.json]

Reads each run's `headline.csv` and `summary.csv` (what `make bench` wrote) and,
per target, gives every run's `max_deliveries_per_s`, the spread
(max - min) / min in %, how each knee was read (loadgen/knee.py: `cpu fit` or
`best step`), the server core's speed around each ramp (a fixed loop's CPU ms,
bench.harness.cpu.core_speed) and every ramp step (offered, delivered, server
CPU, CPU per delivery), so a spread can be traced to the machine's speed, the
server's cost or the ramp. The speed-adjusted spread (each knee x its core's
loop time) is a diagnostic of the machine's share of a spread, never the bar.
Exit 1 when a summary row or a headline row is not valid, a knee is missing, or a
spread passes `--max-spread` (15 %: issue 11's bar), so it can gate a script.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.experiments.output import write_json
from bench.harness.runs import load_run


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _ramp(run_dir: Path, transport: str, stack: str) -> dict[str, Any]:
    run = load_run(run_dir)
    res = run.result("broadcast", transport, stack) or {}
    speed = next((r.get("core_speed_s") for r in run.steps
                  if r.get("scenario") == "broadcast" and r.get("transport") == transport
                  and (r.get("stack") or stack) == stack), None)
    core_ms = [round(float(v) * 1000, 2) for v in (speed or {}).values() if v is not None]
    ramp = res.get("extra", {}).get("ramp") or {}
    steps = [{k: s.get(k) for k in ("step", "offered_per_s", "delivered_per_s",
                                     "server_cpu_percent", "server_cpu_us_per_delivery")}
             for s in res.get("steps", []) if "delivered_per_s" in s]
    return {"knee_method": ramp.get("knee_method"), "cpu_fit": ramp.get("cpu_fit"),
            "core_speed_ms": core_ms or None, "steps": steps}


def spread(values: Sequence[float]) -> float:
    """(max - min) / min, in %."""
    return round(100 * (max(values) - min(values)) / min(values), 1)


def _adjusted(runs: Sequence[dict[str, Any]]) -> float | None:
    """The knees' spread once each is scaled by its run's server core speed (knee x the
    fixed loop's mean ms around the ramp): a diagnostic of how much of a spread the
    machine's speed explains, never the bar."""
    scaled = []
    for r in runs:
        knee, ms = r["headline"].get("max_deliveries_per_s"), r.get("core_speed_ms")
        if not knee or not ms:
            return None
        scaled.append(float(knee) * sum(ms) / len(ms))
    return spread(scaled) if len(scaled) > 1 else None


def compare(runs: Sequence[Path], max_spread: float) -> tuple[dict[str, Any], list[str]]:
    """The comparison document and the list of what fails the bar."""
    problems: list[str] = []
    per_target: dict[str, dict[str, Any]] = {}
    doc_runs = []
    for run_dir in runs:
        summary = _csv(run_dir / "summary.csv")
        bad = [f"{r['scenario']} {r['transport']}" for r in summary if r.get("valid") != "True"]
        problems += [f"{run_dir.name}: summary row not valid: {b}" for b in bad]
        doc_runs.append({"run": run_dir.name, "summary_rows": len(summary),
                         "summary_rows_valid": len(summary) - len(bad), "invalid": bad})
        for row in _csv(run_dir / "headline.csv"):
            key = f"{row['transport']} \u00b7 {row.get('stack') or '-'}"
            t = per_target.setdefault(key, {"knees": [], "cpu_us_per_delivery": [],
                                            "runs": []})
            knee = row.get("max_deliveries_per_s")
            if row.get("knee_reached") != "True" or not knee:
                problems.append(f"{run_dir.name}: {key}: no knee ({row.get('knee_reason')})")
            if row.get("valid") != "True":
                problems.append(f"{run_dir.name}: {key}: headline row not valid")
            if knee:
                t["knees"].append(float(knee))
            if row.get("cpu_us_per_delivery"):
                t["cpu_us_per_delivery"].append(float(row["cpu_us_per_delivery"]))
            t["runs"].append({"run": run_dir.name, "headline": row,
                              **_ramp(run_dir, row["transport"], row.get("stack") or "")})
    for key, t in per_target.items():
        t["spread_percent"] = spread(t["knees"]) if len(t["knees"]) > 1 else None
        t["speed_adjusted_spread_percent"] = _adjusted(t["runs"])
        if t["spread_percent"] is not None and t["spread_percent"] > max_spread:
            problems.append(f"{key}: knees {t['knees']} spread {t['spread_percent']} % "
                            f"> {max_spread:g} %")
    return {"runs": doc_runs, "targets": per_target, "max_spread_percent": max_spread,
            "problems": problems}, problems


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.experiments.repeatability",
                                description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories (results/<run>)")
    p.add_argument("--max-spread", type=float, default=15.0, metavar="PCT",
                   help="largest knee spread accepted, %% of the smallest knee")
    p.add_argument("--json", metavar="FILE", help="write the comparison here")
    args = p.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "headline.csv").is_file()]
    if missing:
        p.error(f"no headline.csv in: {', '.join(missing)}")
    doc, problems = compare(args.runs, args.max_spread)
    for run in doc["runs"]:
        print(f"{run['run']}: {run['summary_rows_valid']}/{run['summary_rows']} summary rows "
              f"valid")
    for key, t in doc["targets"].items():
        methods = ",".join(sorted({str(r["knee_method"]) for r in t["runs"]}))
        print(f"{key:20} knees {[round(k) for k in t['knees']]} spread "
              f"{t['spread_percent']} %  ({methods})  CPU-us/delivery "
              f"{t['cpu_us_per_delivery']}  core ms {[r['core_speed_ms'] for r in t['runs']]}"
              f" (speed-adjusted spread {t['speed_adjusted_spread_percent']} %)")
    for line in problems:
        print("FAIL " + line)
    write_json(args.json, [doc])
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
