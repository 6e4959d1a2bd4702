"""`rtbench regress`: the CI perf check. Base and head measured interleaved in one job.

The signal is the fanout benchmark's (bench/fanout.py), not a full `rtbench run`:
one room of N subscribers on one pinned server, an open-loop publisher, and per
sample the server's CPU per delivery (and its inverse, deliveries per CPU
second), delivery latency percentiles and lost/duplicated messages. One sample
takes ~5 s where a `rtbench run --quick` takes ~170 s, so a check can afford
several interleaved samples per side, which is what makes it trustworthy.

Sides:
- `--base REV`: a `git worktree` of REV in a temp dir. Its servers run from that
  tree (cwd + PYTHONPATH) with THIS venv's interpreter and packages: the check
  measures code changes, not dependency changes (the head's locked deps serve
  both). The load generator is always the head's, so both sides are measured
  by the same instrument.
- `--base-dir PATH`: an existing checkout as base (`.`: the working tree itself,
  which the validation uses for identical-code trials).
- neither: the working tree against `results/baseline/samples.json` (see
  `rtbench baseline update`); not interleaved, so only trusted when the
  baseline's machine matches (cpu model, cores, parameters), else inconclusive.

Order A B B A A B ... (pairs), calibration loop timed before and after (a
machine whose speed drifted > 25% meanwhile answers inconclusive), spread
checked per metric (bench.stats), and a regression is re-measured once and only
reported when the rerun agrees. Exit codes: 0 pass, 1 confirmed regression,
2 inconclusive, 3 harness error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.compare import (
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
from bench.stats import Comparison, overall

BASELINE = Path("results/baseline")
SCENARIO = "fanout"
CALIBRATION_DRIFT = 0.25  # 18-19% seen between calibrations on this shared 2-core box


@dataclass(frozen=True)
class Plan:
    transports: tuple[str, ...] = ("ws",)
    # light enough that the load side (one core) is far from saturation: its
    # latency figures otherwise measure the load generator (spread > 100% seen
    # at 200 x 50/s)
    subscribers: int = 100
    rate: float = 20.0
    seconds: float = 4.0
    warmup: float = 1.0
    pairs: int = 5
    broker: str = "redis"

    def params(self) -> dict[str, Any]:
        return {"transports": list(self.transports), "subscribers": self.subscribers,
                "rate": self.rate, "seconds": self.seconds, "warmup": self.warmup,
                "broker": self.broker, "scenario": SCENARIO}


@dataclass
class Side:
    name: str
    tree: Path | None = None  # None: this process's own code
    env: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def _side_env(side: Side) -> Iterator[None]:
    """While a side's servers start: its tree first on the path, its extra env set."""
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    try:
        os.environ.update(side.env)
        if side.tree is not None:
            # `python -m servers.serve` puts its cwd first on sys.path
            os.environ["PYTHONPATH"] = str(side.tree)
            os.chdir(side.tree)
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


async def _sample(url: str, transport: str, node_cpu: Any, plan: Plan) -> dict[str, float]:
    """One measurement on a running server: connect, warm up, publish, drain, close."""
    from bench.fanout import Sink, _connect_many, _drain, _publish
    from loadgen.aio import connect
    from servers.core.auth import DEV_SECRET, make_token

    opts: dict[str, Any] = {}
    if transport in ("sse", "longpoll"):
        from loadgen.aio.http11 import Pool

        opts["http"] = Pool()
    sink = Sink()
    subs = await _connect_many(transport, url, plan.subscribers, opts)
    pub = await connect(transport, url, make_token("publisher", DEV_SECRET), **opts)
    try:
        await pub.join("fan")
        for c in (*subs, pub):
            c.on_event = sink
        members = plan.subscribers + 1
        sent = await _publish(pub, plan.rate, plan.warmup, 0)
        await _drain(sink, sent * members, 10)
        cpu0, count0 = node_cpu(), sink.count
        sink.recording = True
        n = await _publish(pub, plan.rate, plan.seconds, sent)
        await _drain(sink, (sent + n) * members, 10)
        cpu = node_cpu() - cpu0
        delivered = sink.count - count0
    finally:
        await asyncio.gather(*(c.close() for c in (*subs, pub)), return_exceptions=True)
        if "http" in opts:
            await opts["http"].aclose()
    expected = n * members
    h = sink.hist
    measured = cpu > 0 and delivered > 0  # else too short for psutil's 10 ms CPU ticks
    return {"cpu_per_delivery": cpu / delivered * 1e6 if measured else float("nan"),
            "throughput": delivered / cpu if measured else float("nan"),
            "p50": h.percentile(50) / 1000, "p95": h.percentile(95) / 1000,
            "p99": h.percentile(99) / 1000,
            "lost": max(0, expected - delivered), "duplicates": max(0, delivered - expected)}


