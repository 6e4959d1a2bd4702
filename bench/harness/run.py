"""`rtbench run`: every scenario against every transport, then the report.

For each transport a cluster of `--replicas` server processes (pinned to core
0, sharing one Redis) is started and health-checked; each scenario then runs as
a headless Locust subprocess pinned to the other core(s), with the same
parameters for every transport. While it runs, a sampler thread reads the
servers' CPU time and RSS; /metrics is scraped before and after. A replica that
dies ends its scenario (marked `crashed`) and the cluster is restarted for the
next one.

No orphans: Locust runs in its own session and is killed as a group; servers
and Redis are stopped in `finally` blocks; SIGTERM and SIGHUP are turned into
an exception so those blocks run, and further signals are ignored while
cleaning up. The harness never imports Locust (gevent would patch asyncio).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from bench import ROOT
from bench.cli import HelpFormatter
from bench.harness import plan as plan_mod
from bench.harness import runs
from bench.harness.cluster import SERVER_CPU, Cluster, load_cpus, pin_self
from bench.harness.procs import Interrupted, affinity, signals_ignored, signals_raise, stop_group
from bench.harness.progress import Progress
from bench.harness.sampler import Sampler, Watched, parse_prom, tcp_passive_opens
from servers.testing import REDIS_HINT, MissingRedis, RedisServer

LOCUST_GRACE = 15.0  # beyond -t: Locust's own stop, result judging and writing (at least)
EXIT_INTERRUPTED = 130


class Harness:
    def __init__(self, args: argparse.Namespace, run_dir: Path, steps: list[plan_mod.Step],
                 progress: Progress) -> None:
        self.args = args
        self.run_dir = run_dir
        self.steps = steps
        self.progress = progress
        self.redis: RedisServer | None = None
        self.redis_url: str | None = args.redis_url
        self.cluster: Cluster | None = None
        self.locust: subprocess.Popen[bytes] | None = None
        self.load_cpus = load_cpus()
        self.records: list[dict[str, Any]] = []

    # ------------------------------------------------------------ processes

    def start_redis(self) -> None:
        if self.args.broker != "redis" or self.args.redis_url:
            return
        self.redis = RedisServer().start()
        assert self.redis.proc is not None
        with contextlib.suppress(OSError):
            os.sched_setaffinity(self.redis.proc.pid, {SERVER_CPU})
        self.redis_url = self.redis.url

    def redis_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"private": self.redis is not None, "url": self.redis_url,
                                "version": None}
        if self.redis_url is None:
            return info
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            info["version"] = client.info("server").get("redis_version")
        except redis.RedisError as exc:
            info["error"] = str(exc)
        finally:
            client.close()
        return info

    def start_cluster(self, transport: str) -> Cluster:
        self.stop_cluster()
        self.progress.update("starting servers")
        cluster = Cluster(transport, replicas=self.args.replicas, broker=self.args.broker,
                          redis_url=self.redis_url, server_args=self.args.server_args,
                          cpu=SERVER_CPU)
        self.cluster = cluster  # set before start: a failed start still gets stopped
        cluster.start()
        return cluster

    def stop_cluster(self) -> None:
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            cluster.stop()

    def cleanup(self) -> None:
        with signals_ignored():
            if self.locust is not None:
                stop_group(self.locust)
                self.locust = None
            self.stop_cluster()
            if self.redis is not None:
                self.redis.stop()
                self.redis = None

    # ---------------------------------------------------------------- steps

    def run_all(self) -> None:
        current: str | None = None
        for step in self.steps:
            self.progress.start_step(step.index, f"{step.transport} {step.scenario.name}")
            if self.redis is not None and self.redis.proc is not None \
                    and self.redis.proc.poll() is not None:
                raise RuntimeError(f"the private redis-server exited "
                                   f"({self.redis.proc.returncode}); the run cannot go on")
            record: dict[str, Any]
            try:
                if current != step.transport or self.cluster is None or any(
                        n.proc.poll() is not None for n in self.cluster.nodes):
                    self.start_cluster(step.transport)
                    current = step.transport
                record = self.run_step(step)
                empty = _empty(self.run_dir, record)
                if empty:
                    # once: a Locust that stopped before its users started (see _empty)
                    self.progress.note(f"  retrying {step.transport} {step.scenario.name}: "
                                       f"{empty}")
                    log = self.run_dir / record["log_file"]
                    log.rename(log.with_suffix(".attempt1.log"))
                    record = self.run_step(step, attempt=2)
                    record["first_attempt"] = empty
            except (RuntimeError, TimeoutError, OSError, httpx.HTTPError) as exc:
                # one broken step must not cost the others: note it, next cluster is fresh
                record = self._record(step, "failed", error=f"{type(exc).__name__}: {exc}")
                self.stop_cluster()
            self.records.append(record)
            runs.append_step(self.run_dir, record)
            self.progress.note(_one_line(record))
        self.stop_cluster()

    def _record(self, step: plan_mod.Step, status: str, **extra: Any) -> dict[str, Any]:
        return {"index": step.index, "transport": step.transport,
                "scenario": step.scenario.name, "status": status, "error": None,
                "parameters": step.scenario.to_dict(), **extra}

    def _scrape(self, step: plan_mod.Step, cluster: Cluster, when: str,
                ) -> list[dict[str, float]]:
        out: list[dict[str, float]] = []
        for i, node in enumerate(cluster.nodes):
            if not node.metrics_url:
                out.append({})
                continue
            try:
                text = httpx.get(node.metrics_url, timeout=5).text
            except httpx.HTTPError:
                out.append({})
                continue
            (self.run_dir / "metrics" / f"{step.key}-r{i}-{when}.prom").write_text(text)
            out.append(parse_prom(text))
        return out

    def locust_cmd(self, step: plan_mod.Step, cluster: Cluster, result: Path) -> list[str]:
        metrics = ",".join(n.metrics_url or "" for n in cluster.nodes)
        cmd = [sys.executable, "-m", "locust", "-f",
               str(ROOT / "loadgen" / f"{step.scenario.name}.py"),
               "--headless", "--only-summary", "--exit-code-on-error", "0",
               "--transport", step.transport,
               "--servers", ",".join(n.url for n in cluster.nodes),
               "--metrics-urls", metrics, "--result-file", str(result),
               *step.scenario.locust_args()]
        if step.scenario.ramp and SERVER_CPU not in self.load_cpus:
            # the knee's CPU signal: the servers' core, Redis and kernel work included
            cmd += ["--server-cpus", str(SERVER_CPU), "--server-cores", "1"]
        return ["taskset", "-c", ",".join(map(str, self.load_cpus)), *cmd]

    def run_step(self, step: plan_mod.Step, attempt: int = 1) -> dict[str, Any]:
        cluster = self.cluster
        assert cluster is not None
        result = self.run_dir / "loadgen" / f"{step.key}.json"
        log_path = self.run_dir / "logs" / f"{step.key}.log"
        before = self._scrape(step, cluster, "before")
        watched = [Watched(f"r{i}", n.pid, _port(n.url)) for i, n in enumerate(cluster.nodes)]
        if self.redis is not None and self.redis.proc is not None:
            watched.append(Watched("redis", self.redis.proc.pid))
        opens0 = tcp_passive_opens()
        sampler = Sampler(watched).start()
        started = time.time()
        status, error, rc = "ok", None, None
        cmd = self.locust_cmd(step, cluster, result)
        with open(log_path, "wb") as log:
            self.locust = subprocess.Popen(
                cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        placement = {"servers": {f"r{i}": affinity(n.pid) for i, n in enumerate(cluster.nodes)},
                     "redis": affinity(self.redis.proc.pid)
                     if self.redis is not None and self.redis.proc is not None else None,
                     "load_generator": affinity(self.locust.pid)}
        grace = max(LOCUST_GRACE, step.scenario.run_time / 4)
        deadline = time.monotonic() + step.scenario.run_time + grace
        try:
            while True:
                self.progress.update("load")
                try:
                    rc = self.locust.wait(0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if sampler.dead is not None:
                    status = "crashed"
                    error = f"{sampler.dead} exited during the scenario"
                    break
                if time.monotonic() > deadline:
                    status, error = "timeout", f"Locust still running {grace:.0f}s after " \
                                               "its run time; stopped"
                    break
        finally:
            stop_group(self.locust)
            self.locust = None
            sampler.stop()
        ended = time.time()
        opens1 = tcp_passive_opens()
        self.progress.update("collecting")
        if sampler.dead is not None and status == "ok":
            status, error = "crashed", f"{sampler.dead} exited during the scenario"
        if status == "crashed":
            codes = [f"r{i} exit code {n.proc.returncode}" for i, n in enumerate(cluster.nodes)
                     if n.proc.poll() is not None]
            error = f"{error} ({', '.join(codes)})" if codes else error
        after = self._scrape(step, cluster, "after")
        _write_samples(self.run_dir, step, sampler, attempt)
        if not result.exists() and status == "ok":
            status, error = "failed", f"Locust exited with {rc} and wrote no result; see " \
                                      f"{log_path.relative_to(self.run_dir)}"
        roles = [w.role for w in watched]
        return self._record(
            step, status, error=error, rc=rc, attempt=attempt, started=started, ended=ended,
            wall_s=round(ended - started, 3),
            result_file=str(result.relative_to(self.run_dir)) if result.exists() else None,
            log_file=str(log_path.relative_to(self.run_dir)), locust_cmd=cmd,
            replicas=[{"url": n.url, "pid": n.pid, "metrics_url": n.metrics_url}
                      for n in cluster.nodes],
            placement=placement,
            cpu_s={r: sampler.cpu_delta(r) for r in roles},
            rss_max={r: sampler.rss_max(r) for r in roles},
            tcp_peers={r: sampler.peers(r) for r in roles if r != "redis"},
            tcp_passive_opens=opens1 - opens0 if opens0 is not None and opens1 is not None
            else None,
            metrics_delta=_metrics_delta(before, after))


def _port(url: str) -> int | None:
    return urlsplit(url).port


def _metrics_delta(before: list[dict[str, float]], after: list[dict[str, float]],
                   ) -> dict[str, float]:
    """Counter increase over the scenario, summed over replicas (rtbench_* only)."""
    out: dict[str, float] = {}
    for b, a in zip(before, after, strict=False):
        for name, value in a.items():
            if name.startswith("rtbench_") and name in b:
                out[name] = out.get(name, 0.0) + value - b[name]
    return out


def _write_samples(run_dir: Path, step: plan_mod.Step, sampler: Sampler, attempt: int) -> None:
    path = run_dir / "process_stats.csv"
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write("step,attempt,transport,scenario,role,pid,t,cpu_s,rss\n")
        for s in sampler.samples:
            f.write(f"{step.index},{attempt},{step.transport},{step.scenario.name},{s.role},"
                    f"{s.pid},{s.t},{s.cpu_s},{s.rss}\n")


def _empty(run_dir: Path, record: dict[str, Any]) -> str | None:
    """Why a finished step measured nothing at all (None if it measured something).

    Seen on a loaded machine: Locust arms its -t timer against gevent's cached
    loop time; when its start-up imports took longer than -t, the timer fires at
    once and the run stops before any user started.
    """
    if record["status"] != "ok" or not record.get("result_file"):
        return None
    try:
        res = orjson.loads((run_dir / record["result_file"]).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if record["scenario"] == "connections":
        return None if res.get("counters", {}).get("connects") else "no connection was opened"
    return None if res.get("delivery", {}).get("expected") else "no delivery was judged"


def _one_line(r: dict[str, Any]) -> str:
    mark = {"ok": "done", "crashed": "CRASHED", "failed": "FAILED", "timeout": "TIMEOUT"}
    text = f"  {mark.get(r['status'], r['status'])}: {r['transport']} {r['scenario']}"
    if r.get("wall_s") is not None:
        text += f" ({r['wall_s']:.1f}s)"
    if r.get("error"):
        text += f" - {r['error']}"
    return text


# ------------------------------------------------------------------ command


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rtbench run", formatter_class=HelpFormatter,
        description="Run every scenario against every transport and write the report.")
    size = p.add_argument_group("profile (one of)").add_mutually_exclusive_group()
    size.add_argument("--quick", dest="profile", action="store_const", const="quick",
                      help="about 3 minutes on a 2-core machine (the default)")
    size.add_argument("--full", dest="profile", action="store_const", const="full",
                      help="about 30 minutes: larger populations, longer steady states")
    size.add_argument("--smoke", dest="profile", action="store_const", const="smoke",
                      help="a few seconds per scenario: checks that the harness and every "
                           "scenario work (its numbers mean nothing)")
    p.set_defaults(profile="quick")
    p.add_argument("--transports", default="all", metavar="LIST",
                   help=f"comma-separated subset of {','.join(plan_mod.TRANSPORTS)}, or all")
    p.add_argument("--scenarios", default="all", metavar="LIST",
                   help=f"comma-separated subset of {','.join(plan_mod.SCENARIOS)}, or all")
    p.add_argument("--replicas", type=int, default=2, help="server replicas per transport")
    p.add_argument("--broker", choices=("redis", "memory"), default="redis",
                   help="memory: no Redis, one replica (labelled single-node in the report)")
    p.add_argument("--redis-url", default=None, metavar="URL",
                   help="use this Redis instead of starting a private redis-server")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="seconds per scenario (default: the profile's)")
    p.add_argument("--server-args", default="", metavar="ARGS",
                   help="extra `rtbench serve` flags for every replica, one quoted string "
                        "(default: none)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="run directory (default: a new results/<run-id>/)")
    p.add_argument("--no-report", action="store_true",
                   help="skip rendering the report (`rtbench report DIR` renders it later)")
    return p


def _check(args: argparse.Namespace) -> list[plan_mod.Step]:
    if args.replicas < 1:
        raise ValueError("--replicas must be at least 1")
    if args.broker == "memory" and args.replicas != 1:
        # replicas with in-process brokers do not see each other's messages
        args.replicas = 1
    args.server_args = shlex.split(args.server_args)
    transports = plan_mod.parse_list(args.transports, plan_mod.TRANSPORTS)
    scenarios = plan_mod.parse_list(args.scenarios, plan_mod.SCENARIOS)
    return plan_mod.build(args.profile, transports, scenarios, args.duration)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        steps = _check(args)
    except ValueError as exc:
        print(f"rtbench run: {exc}", file=sys.stderr)
        return 2
    fresh = args.out is None or not args.out.exists()
    run_dir = runs.make_run_dir(args.out, args.profile)
    params = {"profile": args.profile, "transports": sorted({s.transport for s in steps},
                                                           key=plan_mod.TRANSPORTS.index),
              "scenarios": [n for n in plan_mod.SCENARIOS
                            if any(s.scenario.name == n for s in steps)],
              "replicas": args.replicas, "broker": args.broker,
              "single_node": args.broker == "memory" or args.replicas == 1,
              "duration": args.duration, "server_args": args.server_args,
              "redis_url_given": bool(args.redis_url),
              "scenario_parameters": {s.scenario.name: s.scenario.to_dict() for s in steps}}
    meta = runs.base_meta(run_dir.name, argv, params)
    progress = Progress([plan_mod.planned_seconds(s) for s in steps])
    harness = Harness(args, run_dir, steps, progress)
    t0 = time.monotonic()
    code = 0
    print(f"rtbench run: {len(steps)} steps, about {_eta(steps)} -> {run_dir}", flush=True)
    try:
        with signals_raise():
            try:
                harness.start_redis()
                meta["redis"] = harness.redis_info()
                meta["placement"] = {
                    "servers": [SERVER_CPU], "redis": [SERVER_CPU] if harness.redis else None,
                    "load_generator": harness.load_cpus, "harness": harness.load_cpus,
                    "shared_core": SERVER_CPU in harness.load_cpus}
                runs.write_json(run_dir / "meta.json", meta)
                pin_self(harness.load_cpus)
                harness.run_all()
                meta["status"] = "complete"
            finally:
                harness.cleanup()
    except MissingRedis:
        print(f"rtbench run: {REDIS_HINT}", file=sys.stderr)
        meta["status"], code = "failed", 2
    except (KeyboardInterrupt, Interrupted) as exc:
        progress.close()
        print(f"\nrtbench run: interrupted ({exc or 'SIGINT'}); servers stopped, "
              f"partial results in {run_dir}", file=sys.stderr)
        meta["status"], code = "interrupted", EXIT_INTERRUPTED
    except RuntimeError as exc:
        progress.close()
        print(f"rtbench run: {exc}", file=sys.stderr)
        meta["status"], code = "failed", 1
    progress.close()
    meta["finished_utc"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    meta["wall_seconds"] = round(time.monotonic() - t0, 1)
    runs.write_json(run_dir / "meta.json", meta)
    if code == 2 and not harness.records:
        if fresh:  # nothing ran: leave no empty run behind
            shutil.rmtree(run_dir, ignore_errors=True)
        return code
    if not args.no_report and harness.records:
        from bench.report import render

        summary = render.render(run_dir)
        print(summary)
        print(f"\nreport: {run_dir / 'report.html'}  (wall time {meta['wall_seconds']:.0f}s)")
    if code == 0 and any(r["status"] != "ok" for r in harness.records):
        code = 1
    return code


def _eta(steps: list[plan_mod.Step]) -> str:
    seconds = sum(plan_mod.planned_seconds(s) for s in steps) + 2 * len(
        {s.transport for s in steps})
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
