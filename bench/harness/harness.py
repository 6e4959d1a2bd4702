"""The processes of `rtbench run` and the loop over its steps.

For each target (a transport on one server stack) a cluster of `--replicas`
server processes (pinned to core 0, sharing one Redis) is started and
health-checked; each scenario then runs as one step (bench.harness.step). A
replica that dies ends its step (marked `crashed`) and the cluster is restarted
for the next one; a step that measured nothing is retried once.

No orphans: Locust runs in its own session and is killed as a group; servers
and Redis are stopped by `cleanup`, which the command calls in a `finally`
block with further signals ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import runs
from bench.harness.cluster import SERVER_CPU, Cluster, load_cpus
from bench.harness.plan import Step, Target
from bench.harness.procs import signals_ignored
from bench.harness.progress import Progress
from bench.harness.step import StepRun, empty, one_line, record
from bench.harness.tls import CertPaths, make_certs
from servers.testing import RedisServer


class Harness:
    def __init__(self, args: argparse.Namespace, run_dir: Path, steps: list[Step],
                 progress: Progress, net: Any = None) -> None:
        self.args = args
        # bench.network.Network (None: loopback): servers and Redis in its server side,
        # Locust in its client side
        self.net = net if net is not None and not net.profile.loopback else None
        self.run_dir = run_dir
        self.steps = steps
        self.progress = progress
        self.redis: RedisServer | None = None
        self.redis_url: str | None = args.redis_url
        self.cluster: Cluster | None = None
        self.current: StepRun | None = None
        self.load_cpus = load_cpus()
        self.records: list[dict[str, Any]] = []
        self.tls: CertPaths | None = None
        self._tls_dir: str | None = None

    def make_certs(self) -> CertPaths:
        """`--tls`: a throwaway CA and server certificate (removed by `cleanup`); the
        replicas serve with it and Locust verifies them against the CA (LOCUST_TLS_CA in
        its environment: loadgen's --tls-ca)."""
        from bench.network import SERVER_ADDR

        self._tls_dir = tempfile.mkdtemp(prefix="rtbench-tls-")
        self.tls = make_certs(self._tls_dir, extra=[SERVER_ADDR])  # a profile's server side
        os.environ["LOCUST_TLS_CA"] = str(self.tls.ca)
        return self.tls

    # ------------------------------------------------------------ processes

    def start_redis(self) -> None:
        if self.args.broker != "redis" or self.args.redis_url:
            return
        self.redis = RedisServer(side=self.net).start()
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
            server = client.info("server") if self.net is None \
                else self.net.call_in_server(client.info, "server")
            info["version"] = server.get("redis_version")
        except redis.RedisError as exc:
            info["error"] = str(exc)
        finally:
            client.close()
        return info

    def start_cluster(self, target: Target) -> Cluster:
        self.stop_cluster()
        self.progress.update("starting servers")
        cluster = Cluster(target.transport, replicas=self.args.replicas, broker=self.args.broker,
                          redis_url=self.redis_url, server_args=self.args.server_args,
                          cpu=SERVER_CPU, stack=target.stack, tls=self.tls, side=self.net)
        self.cluster = cluster  # set before start: a failed start still gets stopped
        cluster.start()
        return cluster

    def stop_cluster(self) -> None:
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            cluster.stop()

    def cleanup(self) -> None:
        with signals_ignored():
            if self.current is not None:
                self.current.stop()
                self.current = None
            self.stop_cluster()
            if self.redis is not None:
                self.redis.stop()
                self.redis = None
            if self._tls_dir is not None:
                shutil.rmtree(self._tls_dir, ignore_errors=True)
                self._tls_dir = None

    # ---------------------------------------------------------------- steps

    def _redis_proc(self) -> subprocess.Popen[bytes] | None:
        return self.redis.proc if self.redis is not None else None

    def run_step(self, step: Step, attempt: int = 1) -> dict[str, Any]:
        assert self.cluster is not None
        self.current = StepRun(self.run_dir, step, self.cluster, self._redis_proc(),
                               self.load_cpus, self.progress, attempt, client=self.net)
        try:
            return self.current.run()
        finally:
            self.current = None

    def run_all(self) -> None:
        current: Target | None = None
        for step in self.steps:
            self.progress.start_step(step.index, f"{step.target.label} {step.scenario.name}")
            proc = self._redis_proc()
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the private redis-server exited ({proc.returncode}); "
                                   "the run cannot go on")
            rec: dict[str, Any]
            try:
                if current != step.target or self.cluster is None or any(
                        n.proc.poll() is not None for n in self.cluster.nodes):
                    self.start_cluster(step.target)
                    current = step.target
                rec = self.run_step(step)
                why = empty(self.run_dir, rec)
                if why:
                    # once: a Locust that stopped before its users started (see `empty`)
                    self.progress.note(f"  retrying {step.target.label} {step.scenario.name}: "
                                       f"{why}")
                    log = self.run_dir / rec["log_file"]
                    log.rename(log.with_suffix(".attempt1.log"))
                    rec = self.run_step(step, attempt=2)
                    rec["first_attempt"] = why
            except (RuntimeError, TimeoutError, OSError) as exc:
                # one broken step must not cost the others: note it, next cluster is fresh
                rec = record(step, "failed", error=f"{type(exc).__name__}: {exc}")
                self.stop_cluster()
            self.records.append(rec)
            runs.append_step(self.run_dir, rec)
            self.progress.note(one_line(rec))
        self.stop_cluster()
