"""The validation run: the selected cases in order, their trials, the JSON rewritten after each."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.experiments.detector.burner import (
    BURNER_LIFETIME,
    MIN_OTHERS_SHARE,
    BurnerError,
    read_rt_throttle,
    rt_throttle_problem,
)
from bench.experiments.detector.cases import Case, build_cases, trial_counts
from bench.experiments.detector.trials import (
    READY_TEXT,
    READY_TIMEOUT,
    TIMEOUT_MARGIN,
    run_trial,
    wait_idle,
)
from bench.experiments.detector.verdicts import TARGETS, all_met, judge, outcome, table, tally

FORMAT = "rtbench.detector_validation"
VERSION = 2


def metadata() -> dict[str, Any]:
    from bench.harness.runs import cpu_model, git_state, package_versions

    return {
        "git": git_state(),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "hostname": platform.node(), "cpu_model": cpu_model(), "cores": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)), "packages": package_versions(),
        "rt_throttling": read_rt_throttle(),
    }


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def validate(args: argparse.Namespace, command: Sequence[str]) -> int:
    """Run the cases `args` selects, write the JSON, print the table; the exit status.

    `command` is the command line's arguments, kept in the JSON.
    """
    from bench.harness.cluster import SERVER_CPU, load_cpus
    from bench.harness.procs import Interrupted, signals_raise

    all_cases = build_cases(args.burners, args.overload_users, args.overload_rate,
                            args.overload_seconds)
    cases = [all_cases[name] for name in args.cases]
    trials = trial_counts(cases, args.light_trials, args.starved_trials, args.shared_trials)
    load_cpu = load_cpus()[0]
    now = dt.datetime.now(dt.UTC)
    out: Path = args.out or (Path("results") / "published"
                             / f"detector-validation-{now:%Y%m%dT%H%M%SZ}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    expect = {c.name: c.expect for c in cases}
    doc: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "status": "running",
        "created_utc": now.isoformat(timespec="seconds"), "finished_utc": None,
        "command": ["python", "-m", "bench.experiments.validate_detector", *command],
        "parameters": {"transport": args.transport, "replicas": 2, "server_cpu": SERVER_CPU,
                       "load_cpu": load_cpu, "trials": trials, "targets": TARGETS,
                       "timeout_margin_s": TIMEOUT_MARGIN, "burner_lifetime_s": BURNER_LIFETIME,
                       "burners_start_on": READY_TEXT.decode(), "ready_timeout_s": READY_TIMEOUT,
                       "min_others_share": MIN_OTHERS_SHARE,
                       "cases": {c.name: {**asdict(c), "locust_args": c.locust_args()}
                                 for c in cases}},
        "metadata": metadata(), "cases": {}, "trials": [], "verdicts": {}, "all_met": False,
    }

    def save() -> None:
        from bench.harness.runs import write_json

        verdicts = {name: judge(t, skipped=doc["cases"].get(name, {}).get("skipped"))
                    for name, t in tally(doc["trials"], expect).items()}
        doc["verdicts"], doc["all_met"] = verdicts, all_met(verdicts)
        write_json(out, doc)

    try:
        with signals_raise(), tempfile.TemporaryDirectory(prefix="rtbench-detector-") as tmp:
            for case in cases:
                _run_case(case, trials[case.name], args.transport, load_cpu, Path(tmp), doc,
                          save)
        doc["status"] = "done"
    except (Interrupted, KeyboardInterrupt) as exc:
        doc["status"] = f"interrupted ({type(exc).__name__} {exc})".strip()
    except Exception as exc:  # a harness failure: keep the trials done so far, say why
        doc["status"] = f"failed: {exc}"
        print(f"validation stopped: {exc}", file=sys.stderr)
    doc["finished_utc"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    save()
    print()
    for line in table(doc["verdicts"]):
        print(line)
    met = doc["all_met"] and doc["status"] == "done"
    print(f"\n{'all targets met' if met else 'targets NOT met'} ({doc['status']}); "
          f"wrote {out}")
    return 0 if met else 1


def _run_case(case: Case, trials: int, transport: str, load_cpu: int, tmp: Path,
              doc: dict[str, Any], save: Callable[[], None]) -> None:
    """One case's trials against its own servers, each recorded in `doc` and saved."""
    from bench.harness.cluster import SERVER_CPU, Cluster

    info: dict[str, Any] = {"loadavg_before": _loadavg()}
    doc["cases"][case.name] = info
    if case.burner_policy == "fifo":
        info["rt_throttling"] = rt = read_rt_throttle()
        problem = rt_throttle_problem(rt, load_cpu)
        if problem:
            info["skipped"] = problem
            print(f"{case.name}: SKIPPED: {problem}", file=sys.stderr, flush=True)
            save()
            return
    t0 = time.monotonic()
    print(f"{case.name}: {trials} trials, locust "
          f"{' '.join(case.locust_args())}", flush=True)
    with Cluster(transport, replicas=2,
                 cpu=SERVER_CPU if case.pin_servers else None) as cluster:
        for i in range(1, trials + 1):
            settle = wait_idle(cluster.nodes)
            dead = [n.url for n in cluster.nodes if n.proc.poll() is not None]
            if dead:
                raise RuntimeError(f"server replica(s) {', '.join(dead)} exited")
            try:
                r = run_trial(case, i, transport, [n.url for n in cluster.nodes],
                              [n.pid for n in cluster.nodes], load_cpu, tmp)
            except BurnerError as exc:  # the same each time: end the case
                info["error"] = str(exc)
                doc["trials"].append({
                    "case": case.name, "trial": i, "status": "burner-error",
                    "rc": None, "valid": None, "saturated": None, "reasons": [],
                    "warnings": [], "error": str(exc), "settle_s": settle})
                save()
                print(f"  {case.name} #{i}: burner error, case ended: {exc}",
                      file=sys.stderr, flush=True)
                break
            r["settle_s"] = settle
            doc["trials"].append(r)
            save()
            print(_trial_line(r), flush=True)
    info["loadavg_after"] = _loadavg()
    info["wall_s"] = round(time.monotonic() - t0, 1)
    save()


def _trial_line(r: dict[str, Any]) -> str:
    """The line printed after a trial: its outcome, the detector's signals, its reasons."""
    sat = r.get("saturation") or {}
    burn = r.get("burners")
    burned = f", burners {burn['sched']} from {burn['started_s']} s" if burn else ""
    return (f"  {r['case']} #{r['trial']}: {outcome(r['valid'])} (rc {r['rc']}, "
            f"{r['status']}, cpu {sat.get('cpu_mean')}%, canary p99 "
            f"{sat.get('canary_p99_us')} us, schedule p99 "
            f"{sat.get('schedule_p99_us')} us{burned}) "
            f"{'; '.join(r['reasons'])}")
