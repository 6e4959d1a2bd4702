"""One step of `rtbench run`: a headless Locust scenario against a running cluster.

While Locust runs (its own session, pinned to the load cores), a sampler
thread reads the replicas' and Redis's CPU time and RSS; each replica's
/metrics is scraped before and after. A replica that dies ends the step
(`crashed`); a Locust that outlives its run time plus a grace is stopped
(`timeout`). The step's record (steps.jsonl) says what ran, where and what it
cost; the load generator's own result is a file next to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from bench import ROOT
from bench.harness.cluster import SERVER_CPU, Cluster
from bench.harness.cpu import core_speed
from bench.harness.plan import Step, label
from bench.harness.procs import affinity, stop_group
from bench.harness.progress import Progress
from bench.harness.runs import stack_of
from bench.harness.sampler import Sampler, Watched, parse_prom, tcp_passive_opens

LOCUST_GRACE = 15.0  # beyond -t: Locust's own stop, result judging and writing (at least)
PROCESS_STATS = "process_stats.csv"
PROCESS_STATS_HEADER = "step,attempt,transport,stack,scenario,role,pid,t,cpu_s,rss\n"


def record(step: Step, status: str, **extra: Any) -> dict[str, Any]:
    """A step's line of steps.jsonl: what ran, how it ended, and `extra`."""
    return {"index": step.index, "transport": step.transport, "stack": step.stack,
            "scenario": step.scenario.name, "status": status, "error": None,
            "parameters": step.scenario.to_dict(), **extra}


