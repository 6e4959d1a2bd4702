"""Capacity steps (broadcast): grow the subscribers step by step until latency or loss says stop.

Each step's numbers come from the collector's step histograms, fed by the
workers' periodic reports (every 3 s in distributed runs, so a step should last
several report intervals) or pulled from this process in a local run. A step
includes its own ramp-up: its latencies are those of a system being joined by
`--step-users` new subscribers, which is the question a capacity curve asks.
"""

from __future__ import annotations

import logging
from typing import Any

from loadgen.measure import now_us

log = logging.getLogger("rtbench.loadgen")


class StepShape:
    """Mixin for a LoadTestShape; `step_tick` is its whole `tick`."""

    use_common_options = True  # -u, -r and -t keep their meaning (see step_tick)
    _step = -1

    def step_tick(self, run: Any, runner: Any, elapsed: float) -> tuple[int, float] | None:
        opts = runner.environment.parsed_options
        pubs = max(1, int(opts.publishers))
        rate = float(opts.spawn_rate or 1)
        if opts.run_time and elapsed >= float(opts.run_time):
            if int(opts.step_users) > 0 and self._step >= 0:
                self._close_step(run, opts)
            return None  # a shape owns the run time: Locust ignores -t when there is one
        if int(opts.step_users) <= 0:
            return int(opts.num_users or pubs + 1), rate
        step = int(elapsed // float(opts.step_seconds))
        subs = int(opts.step_users) * (step + 1)
        if step != self._step:
            if self._step >= 0 and not self._close_step(run, opts):
                return None
            cap = int(opts.num_users or 0) - pubs
            if cap > 0 and subs > cap:
                log.info("rtbench steps: the next step would pass -u (%d subscribers); "
                         "stopping", cap)
                return None
            self._step = step
            run.collector.start_step()
        return pubs + subs, rate

    def _close_step(self, run: Any, opts: Any) -> bool:
        """Record the finished step; False when it crossed a limit (stop stepping)."""
        run.pull_local()
        c = run.collector
        lat = c.step_latency()
        holes = sum(c.holes.values())
        slow = sum(v for k, v in c.step_counters.items() if k == "close:4408")
        point = {
            "step": self._step,
            "subscribers": int(opts.step_users) * (self._step + 1),
            "ended_us": now_us(),
            "deliveries": lat.count,
            "latency_us": lat.to_dict(),
            "holes": holes,
            "slow_consumer_closes": slow,
            "connect_failures": c.step_counters.get("connect_failures", 0),
        }
        run.steps.append(point)
        p99_ms = lat.percentile(99) / 1000
        over = p99_ms > float(opts.p99_limit_ms)
        lost = holes > 0 or slow > 0 or point["connect_failures"] > 0
        log.info("rtbench step %d: %d subscribers, %d deliveries, p99 %.1f ms, holes %d",
                 self._step, point["subscribers"], lat.count, p99_ms, holes)
        if over or lost:
            point["stopped_because"] = (f"p99 {p99_ms:.1f} ms > {opts.p99_limit_ms} ms" if over
                                        else "deliveries missing or connections refused")
            log.info("rtbench steps: stop after step %d: %s", self._step,
                     point["stopped_because"])
            return False
        return True
