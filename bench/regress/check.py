"""`rtbench regress`: the CI perf check. Base and head measured interleaved in one job.

Every transport by default (ws, sse, longpoll, grpc, one after the other; `--transports`
picks some). The signal (bench/regress/samples.py) is the fanout benchmark's, not a full
`rtbench run`:
one room of N subscribers on one pinned server, an open-loop publisher, and per
sample the server's CPU per delivery (and its inverse, deliveries per CPU
second; bench.harness.cpu's ns process clock), delivery latency percentiles and
lost/duplicated messages. Each side's clients connect and warm up once per
round and stay connected, so a sample is only its measured window (~4.3 s):
reconnecting 100 clients per sample cost ~1 s and added its own noise.

Sides:
- `--base REV`: a `git worktree` of REV in a temp dir. Its servers run from that
  tree (cwd + PYTHONPATH) with THIS venv's interpreter and packages: the check
  measures code changes, not dependency changes (the head's locked deps serve
  both). The load generator is always the head's, so both sides are measured
  by the same instrument.
- `--base-dir PATH`: an existing checkout as base (`.`: the working tree itself,
  which the validation uses for identical-code trials).
- neither: the committed baseline, `results/baseline/samples.json` (see
  `rtbench baseline update`). When it was recorded from a clean tree whose
  revision this repository has, that revision is checked out and measured
  alongside, exactly as `--base REV` (the median CPU per delivery of identical
  code moved from 27.6 to 33.1 µs, 20%, across four runs in 15 minutes on this
  shared machine: stored numbers are a weak reference). Otherwise (or `--stored`) the working tree
  against the stored samples: not interleaved, so only trusted when the
  baseline's machine matches (cpu model, cores, parameters, calibration loop
  within 10%), else inconclusive; compared unpaired (Mann-Whitney).

Method (the data behind each choice: README, "Guarding performance in CI"):
- pairs in the order A B B A A B ...: base and head back to back, judged on the
  per-pair ratios (Wilcoxon signed-rank, Hodges-Lehmann CI; bench.regress.stats), so a
  machine whose load changes between pairs still compares like with like;
- stability: a calibration loop's CPU time before and after each round (see
  CALIBRATION_DRIFT), and per metric the CI against the threshold: a pass must
  rule out twice the threshold, else inconclusive;
- a round that says regression is confirmed, and one that is inconclusive is
  decided, by a second round of the transports that were not a clear pass
  (all of them when the core's speed drifted): the verdict is then on both
  rounds' pairs pooled, and a regression is reported only if it holds there.
Exit codes: 0 pass, 1 confirmed regression, 2 inconclusive, 3 harness error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from bench.cli import Deprecated, HelpFormatter
from bench.harness.cpu import calibrate
from bench.regress.compare import (
    EXIT,
    HarnessError,
    SampleSet,
    compare_sets,
    html_section,
    load_set,
    load_thresholds,
    markdown,
    verdict_json,
    write_outputs,
)
from bench.regress.samples import (
    Plan,
    Side,
    add_plan_args,
    machine_meta,
    measure,
    plan_from_args,
)
from bench.regress.stats import METRICS, Comparison, overall

BASELINE = Path("results/baseline")
# Calibration is CPU time (see `calibrate`): time-sharing barely moves it (wall-clock best
# of 5 on the loaded load core: 44-130 ms over 30 s; CPU time 40-42 ms, one reading 56 ms).
# Paired rounds cancel a steady drift (A B B A) and their CI absorbs bursts, so there a
# drift only notes, up to a core running at half or double speed; unpaired against a
# stored baseline it is the machine's speed that is compared, so 25% is the limit.
CALIBRATION_DRIFT = 0.25
CALIBRATION_DRIFT_PAIRED = 1.0
MIN_SAMPLES = 6  # per side: the signed-rank test cannot reach p < 0.05 on fewer pairs
BASELINE_SPEED = 0.10  # a stored baseline's machine must run the calibration loop within 10%


def baseline_revision(baseline_dir: Path) -> str | None:
    """The stored baseline's git revision if it can be measured alongside the head:
    recorded from a clean tree and present in this repository; else None."""
    try:
        meta = load_set(baseline_dir).metas[0]
    except (HarnessError, IndexError):
        return None
    git = meta.get("git") or {}
    rev = git.get("revision")
    if not isinstance(rev, str) or not rev or git.get("dirty", True):
        return None
    found = subprocess.run(["git", "cat-file", "-e", f"{rev}^{{commit}}"], capture_output=True)
    return rev if found.returncode == 0 else None


def to_set(rows: list[dict[str, Any]], meta: dict[str, Any]) -> SampleSet:
    s = SampleSet(metas=[meta])
    for r in rows:
        s.add(r["transport"], r["scenario"], r["metrics"])
    return s


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="rtbench-base-"))
    path = tmp / "tree"
    res = subprocess.run(["git", "worktree", "add", "--detach", str(path), rev],
                         capture_output=True, text=True)
    if res.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise HarnessError(f"git worktree add {rev}: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _round(sides: Sequence[Side], plan: Plan) -> dict[str, Any]:
    """One measured round: the calibration loop before and after, the samples of every side."""
    from bench.harness.cluster import load_cpus, pin_self

    pin_self(load_cpus())  # calibrate where the load side runs, before and after alike
    c0 = calibrate()
    raw = measure(sides, plan)
    c1 = calibrate()
    return {"calibration_s": [c0, c1], "samples": raw}


def _drift(rounds: Sequence[dict[str, Any]], paired: bool) -> tuple[str | None, bool]:
    """(a note on the core's speed drift or None, whether it makes the check inconclusive)."""
    cal = [c for r in rounds for c in r["calibration_s"]]
    drift = max(cal) / min(cal) - 1
    if drift <= CALIBRATION_DRIFT:
        return None, False
    limit = CALIBRATION_DRIFT_PAIRED if paired else CALIBRATION_DRIFT
    what = f"core speed drifted {drift:.0%} during the check (calibration loop " \
           f"{min(cal) * 1e3:.1f} .. {max(cal) * 1e3:.1f} ms of CPU)"
    if drift > limit:
        return f"{what}: too unstable to judge", True
    return f"{what}: paired samples, judged anyway", False


def evaluate(rounds: Sequence[dict[str, Any]], conf: dict[str, Any],
             baseline: SampleSet | None, meta: dict[str, Any]) -> tuple[str, list[Comparison],
                                                                      list[str]]:
    """The verdict on every round's samples pooled: paired when base was measured alongside."""
    def rows(side: str) -> list[dict[str, Any]]:
        return [row for r in rounds for row in r["samples"].get(side, [])]

    head = to_set(rows("head"), meta)
    base = to_set(rows("base"), meta) if baseline is None else baseline
    comps = compare_sets(base, head, conf, paired=baseline is None)
    if baseline is not None:
        comps = [_warn_only(c) for c in comps]
    note, unstable = _drift(rounds, paired=baseline is None)
    verdict = overall(comps)
    if verdict != "regression" and unstable:
        verdict = "inconclusive"
    return verdict, comps, [note] if note else []


def _warn_only(c: Comparison) -> Comparison:
    """Against stored samples, latency only warns: it measures the load the machine was
    under when each side ran (identical code vs a stored baseline, neighbours busier
    than when it was recorded: p95 +56%, "confirmed" by a second round against the
    same stored samples), not the code."""
    if c.verdict != "regression" or METRICS[c.metric].decisive:
        return c
    return dataclasses.replace(c, verdict="warn", note="stored baseline: latency only warns")


def _unsettled(comps: Sequence[Comparison], plan: Plan) -> tuple[str, ...]:
    """The transports a second round must measure: those whose own verdict is not a pass;
    every one when all passed (the round as a whole was inconclusive: the core's speed
    drifted)."""
    unclear = tuple(t for t in plan.transports
                    if overall([c for c in comps if c.transport == t]) != "pass")
    return unclear or plan.transports


def _regressed(comps: Sequence[Comparison]) -> set[tuple[str, str]]:
    return {(c.transport, c.metric) for c in comps if c.verdict in ("regression", "fail")}


def _baseline_mismatch(baseline: SampleSet, plan: Plan) -> str | None:
    """Why the stored baseline cannot judge this plan, or None. It may hold more
    transports than the plan asks for, not fewer."""
    meta = baseline.metas[0] if baseline.metas else {}
    here = machine_meta(plan)
    stored = dict(meta.get("parameters") or {})
    recorded = stored.pop("transports", [])
    wanted = {k: v for k, v in here["parameters"].items() if k != "transports"}
    fix = "refresh it with `rtbench baseline update` or use --base REV"
    for key, mine, theirs in (("cpu_model", here["cpu_model"], meta.get("cpu_model")),
                              ("cores", here["cores"], meta.get("cores")),
                              ("parameters", wanted, stored)):
        if mine != theirs:
            return (f"baseline {key} {theirs!r} differs from this machine's {mine!r}: "
                    f"not comparable ({fix})")
    missing = [t for t in plan.transports if t not in recorded]
    if missing:
        return (f"baseline has no samples for {', '.join(missing)} (it was recorded for "
                f"{', '.join(recorded) or 'none'}): {fix}, or pass --transports "
                f"{','.join(t for t in plan.transports if t in recorded) or '...'}")
    return None


def _speed_mismatch(baseline: SampleSet) -> str | None:
    """A stored baseline is only comparable on a core as fast as the one that made it."""
    from bench.harness.cluster import load_cpus, pin_self

    stored = (baseline.metas[0] if baseline.metas else {}).get("calibration_s")
    if not stored:
        return None
    pin_self(load_cpus())
    ratio = calibrate() / min(stored)
    if abs(ratio - 1) <= BASELINE_SPEED:
        return None
    return (f"this core runs the calibration loop {ratio - 1:+.0%} vs the baseline's machine: "
            "not comparable (use --base REV, or refresh the baseline here)")


def run_check(plan: Plan, base: Side | None, head: Side, conf: dict[str, Any],
              baseline_dir: Path) -> tuple[str, list[Comparison], list[str], dict[str, Any]]:
    """Round 1; if it says regression (to confirm) or inconclusive (to decide), round 2,
    and the verdict on both rounds pooled. A regression is reported only when the pooled
    samples show it on a metric that regressed in round 1, or from a round 1 that could
    not decide."""
    baseline = None
    sides = [head] if base is None else [base, head]
    if base is None:
        baseline = load_set(baseline_dir)
        mismatch = _baseline_mismatch(baseline, plan) or _speed_mismatch(baseline)
        if mismatch:
            return "inconclusive", [], [mismatch], {}
    meta = machine_meta(plan)
    rounds = [_round(sides, plan)]
    verdict, comps, notes = evaluate(rounds, conf, baseline, meta)
    first = _regressed(comps)
    if verdict in ("regression", "inconclusive"):
        why = "to confirm the regression" if verdict == "regression" else "to decide"
        again = _unsettled(comps, plan)
        print(f"round 1: {verdict}; measuring a second round of {', '.join(again)} {why}",
              file=sys.stderr, flush=True)
        rounds.append(_round(sides, dataclasses.replace(plan, transports=again)))
        v1 = verdict
        verdict, comps, notes = evaluate(rounds, conf, baseline, meta)
        pooled = f"{len(rounds)} rounds pooled"
        if v1 == "regression" and verdict == "regression" and not first & _regressed(comps):
            verdict = "inconclusive"
            notes.append(f"{pooled}: a regression seen in round 1 was not confirmed")
        elif v1 == "regression":
            notes.append(f"{pooled}: round 1's regression "
                         + ("confirmed" if verdict == "regression" else "not confirmed"))
        else:
            notes.append(f"{pooled}: round 1 alone was inconclusive")
    return verdict, comps, notes, {"rounds": rounds}


def parse_env(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HarnessError(f"--*-env {item!r}: expected NAME=VALUE")
        out[key] = value
    return out


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtbench regress", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter,
                                epilog="exit codes: 0 pass, 1 confirmed regression, "
                                       "2 inconclusive, 3 harness error")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--base", metavar="REV",
                   help="git revision to compare against, checked out in a temporary worktree "
                        "(default: the baseline, see --baseline)")
    g.add_argument("--base-dir", type=Path, metavar="PATH",
                   help="existing checkout to compare against (`.`: the working tree itself)")
    p.add_argument("--baseline", type=Path, default=BASELINE, metavar="DIR",
                   help="baseline used without --base/--base-dir: its git revision measured "
                        "alongside when available, else its stored samples")
    p.add_argument("--stored", action="store_true",
                   help="compare with the baseline's stored samples even when its revision "
                        "could be measured alongside (unpaired: weaker on a shared machine)")
    add_plan_args(p)
    p.add_argument("--pairs", type=int, dest="samples", action=Deprecated, new="--samples",
                   help=argparse.SUPPRESS)
    p.add_argument("--head-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for the head's servers, repeatable "
                        "(the validation sets RTBENCH_INJECT_WORK_US)")
    p.add_argument("--base-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for the base's servers, repeatable")
    p.add_argument("--json", type=Path, default=Path("results/regress/verdict.json"),
                   metavar="FILE",
                   help="the JSON verdict; summary.md and summary.html are written beside it")
    p.add_argument("--config", type=Path, default=Path("pyproject.toml"), metavar="FILE",
                   help="pyproject.toml whose [tool.rtbench.regress] sets the thresholds")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    t0 = time.monotonic()
    # CI cancels with SIGTERM: unwind through the context managers (servers, worktree)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.samples < MIN_SAMPLES:
            raise HarnessError(f"--samples must be at least {MIN_SAMPLES} (the signed-rank "
                               "test cannot reach p < 0.05 on fewer pairs)")
        try:
            plan = plan_from_args(args)
        except ValueError as exc:
            raise HarnessError(str(exc)) from exc
        conf = load_thresholds(args.config)
        head = Side("head", None, parse_env(args.head_env))
        base_env = parse_env(args.base_env)
        with contextlib.ExitStack() as stack:
            base: Side | None = None
            rev: str | None = None
            if args.base:
                base = Side("base", stack.enter_context(worktree(args.base)), base_env)
            elif args.base_dir:
                base = Side("base", args.base_dir.resolve(), base_env)
            elif not args.stored and (rev := baseline_revision(args.baseline)):
                base = Side("base", stack.enter_context(worktree(rev)), base_env)
                print(f"base: {args.baseline}'s revision {rev[:12]}, measured alongside",
                      file=sys.stderr, flush=True)
            verdict, comps, notes, raw = run_check(plan, base, head, conf, args.baseline)
            if rev:
                notes.insert(0, f"base: {args.baseline}'s revision {rev[:12]}, measured "
                                "alongside (paired)")
    except (HarnessError, OSError, RuntimeError, TimeoutError, psutil.Error,
            KeyboardInterrupt) as exc:
        print(f"rtbench regress: harness error: {exc}", file=sys.stderr)
        return EXIT["error"]
    finally:
        signal.signal(signal.SIGTERM, previous)
    wall = time.monotonic() - t0
    notes = [*notes, f"{plan.samples} samples per side per round, {wall:.0f} s"]
    md = markdown(comps, verdict, "rtbench regress", notes)
    write_outputs(md, verdict_json(comps, verdict, {"notes": notes, "wall_seconds": wall,
                                                     "plan": plan.params(), **raw}), args.json,
                  html_section(comps, verdict, notes))
    return EXIT[verdict]