class StepRun:
    """Runs `step` once against `cluster`; `stop` ends its Locust from a signal handler's
    cleanup."""

    def __init__(self, run_dir: Path, step: Step, cluster: Cluster,
                 redis: subprocess.Popen[bytes] | None, load_cpus: list[int],
                 progress: Progress, attempt: int = 1, client: Any = None) -> None:
        self.run_dir = run_dir
        self.step = step
        self.cluster = cluster
        self.redis = redis
        self.load_cpus = load_cpus
        self.progress = progress
        self.attempt = attempt
        self.client = client  # bench.network.Network: Locust runs on its client side
        self.locust: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.locust is not None:
            stop_group(self.locust)
            self.locust = None

    def locust_cmd(self, result: Path) -> list[str]:
        step, nodes = self.step, self.cluster.nodes
        metrics = ",".join(n.metrics_url or "" for n in nodes)
        cmd = [sys.executable, "-m", "locust", "-f",
               str(ROOT / "loadgen" / f"{step.scenario.name}.py"),
               "--headless", "--only-summary", "--exit-code-on-error", "0",
               "--transport", step.transport,
               "--servers", ",".join(n.url for n in nodes),
               "--metrics-urls", metrics, "--result-file", str(result),
               *step.scenario.locust_args()]
        if step.scenario.ramp and SERVER_CPU not in self.load_cpus:
            # the knee's CPU signal: the servers' core, Redis and kernel work included
            cmd += ["--server-cpus", str(SERVER_CPU), "--server-cores", "1"]
        cmd = ["taskset", "-c", ",".join(map(str, self.load_cpus)), *cmd]
        return cmd if self.client is None else self.client.client_cmd(cmd)

    def _scrape(self, when: str) -> list[dict[str, float]]:
        out: list[dict[str, float]] = []
        for i, node in enumerate(self.cluster.nodes):
            if not node.metrics_url:
                out.append({})
                continue
            try:
                text = node.get(node.metrics_url, timeout=5)[2]
            except OSError:
                out.append({})
                continue
            (self.run_dir / "metrics" / f"{self.step.key}-r{i}-{when}.prom").write_text(text)
            out.append(parse_prom(text))
        return out

    def _watch(self, sampler: Sampler, deadline: float, grace: float,
               ) -> tuple[str, str | None, int | None]:
        """Wait for Locust: (status, error, its exit code)."""
        assert self.locust is not None
        while True:
            self.progress.update("load")
            try:
                return "ok", None, self.locust.wait(0.5)
            except subprocess.TimeoutExpired:
                pass
            if sampler.dead is not None:
                return "crashed", f"{sampler.dead} exited during the scenario", None
            if time.monotonic() > deadline:
                return "timeout", f"Locust still running {grace:.0f}s after its run time; " \
                                  "stopped", None

    def run(self) -> dict[str, Any]:
        step, cluster = self.step, self.cluster
        result = self.run_dir / "loadgen" / f"{step.key}.json"
        log_path = self.run_dir / "logs" / f"{step.key}.log"
        before = self._scrape("before")
        watched = [Watched(f"r{i}", n.pid, _port(n.url)) for i, n in enumerate(cluster.nodes)]
        if self.redis is not None:
            watched.append(Watched("redis", self.redis.pid))
        speed = {"before": self._core_speed()}
        netns_pid = cluster.nodes[0].pid if cluster.side is not None and cluster.nodes else None
        opens0 = tcp_passive_opens(netns_pid)
        sampler = Sampler(watched).start()
        started = time.time()
        cmd = self.locust_cmd(result)
        with open(log_path, "wb") as log:
            self.locust = subprocess.Popen(
                cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        placement = {"servers": {f"r{i}": affinity(n.pid) for i, n in enumerate(cluster.nodes)},
                     "redis": affinity(self.redis.pid) if self.redis is not None else None,
                     "load_generator": affinity(self.locust.pid)}
        grace = max(LOCUST_GRACE, step.scenario.run_time / 4)
        try:
            status, error, rc = self._watch(
                sampler, time.monotonic() + step.scenario.run_time + grace, grace)
        finally:
            self.stop()
            sampler.stop()
        ended = time.time()
        opens1 = tcp_passive_opens(netns_pid)
        self.progress.update("collecting")
        speed["after"] = self._core_speed()
        if sampler.dead is not None and status == "ok":
            status, error = "crashed", f"{sampler.dead} exited during the scenario"
        if status == "crashed":
            codes = [f"r{i} exit code {n.proc.returncode}" for i, n in enumerate(cluster.nodes)
                     if n.proc.poll() is not None]
            error = f"{error} ({', '.join(codes)})" if codes else error
        after = self._scrape("after")
        self._write_samples(sampler)
        if not result.exists() and status == "ok":
            status, error = "failed", f"Locust exited with {rc} and wrote no result; see " \
                                      f"{log_path.relative_to(self.run_dir)}"
        roles = [w.role for w in watched]
        return record(
            step, status, error=error, rc=rc, attempt=self.attempt, started=started,
            ended=ended, wall_s=round(ended - started, 3),
            result_file=str(result.relative_to(self.run_dir)) if result.exists() else None,
            log_file=str(log_path.relative_to(self.run_dir)), locust_cmd=cmd,
            replicas=[{"url": n.url, "pid": n.pid, "metrics_url": n.metrics_url,
                       "server": n.server} for n in cluster.nodes],
            placement=placement,
            cpu_s={r: sampler.cpu_delta(r) for r in roles},
            rss_max={r: sampler.rss_max(r) for r in roles},
            tcp_peers={r: sampler.peers(r) for r in roles if r != "redis"},
            tcp_passive_opens=opens1 - opens0 if opens0 is not None and opens1 is not None
            else None,
            metrics_delta=_metrics_delta(before, after),
            **({"core_speed_s": speed} if speed["before"] is not None else {}))

    def _core_speed(self) -> float | None:
        """The servers' core's speed (bench.harness.cpu.calibrate) around a capacity ramp,
        whose knee moves with it; None for other scenarios or an unpinned run."""
        if not self.step.scenario.ramp or SERVER_CPU in self.load_cpus:
            return None
        return core_speed(SERVER_CPU)

    def _write_samples(self, sampler: Sampler) -> None:
        path = self.run_dir / PROCESS_STATS
        new = not path.exists()
        step = self.step
        with open(path, "a") as f:
            if new:
                f.write(PROCESS_STATS_HEADER)
            for s in sampler.samples:
                f.write(f"{step.index},{self.attempt},{step.transport},{step.stack},"
                        f"{step.scenario.name},{s.role},{s.pid},{s.t},{s.cpu_s},{s.rss}\n")


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


def empty(run_dir: Path, rec: dict[str, Any]) -> str | None:
    """Why a finished step measured nothing at all (None if it measured something).

    Seen on a loaded machine: Locust arms its -t timer against gevent's cached
    loop time; when its start-up imports took longer than -t, the timer fires at
    once and the run stops before any user started.
    """
    if rec["status"] != "ok" or not rec.get("result_file"):
        return None
    try:
        res = orjson.loads((run_dir / rec["result_file"]).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if rec["scenario"] == "connections":
        return None if res.get("counters", {}).get("connects") else "no connection was opened"
    return None if res.get("delivery", {}).get("expected") else "no delivery was judged"


def one_line(r: dict[str, Any]) -> str:
    """A finished step for the terminal: `done: ws · aiohttp chat (5.8s)`."""
    mark = {"ok": "done", "crashed": "CRASHED", "failed": "FAILED", "timeout": "TIMEOUT"}
    text = f"  {mark.get(r['status'], r['status'])}: {label(r['transport'], stack_of(r))} " \
           f"{r['scenario']}"
    if r.get("wall_s") is not None:
        text += f" ({r['wall_s']:.1f}s)"
    if r.get("error"):
        text += f" - {r['error']}"
    return text