def cpu_clock(pid: int) -> Any:
    """A function giving the CPU seconds `pid` used so far, as finely as the OS allows.

    Linux: the sum of its threads' /proc schedstat run times (nanoseconds). psutil's
    cpu_times tick in 10 ms, which over a 4 s sample of ~0.3 CPU-s is 3-8% of noise
    per sample (measured: cpu/delivery values fell on a 2.5 µs grid) - the same order
    as the 10% threshold. Elsewhere psutil.
    """
    task_dir = Path(f"/proc/{pid}/task")

    def schedstat() -> float:
        total = 0
        for task in task_dir.iterdir():
            with contextlib.suppress(OSError):  # a thread that just ended
                total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9

    try:
        schedstat()
    except (OSError, ValueError, IndexError):
        proc = psutil.Process(pid)
        return lambda: float(sum(proc.cpu_times()[:2]))
    return schedstat


def calibrate(rounds: int = 5) -> float:
    """Seconds of a fixed pure-Python loop (best of `rounds`): the machine's current speed."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        sum(i * i for i in range(1_000_000))
        best = min(best, time.perf_counter() - t0)
    return best


def measure(sides: Sequence[Side], plan: Plan, log: Any = sys.stderr) -> dict[str, list[
        dict[str, Any]]]:
    """Samples per side, interleaved A B B A ...; servers of every side started once."""
    from bench.cluster import Cluster, load_cpus, pin_self

    out: dict[str, list[dict[str, Any]]] = {s.name: [] for s in sides}
    pin_self(load_cpus())
    for transport in plan.transports:
        with contextlib.ExitStack() as stack:
            nodes = {}
            for side in sides:
                with _side_env(side):
                    cl = stack.enter_context(Cluster(transport, broker=plan.broker))
                nodes[side.name] = cl.nodes[0]
            for i in range(plan.pairs):
                order = list(sides) if i % 2 == 0 else list(reversed(sides))
                for side in order:
                    node = nodes[side.name]
                    metrics = asyncio.run(_sample(node.url, transport, cpu_clock(node.pid),
                                                  plan))
                    out[side.name].append({"transport": transport, "scenario": SCENARIO,
                                           "metrics": metrics})
                    print(f"  {transport} {side.name:<4} #{i + 1}: "
                          f"{metrics['cpu_per_delivery']:.2f} µs/delivery, "
                          f"p50 {metrics['p50']:.2f} ms", file=log, flush=True)
    return out


def machine_meta(plan: Plan) -> dict[str, Any]:
    from bench.runs import _git, cpu_model

    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "python": sys.version.split()[0],
            "git": {"revision": _git("rev-parse", "HEAD")}, "parameters": plan.params(),
            "created_unix": int(time.time())}


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


def _round(sides: Sequence[Side], plan: Plan, conf: dict[str, Any],
           baseline: SampleSet | None) -> tuple[list[Comparison], list[str], dict[str, Any]]:
    """One measured comparison: (comparisons, stability notes, raw samples)."""
    from bench.cluster import load_cpus, pin_self

    notes = []
    pin_self(load_cpus())  # calibrate where the load side runs, before and after alike
    c0 = calibrate()
    raw = measure(sides, plan)
    c1 = calibrate()
    drift = abs(c1 / c0 - 1)
    meta = machine_meta(plan)
    head = to_set(raw["head"], meta)
    base = baseline if baseline is not None else to_set(raw["base"], meta)
    comps = compare_sets(base, head, conf)
    if drift > CALIBRATION_DRIFT:
        notes.append(f"machine speed drifted {drift:.0%} during the check (calibration loop "
                     f"{c0 * 1e3:.1f} -> {c1 * 1e3:.1f} ms): too noisy to judge")
    return comps, notes, {"calibration_s": [c0, c1], "samples": raw}


def judge(comps: list[Comparison], notes: list[str]) -> str:
    v = overall(comps)
    if v != "regression" and notes:
        return "inconclusive"
    return v


def _baseline_mismatch(baseline: SampleSet, plan: Plan) -> str | None:
    meta = baseline.metas[0] if baseline.metas else {}
    here = machine_meta(plan)
    for key in ("cpu_model", "cores", "parameters"):
        if meta.get(key) != here[key]:
            return (f"baseline {key} {meta.get(key)!r} differs from this machine's "
                    f"{here[key]!r}: not comparable (refresh it with `rtbench baseline update` "
                    "or use --base REV)")
    return None


def run_check(plan: Plan, base: Side | None, head: Side, conf: dict[str, Any],
              baseline_dir: Path) -> tuple[str, list[Comparison], list[str], dict[str, Any]]:
    baseline = None
    sides = [head] if base is None else [base, head]
    if base is None:
        baseline = load_set(baseline_dir)
        mismatch = _baseline_mismatch(baseline, plan)
        if mismatch:
            return "inconclusive", [], [mismatch], {}
    comps, notes, raw = _round(sides, plan, conf, baseline)
    verdict = judge(comps, notes)
    rounds = [raw]
    if verdict == "regression":
        print("regression seen: measuring once more to confirm", file=sys.stderr, flush=True)
        first = {(c.transport, c.metric) for c in comps if c.verdict in ("regression", "fail")}
        comps2, notes2, raw2 = _round(sides, plan, conf, baseline)
        rounds.append(raw2)
        again = {(c.transport, c.metric) for c in comps2 if c.verdict in ("regression", "fail")}
        if first & again:
            comps, notes = comps2, notes + notes2 + ["confirmed by a second measurement"]
        else:
            comps, verdict = comps2, "inconclusive"
            notes = notes + notes2 + ["a regression seen first was not confirmed on rerun"]
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


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="rtbench regress", description=__doc__.split("\n")[0],
                                epilog="exit codes: 0 pass, 1 confirmed regression, "
                                       "2 inconclusive, 3 harness error")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--base", metavar="REV", help="git revision to compare against")
    g.add_argument("--base-dir", type=Path, help="existing checkout to compare against")
    p.add_argument("--baseline", type=Path, default=BASELINE,
                   help="stored baseline used without --base/--base-dir (default %(default)s)")
    p.add_argument("--transports", default="ws")
    p.add_argument("--pairs", type=int, default=Plan.pairs, help="samples per side per round")
    p.add_argument("--subscribers", type=int, default=Plan.subscribers)
    p.add_argument("--rate", type=float, default=Plan.rate)
    p.add_argument("--seconds", type=float, default=Plan.seconds)
    p.add_argument("--broker", default=Plan.broker, choices=("redis", "memory"))
    p.add_argument("--head-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra env for the head's servers (validation: RTBENCH_INJECT_WORK_US)")
    p.add_argument("--base-env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--json", type=Path, default=Path("results/regress/verdict.json"))
    p.add_argument("--config", type=Path, default=Path("pyproject.toml"))
    args = p.parse_args(argv)
    t0 = time.monotonic()
    # CI cancels with SIGTERM: unwind through the context managers (servers, worktree)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.pairs < 3:
            raise HarnessError("--pairs must be at least 3 (fewer cannot reach significance)")
        plan = Plan(tuple(args.transports.split(",")), args.subscribers, args.rate,
                    args.seconds, pairs=args.pairs, broker=args.broker)
        conf = load_thresholds(args.config)
        head = Side("head", None, parse_env(args.head_env))
        base_env = parse_env(args.base_env)
        with contextlib.ExitStack() as stack:
            base: Side | None = None
            if args.base:
                base = Side("base", stack.enter_context(worktree(args.base)), base_env)
            elif args.base_dir:
                base = Side("base", args.base_dir.resolve(), base_env)
            verdict, comps, notes, raw = run_check(plan, base, head, conf, args.baseline)
    except (HarnessError, OSError, RuntimeError, TimeoutError, psutil.Error,
            KeyboardInterrupt) as exc:
        print(f"rtbench regress: harness error: {exc}", file=sys.stderr)
        return EXIT["error"]
    finally:
        signal.signal(signal.SIGTERM, previous)
    wall = time.monotonic() - t0
    notes = [*notes, f"{plan.pairs} samples per side per round, {wall:.0f} s"]
    md = markdown(comps, verdict, "rtbench regress", notes)
    write_outputs(md, verdict_json(comps, verdict, {"notes": notes, "wall_seconds": wall,
                                                     "plan": plan.params(), **raw}), args.json,
                  html_section(comps, verdict, notes))
    return EXIT[verdict]
