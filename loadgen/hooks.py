"""Locust glue: one `Run` per process, wired to Locust's events.

Data flow (the same code for local, `--processes N` and master/worker runs):
- every process records into its `Recorder`;
- workers attach `Recorder.take_delta()` to each `report_to_master`; the master
  merges them (`worker_report`) into its `Collector` as they come, which is what
  live decisions (broadcast steps) read;
- when a worker's users have stopped (its `test_stop`) it sends one
  `rtbench_final` message: the last delta plus its ledger (publisher logs and
  receiver windows). A headless master stops before its workers do, so at its
  own `test_stop` it asks every worker that has not reported yet
  (`rtbench_flush`) and waits for them, at most FINAL_TIMEOUT seconds;
- the master (or the local runner) judges deliveries, writes the result file
  and, on `quitting`, sets the exit code of an invalid run.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import gevent
from gevent.event import Event
from locust import events as _locust_events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadgen import result as result_mod
from loadgen import saturation, scrape
from loadgen.locuststats import StatsBatch
from loadgen.measure import now_us
from loadgen.options import Params, add_options
from loadgen.recorder import NEVER, Collector, Recorder
from servers import fdtable

log = logging.getLogger("rtbench.loadgen")

FINAL_TIMEOUT = 30.0
events: Any = _locust_events  # Locust's EventHook methods are untyped
Extra = Callable[["Run"], dict[str, Any]]


class Run:
    """This process's view of the current test."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.env: Environment | None = None
        self.params: Params | None = None
        self.recorder = Recorder()
        self.collector = Collector()
        self.stop = Event()
        self.started_us = 0
        self.publish_until_us = 0
        self.steps: list[dict[str, Any]] = []
        # this process's publishers' schedules, and the rate the capacity ramp set (None:
        # --publish-rate); see set_publish_rate
        self.schedules: list[Any] = []
        self.publish_rate: float | None = None
        self.ramp_end: str | None = None  # why a capacity ramp ended, when no step says it
        self.extras: list[Extra] = []
        self.on_start: list[Callable[[Run], None]] = []
        self.result: dict[str, Any] | None = None
        # every open client, so that test_stop can close those of users whose on_start
        # failed half-way (Locust then skips on_stop): a gRPC channel left open keeps
        # the process from exiting
        self.open_clients: set[Any] = set()
        self.result_path: Path | None = None
        self.hosts: dict[str, dict[str, Any]] = {}
        self._finals: set[str] = set()
        self._reporters: set[str] = set()
        self._final_sent = False
        self._index = itertools.count()
        self._monitors: list[gevent.Greenlet] = []
        self.batch: StatsBatch | None = None
        # judge the saturation signals while users spawn too (connections: spawning is
        # what it measures); otherwise the judged window opens once spawning completes
        self.judge_spawn = False
        self.gc_watch: saturation.GcWatch | None = None
        self._next_connect = 0.0
        short = re.sub(r"[^A-Za-z0-9_.-]", "", socket.gethostname().split(".")[0])[:20]
        self.tag = f"{short or 'host'}-{os.getpid()}"

    # ---------------------------------------------------------------- users

    @property
    def p(self) -> Params:
        if self.params is None:
            raise RuntimeError("rtbench options not parsed yet (no test running)")
        return self.params

    def pace_connect(self) -> None:
        """Wait for this connect's slot: connects go out evenly at the spawn rate.

        Locust's dispatcher starts `floor(-r)` users at once every second, so 500
        users' handshakes landed on the hub together and the canary waited 20-35 ms
        behind them (2,000 connections at -r 500, 2026-12-02); spaced 2 ms apart, the
        same connects measure the server's connect time, not a queue of our own
        (results/published/loadgen-stalls-20261202.json)."""
        env = self.env
        rate = float(getattr(env.parsed_options, "spawn_rate", 0) or 0) if env else 0.0
        if rate <= 0:
            return
        now = time.monotonic()
        slot = max(now, self._next_connect)
        self._next_connect = slot + 1.0 / rate
        if slot > now:
            gevent.sleep(slot - now)

    def next_index(self) -> int:
        """Index of a user in this process: spreads users over replicas and rooms."""
        return next(self._index)

    def user_name(self, role: str, index: int) -> str:
        return f"{role}-{self.tag}-{index}"

    def fire(self, request_type: str, name: str, response_time_ms: float, length: int,
             exception: Exception | None = None) -> None:
        """A Locust request: failures fire `events.request` at once; successes too with
        `--request-events on`, or go into Locust's stats in batches (`batched`, the
        default: loadgen/locuststats.py), or nowhere (`off`)."""
        env = self.env
        if env is None:
            return
        if exception is None:
            mode = self.p.request_events
            if mode == "off":
                return
            if mode == "batched":
                if self.batch is None:
                    self.batch = StatsBatch(env.stats)
                self.batch.add(request_type, name, response_time_ms, length)
                return
        request: Any = env.events.request
        request.fire(request_type=request_type, name=name, response_time=response_time_ms,
                     response_length=length, exception=exception, context={})

    # ----------------------------------------------------------- lifecycle

    def _test_start(self, environment: Environment, **_: Any) -> None:
        self.env = environment
        self.params = Params.from_options(cast(argparse.Namespace, environment.parsed_options))
        scrape.use_ca(self.params.ca_file)  # https:// /metrics of servers over TLS
        self.recorder = Recorder()
        self.collector = Collector()
        self.stop = Event()
        self.steps, self.result, self.result_path = [], None, None
        self.schedules, self.publish_rate = [], None
        self.ramp_end = None
        if not isinstance(environment.runner, MasterRunner):
            from loadgen.clients import client_class

            # before the clock starts: a first connect that imports its client stalls the
            # hub ~20 ms, and the full collection before freezing took 16-29 ms
            client_class(self.params.transport, self.params.grpc_client)
            fdtable.grow()
            saturation.freeze_heap()
            saturation.pause_gc()  # until spawning completes (see _spawning_complete)
        self._finals, self._reporters, self._final_sent = set(), set(), False
        self.started_us = now_us()
        run_time = self.params.run_time
        self.publish_until_us = (self.started_us + int((run_time - self.params.drain) * 1e6)
                                 if run_time else 1 << 62)
        self.recorder.warmup_until_us = self.started_us + int(self.params.warmup * 1e6)
        # opens after warm-up, and (unless spawning is judged) once spawning completes
        self.recorder.judge_from_us = (self.recorder.warmup_until_us if self.judge_spawn
                                       else NEVER)
        self.recorder.judge_until_us = self.publish_until_us if run_time else NEVER
        self.hosts = {}
        self.extras = []
        if not isinstance(environment.runner, MasterRunner):
            self.hosts[self.recorder.host] = result_mod.host_metadata()
            self._monitors = saturation.start_monitor(self.recorder, self.stop, self.gc_watch)
            self.batch = None
            if self.params.request_events == "batched":
                self.batch = StatsBatch(environment.stats)
                self._monitors.append(self.batch.run(self.stop))
        for hook in self.on_start:
            hook(self)

    def _spawning_complete(self, **_: Any) -> None:
        """Spawning is over: what is alive now lives to the end (the clients), so it is
        frozen out of later collections; the judged window opens (unless it judges spawn)."""
        if self.params is None or isinstance(self.env and self.env.runner, MasterRunner):
            return
        rec = self.recorder
        now = now_us()
        judged_now = rec.in_window(now) and self.judge_spawn
        # no full collection inside a judged window: what spawning left is frozen as it is
        saturation.freeze_heap(collect=not judged_now)
        saturation.resume_gc()
        if not self.judge_spawn and rec.judge_from_us >= NEVER:
            rec.judge_from_us = max(rec.warmup_until_us, now_us())

    def _test_stopping(self, **_: Any) -> None:
        """Users are about to be stopped: the judged window closes (teardown is not judged)."""
        rec = self.recorder
        rec.judge_until_us = min(rec.judge_until_us, now_us())

    def _test_stop(self, environment: Environment, **_: Any) -> None:
        if self.params is None:
            return
        self._test_stopping()
        saturation.resume_gc()
        self.stop.set()
        if self.gc_watch is not None:
            self.gc_watch.drain_into(self.recorder)
        if self.batch is not None:
            self.batch.flush()  # before Locust's final stats report
        for client in list(self.open_clients):
            self.recorder.count("clients_closed_at_stop")
            client.close()
        self.open_clients.clear()
        runner = environment.runner
        if isinstance(runner, WorkerRunner):
            if not self._final_sent:
                self._final_sent = True
                runner.send_message("rtbench_final", self._final_payload())
            return
        if isinstance(runner, MasterRunner):
            self._await_finals(runner)
        else:
            self.collector.add_delta(self.recorder.take_delta())
            self.collector.add_ledger(self.recorder.take_ledger())
        self._write_result()

    def _final_payload(self) -> dict[str, Any]:
        return {"delta": self.recorder.take_delta(), "ledger": self.recorder.take_ledger(),
                "host": result_mod.host_metadata()}

    def _await_finals(self, runner: MasterRunner) -> None:
        expected = self._reporters | {c.id for c in runner.clients.all}
        for client_id in expected - self._finals:
            runner.send_message("rtbench_flush", None, client_id)
        deadline = time.monotonic() + FINAL_TIMEOUT
        while expected - self._finals and time.monotonic() < deadline:
            gevent.sleep(0.05)
        missing = expected - self._finals
        if missing:
            log.error("no final report from workers %s: the result lacks their data",
                      sorted(missing))

    def _write_result(self) -> None:
        p = self.p
        c = self.collector
        verdict = c.verdict(int(p.drain * 1e6))
        window = saturation.window_summary(
            c, self.recorder, self.started_us, self.judge_spawn, gc.get_freeze_count())
        summary, reasons = saturation.check(
            c.cpu, c.hist("canary_lag"), c.hist("schedule_lag"),
            saturation.Thresholds(max_cpu_percent=p.max_cpu, max_lag_ms=p.max_lag_ms),
            window_s=window["window"]["seconds"])
        summary.update(window)
        extra: dict[str, Any] = {}
        for fn in self.extras:
            extra.update(fn(self))
        self.result = result_mod.build(
            scenario=self.scenario, params=p.to_dict(), collector=c, verdict=verdict,
            saturation=summary, saturation_reasons=reasons, started_us=self.started_us,
            ended_us=now_us(), hosts=list(self.hosts.values()), steps=self.steps, extra=extra)
        path = p.result_file or result_mod.default_path(self.scenario, p.transport)
        self.result_path = result_mod.write(path, self.result)
        v = self.result["validity"]
        d = self.result["delivery"]
        lat = self.result["latency_us"]["all"]["percentiles"]
        log.info("rtbench result %s: expected %d delivered %d missing %d dup %d; p50 %d us "
                 "p99 %d us; valid=%s", self.result_path, d["expected"], d["delivered"],
                 d["missing"], d["duplicates"], lat["p50"], lat["p99"], v["valid"])
        for reason in v["reasons"]:
            log.warning("rtbench: run INVALID: %s", reason)

    def set_publish_rate(self, rate: float | None = None, stop: bool = False) -> None:
        """Every publisher (of every worker) sends at `rate` from now on, or, with `stop`,
        sends nothing more. Used by the capacity ramp (loadgen.steps)."""
        env = self.env
        if env is not None and isinstance(env.runner, MasterRunner):
            env.runner.send_message("rtbench_publish", {"rate": rate, "stop": stop})
            return
        self._apply_publish(rate, stop)

    def _apply_publish(self, rate: float | None, stop: bool) -> None:
        at = now_us()
        if stop:
            self.publish_until_us = min(self.publish_until_us, at)
        elif rate is not None:
            self.publish_rate = rate
        for schedule in self.schedules:
            if stop:
                schedule.stop_at(at)
            elif rate is not None:
                schedule.set_rate(rate, at)

    def _on_publish(self, environment: Environment, msg: Any, **_: Any) -> None:
        self._apply_publish(msg.data.get("rate"), bool(msg.data.get("stop")))

    def pull_local(self) -> None:
        """Local runner: move this process's samples into the collector (live decisions)."""
        env = self.env
        if env is not None and not isinstance(env.runner, MasterRunner | WorkerRunner):
            if self.gc_watch is not None:
                self.gc_watch.drain_into(self.recorder)
            self.collector.add_local(self.recorder)

    # ------------------------------------------------------- distribution

    def _report_to_master(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        if self.params is not None and not self._final_sent:
            data["rtbench"] = self.recorder.take_delta()

    def _worker_report(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        delta = data.get("rtbench")
        if delta is not None:
            self._reporters.add(client_id)
            self.collector.add_delta(delta)

    def _on_final(self, environment: Environment, msg: Any, **_: Any) -> None:
        if msg.node_id in self._finals:
            return
        self._finals.add(msg.node_id)
        self._reporters.add(msg.node_id)
        self.collector.add_delta(msg.data["delta"])
        self.collector.add_ledger(msg.data["ledger"])
        host = msg.data["host"]
        self.hosts[host["hostname"]] = host

    def _on_flush(self, environment: Environment, msg: Any, **_: Any) -> None:
        runner = environment.runner
        if not self._final_sent and runner is not None:
            runner.stop()  # stops users, fires test_stop, which sends rtbench_final

    def _init(self, environment: Environment, **_: Any) -> None:
        # Locust arms its -t timer with gevent.spawn_later, which counts from the hub's
        # cached clock; after a slow start-up that clock can be seconds stale and the
        # run would end before any user starts
        import gevent

        gevent.get_hub().loop.update_now()
        self.env = environment
        apply_defaults(self.scenario, environment)
        if self.gc_watch is None and not isinstance(environment.runner, MasterRunner):
            self.gc_watch = saturation.GcWatch().install()
        runner = environment.runner
        if isinstance(runner, MasterRunner):
            runner.register_message("rtbench_final", self._on_final)
        elif isinstance(runner, WorkerRunner):
            runner.register_message("rtbench_flush", self._on_flush)
            runner.register_message("rtbench_publish", self._on_publish)

    def add_init(self, fn: Callable[..., None]) -> None:
        """Run `fn(environment=...)` at Locust's `init` (options parsed, runner created)."""
        events.init.add_listener(fn)

    def _quitting(self, environment: Environment, **_: Any) -> None:
        if self.result is None or self.params is None:
            return
        if not self.result["validity"]["valid"] and self.params.invalid_exit_code:
            environment.process_exit_code = self.params.invalid_exit_code


_current: Run | None = None

# Users and spawn rate when -u / -r are not given (the web UI's form starts from
# them): what each scenario needs to mean anything, e.g. a broadcast needs a
# publisher and subscribers. Keys are option names, values functions of the options.
SCENARIO_DEFAULTS: dict[str, tuple[Callable[[Any], int], float]] = {
    "broadcast": (lambda o: int(o.publishers) + 20, 10.0),
    "churn": (lambda o: int(o.publishers) + 20, 10.0),
    "chat": (lambda o: 2 * int(o.room_size), 10.0),
    "direct": (lambda o: 20, 10.0),
    "connections": (lambda o: 1000, 100.0),
}


def apply_defaults(scenario: str, environment: Environment) -> None:
    """Fill in what the command line left out: -u and -r from `SCENARIO_DEFAULTS`
    (Locust's own default, one user, cannot run a broadcast), and the host from
    `--servers` (the web UI shows it, and warns about a missing host otherwise)."""
    opts = environment.parsed_options
    if opts is None:
        return
    users, rate = SCENARIO_DEFAULTS.get(scenario, (None, None))
    if users is not None and getattr(opts, "num_users", None) is None:
        opts.num_users = users(opts)
    if rate is not None and getattr(opts, "spawn_rate", None) is None:
        opts.spawn_rate = rate
    servers = [s.strip() for s in (getattr(opts, "servers", "") or "").split(",") if s.strip()]
    if servers and not environment.host:
        environment.host = servers[0]
        opts.host = servers[0]


def install(scenario: str) -> Run:
    """Register rtbench's options and listeners once per process; returns the Run."""
    global _current
    if _current is not None:
        _current.scenario = scenario
        return _current
    run = _current = Run(scenario)
    events.init_command_line_parser.add_listener(add_options)
    events.init.add_listener(run._init)
    events.test_start.add_listener(run._test_start)
    events.test_stop.add_listener(run._test_stop)
    events.test_stopping.add_listener(run._test_stopping)
    events.spawning_complete.add_listener(run._spawning_complete)
    events.report_to_master.add_listener(run._report_to_master)
    events.worker_report.add_listener(run._worker_report)
    events.quitting.add_listener(run._quitting)
    return run


def current() -> Run:
    if _current is None:
        raise RuntimeError("loadgen.hooks.install() has not run (import a scenario locustfile)")
    return _current
