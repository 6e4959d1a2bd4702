"""Capacity steps (broadcast): raise the offered load step by step until the server's knee.

Two ramps, each a `LoadTestShape` tick (`StepShape.step_tick`):

- **rate ramp** (`--ramp-factor F`, what `rtbench run` uses): every subscriber
  (`-u`) connects first; then each step publishes at a higher rate. A step is
  `--step-settle` seconds that are not judged (the new rate reaches every queue),
  then `--step-seconds` measured: delivery latency (p99), deliveries per second,
  missing messages, the servers' CPU (their /metrics `process_cpu_seconds_total`)
  and the load generator's own saturation signals over that window. The next
  rate aims at the servers' CPU limit from the CPU share just measured (CPU per
  delivery is nearly constant, so rate x limit/share), at most F times and at
  least 1.1 times the last, so the last steps before the knee are fine ones.
- **subscriber ramp** (`--step-users K`): K more subscribers every step, as in
  hashrocket's websocket-shootout; a step includes its own ramp-up.

The ramp stops at the first step that crosses a limit, and says which:
- `load-side limited: ...` the load generator was saturated in the step (its
  latencies describe itself): no knee is claimed;
- `messages lost` (a hole in a stream, a slow consumer closed, a refused connect);
- `p99 X ms > limit`;
- `server fell behind` (delivered under 90 % of the offered rate);
- `server CPU X% >= limit`: the server's core is saturated. With `--server-cpus`
  (servers on this host, pinned: `rtbench run`) that is the busy time of those
  cores from /proc/stat, which counts Redis and the kernel's network work beside
  the replicas; otherwise the replicas' own CPU over `--server-cores` cores.
The last four are the server's knee; a step that crossed only the CPU limit is
measured once more at the same rate (`unconfirmed` in the first one), and the
ramp goes on if the repeat stays under it. After the knee, publishing stops and
the run lasts `--drain` more seconds, so messages already sent are judged.

Each step's numbers come from the collector's step histograms, fed by the
workers' periodic reports (every 3 s in distributed runs, so a step should last
several report intervals) or pulled from this process in a local run.
"""

from __future__ import annotations

import logging
from typing import Any

from loadgen import knee as knee_mod
from loadgen import saturation, scrape
from loadgen.measure import Histogram, now_us

log = logging.getLogger("rtbench.loadgen")

BEHIND = 0.9  # delivered / offered below this: the server is not keeping up
MIN_FACTOR = 1.1  # the smallest rate increase between two steps


def judge_loadgen(c: Any, max_cpu: float, max_lag_ms: float, seconds: float | None = None,
                  ) -> dict[str, Any]:
    """The load generator's saturation signals over the current step (collector `c`)."""
    canary, sched = c.step_hist("canary_lag"), c.step_hist("schedule_lag")
    _, reasons = saturation.check(
        c.step_cpu, canary, sched,
        saturation.Thresholds(max_cpu_percent=max_cpu, max_lag_ms=max_lag_ms, min_samples=1),
        window_s=seconds)
    cpu = [x for samples in c.step_cpu.values() for x in samples]
    return {"valid": not reasons, "reasons": reasons,
            "cpu_percent": round(sum(cpu) / len(cpu), 1) if cpu else None,
            "canary_samples": canary.count,
            "canary_p99_us": canary.percentile(99) if canary.count else None,
            "schedule_p99_us": sched.percentile(99) if sched.count else None}


def knee_reason(point: dict[str, Any], p99_limit_ms: float, max_server_cpu: float,
                ) -> tuple[str | None, bool]:
    """(why this step ends the ramp or None, whether that is the server's knee).

    A load generator over its CPU limit cannot tell anything: `load-side limited`.
    One that only woke late (canary or schedule lag over the limit, its CPU under
    it) inflated the latencies, so p99 and `fell behind` cannot be trusted in that
    step, but what the server side measured on its own still can: its CPU (read
    from the server's core or process) and lost messages. The step's `loadgen`
    verdict stays invalid either way, which the headline's `valid` reports.
    """
    lg = point["loadgen"]
    cpu = point.get("server_cpu_percent")
    server_saturated = cpu is not None and cpu >= max_server_cpu
    lost = bool(point["holes"] or point["slow_consumer_closes"] or point["connect_failures"])
    if not lg["valid"]:
        starved = any("CPU" in r for r in lg["reasons"])
        if starved or not (server_saturated or lost):
            return "load-side limited: " + "; ".join(lg["reasons"]), False
    if lost:
        return "messages lost", True
    if lg["valid"]:
        p99_ms = point["latency_us"]["percentiles"]["p99"] / 1000 if point["deliveries"] else 0.0
        if p99_ms > p99_limit_ms:
            return f"p99 {p99_ms:.1f} ms > {p99_limit_ms:g} ms", True
        offered = point.get("offered_per_s")
        if offered and point["delivered_per_s"] < BEHIND * offered:
            return (f"server fell behind ({point['delivered_per_s']:.0f} of {offered:.0f} "
                    f"deliveries/s)"), True
    if server_saturated:
        return f"server CPU {cpu:.0f}% >= {max_server_cpu:g}%", True
    return None, False


def next_rate(rate: float, server_cpu_percent: float | None, max_server_cpu: float,
              factor: float) -> float:
    """The next step's rate: aimed just past the CPU limit, within [1.1, factor] x rate."""
    if factor <= MIN_FACTOR:
        return rate * factor
    aim = factor
    if server_cpu_percent and server_cpu_percent > 0:
        aim = max_server_cpu * 1.03 / server_cpu_percent
    return rate * min(factor, max(MIN_FACTOR, aim))


class StepShape:
    """Mixin for a LoadTestShape; `step_tick` is its whole `tick`."""

    use_common_options = True  # -u, -r and -t keep their meaning (see step_tick)
    _step = -1
    # rate ramp state
    _phase = "spawn"
    _phase_until = 0.0
    _rate = 0.0
    _cpu0: float | None = None
    _core0: tuple[int, int] | None = None
    _confirming = False
    _t0_us = 0

    def step_tick(self, run: Any, runner: Any, elapsed: float) -> tuple[int, float] | None:
        opts = runner.environment.parsed_options
        pubs = max(1, int(opts.publishers))
        rate = float(opts.spawn_rate or 1)
        if float(opts.ramp_factor) > 0:
            return self._rate_tick(run, runner, opts, elapsed)
        if opts.run_time and elapsed >= float(opts.run_time):
            if int(opts.step_users) > 0 and self._step >= 0:
                self._close_user_step(run, opts)
            return None  # a shape owns the run time: Locust ignores -t when there is one
        if int(opts.step_users) <= 0:
            return int(opts.num_users or pubs + 1), rate
        step = int(elapsed // float(opts.step_seconds))
        subs = int(opts.step_users) * (step + 1)
        if step != self._step:
            if self._step >= 0 and not self._close_user_step(run, opts):
                return None
            cap = int(opts.num_users or 0) - pubs
            if cap > 0 and subs > cap:
                log.info("rtbench steps: the next step would pass -u (%d subscribers); "
                         "stopping", cap)
                return None
            self._step = step
            run.collector.start_step()
        return pubs + subs, rate

    # ------------------------------------------------------------ rate ramp

    def _rate_tick(self, run: Any, runner: Any, opts: Any, elapsed: float,
                   ) -> tuple[int, float] | None:
        users = int(opts.num_users or 2)
        shape = users, float(opts.spawn_rate or 1)
        if self._phase == "done":
            return None
        if self._phase == "drain":
            return None if elapsed >= self._phase_until else shape
        if opts.run_time and elapsed >= float(opts.run_time) - float(opts.drain):
            self._finish(run, opts, elapsed, "run time ended before a knee")
            return shape
        if self._phase == "spawn":
            if runner.user_count < users:
                return shape
            self._rate = float(opts.publish_rate)
            self._start_settle(elapsed, opts)
        elif self._phase == "settle" and elapsed >= self._phase_until:
            run.pull_local()
            run.collector.start_step()
            self._cpu0 = scrape.cpu_seconds(_metrics(run))
            self._core0 = scrape.core_ticks(list(run.p.server_cpus)) if run.p.server_cpus \
                else None
            self._t0_us = now_us()
            self._phase, self._phase_until = "measure", elapsed + float(opts.step_seconds)
        elif self._phase == "measure" and elapsed >= self._phase_until:
            point = self._close_rate_step(run, opts, users)
            reason, knee = knee_reason(point, float(opts.p99_limit_ms),
                                       float(opts.max_server_cpu))
            if reason is not None and knee and not self._confirming \
                    and reason.startswith("server CPU"):
                # the CPU signal alone: measure the same rate once more before calling it
                # the knee (the machine has slow spells of ~0.5 s; loadgen/README)
                point["unconfirmed"] = reason
                self._confirming = True
                self._start_settle(elapsed, opts)
                return shape
            if reason is not None:
                point["stopped_because"] = reason
                point["knee"] = knee
                self._finish(run, opts, elapsed, None)
                return shape
            self._confirming = False
            new = next_rate(self._rate, point.get("server_cpu_percent"),
                            float(opts.max_server_cpu), float(opts.ramp_factor))
            if new > float(opts.max_publish_rate):
                point["stopped_because"] = (f"--max-publish-rate {opts.max_publish_rate:g} "
                                            f"reached before a knee")
                point["knee"] = False
                self._finish(run, opts, elapsed, None)
                return shape
            self._rate = new
            run.set_publish_rate(new)
            self._start_settle(elapsed, opts)
        return shape

    def _start_settle(self, elapsed: float, opts: Any) -> None:
        self._step += 1
        self._phase, self._phase_until = "settle", elapsed + float(opts.step_settle)

    def _finish(self, run: Any, opts: Any, elapsed: float, reason: str | None) -> None:
        """Stop publishing; the run ends after --drain seconds more."""
        if reason is not None:
            log.info("rtbench steps: %s", reason)
            run.ramp_end = reason
        run.set_publish_rate(stop=True)
        self._phase, self._phase_until = "drain", elapsed + max(1.0, float(opts.drain))

    def _close_rate_step(self, run: Any, opts: Any, users: int) -> dict[str, Any]:
        run.pull_local()
        c = run.collector
        t1 = now_us()
        seconds = max(1e-6, (t1 - self._t0_us) / 1e6)
        cpu1 = scrape.cpu_seconds(_metrics(run))
        core1 = scrape.core_ticks(list(run.p.server_cpus)) if run.p.server_cpus else None
        lat = c.step_latency()
        pubs = max(1, int(opts.publishers))
        subs = users - pubs
        # every publisher is a room member too: it receives its own and the others' messages
        offered = self._rate * pubs * (subs + pubs)
        point = _point(c, self._step, subs, lat, t1)
        server_cpu_s = None if self._cpu0 is None or cpu1 is None else cpu1 - self._cpu0
        point.update({
            "publish_rate": round(self._rate, 3),
            "offered_per_s": round(offered, 1),
            "measured_s": round(seconds, 3),
            "delivered_per_s": round(lat.count / seconds, 1),
            "server_cpu_s": None if server_cpu_s is None else round(server_cpu_s, 4),
            "server_process_cpu_percent": None if server_cpu_s is None
            else round(100 * server_cpu_s / seconds / max(1, int(opts.server_cores)), 1),
            "server_cpu_us_per_delivery": round(server_cpu_s * 1e6 / lat.count, 2)
            if server_cpu_s is not None and lat.count else None,
            "loadgen": judge_loadgen(c, float(opts.max_cpu), float(opts.max_lag_ms), seconds),
        })
        point["server_cpu_source"] = "processes"
        point["server_cpu_percent"] = point["server_process_cpu_percent"]
        if self._core0 is not None and core1 is not None and core1[1] > self._core0[1]:
            point["server_cpu_source"] = "cores " + ",".join(map(str, run.p.server_cpus))
            point["server_cpu_percent"] = round(
                100 * (core1[0] - self._core0[0]) / (core1[1] - self._core0[1]), 1)
        run.steps.append(point)
        log.info("rtbench step %d: rate %.1f/s, %.0f deliveries/s (offered %.0f), p99 %.1f ms, "
                 "server CPU %s%%, load-gen valid %s", self._step, self._rate,
                 point["delivered_per_s"], offered, lat.percentile(99) / 1000,
                 point["server_cpu_percent"], point["loadgen"]["valid"])
        return point

    # ------------------------------------------------------- subscriber ramp

    def _close_user_step(self, run: Any, opts: Any) -> bool:
        """Record the finished step; False when it crossed a limit (stop stepping)."""
        run.pull_local()
        c = run.collector
        lat = c.step_latency()
        point = _point(c, self._step, int(opts.step_users) * (self._step + 1), lat, now_us())
        point["loadgen"] = judge_loadgen(c, float(opts.max_cpu), float(opts.max_lag_ms))
        run.steps.append(point)
        p99_ms = lat.percentile(99) / 1000
        over = p99_ms > float(opts.p99_limit_ms)
        lost = point["holes"] > 0 or point["slow_consumer_closes"] > 0 \
            or point["connect_failures"] > 0
        log.info("rtbench step %d: %d subscribers, %d deliveries, p99 %.1f ms, holes %d",
                 self._step, point["subscribers"], lat.count, p99_ms, point["holes"])
        if over or lost:
            point["stopped_because"] = (f"p99 {p99_ms:.1f} ms > {opts.p99_limit_ms} ms" if over
                                        else "deliveries missing or connections refused")
            log.info("rtbench steps: stop after step %d: %s", self._step,
                     point["stopped_because"])
            return False
        return True


def _point(c: Any, step: int, subscribers: int, lat: Histogram, ended_us: int,
           ) -> dict[str, Any]:
    return {
        "step": step,
        "subscribers": subscribers,
        "ended_us": ended_us,
        "deliveries": lat.count,
        "latency_us": lat.to_dict(),
        "holes": sum(c.holes.values()),
        "slow_consumer_closes": sum(v for k, v in c.step_counters.items() if k == "close:4408"),
        "connect_failures": c.step_counters.get("connect_failures", 0),
    }


def _metrics(run: Any) -> list[str]:
    p = run.p
    return scrape.metrics_urls(p.servers, p.transport, p.metrics_urls)


def ramp_summary(steps: list[dict[str, Any]], ended: str | None = None,
                 max_server_cpu: float = 90.0) -> dict[str, Any]:
    """What a rate ramp found: the knee (or why there is none) and the largest load carried.

    `max_deliveries_per_s`: for a ramp that ended at the server's CPU limit, the
    deliveries/s at that limit on the line through the ramp's clean steps
    (loadgen.knee, `knee_method` "cpu fit", its line in `cpu_fit`); otherwise, or
    when no line can be fitted, the most deliveries per second of a step that lost
    nothing, kept p99 under the limit and had a valid load generator (the knee step
    itself when it ended only because of the CPU limit; `knee_method` "best step").
    `best_step` is the clean step nearest that figure: its p99 and CPU per delivery
    are the `*_at_max` fields.
    """
    last = steps[-1] if steps else {}
    reason = last.get("stopped_because") or ended or "no step finished"
    knee = bool(last.get("knee"))
    good = [s for s in steps if knee_mod.clean(s)]
    out: dict[str, Any] = {
        "steps": len(steps), "knee_reached": knee, "stopped_because": reason,
        "load_side_limited": str(reason).startswith("load-side limited"),
        "loadgen_valid": all(s.get("loadgen", {}).get("valid") for s in steps) and bool(steps),
        "max_deliveries_per_s": None, "knee_method": None, "cpu_fit": None,
        "best_step": None, "p99_ms_at_max": None,
        "server_cpu_us_per_delivery_at_max": None, "server_cpu_percent_at_max": None,
        "knee_step": last.get("step") if knee else None,
    }
    if not good:
        return out
    top = max(float(s.get("delivered_per_s") or 0.0) for s in good)
    out.update(max_deliveries_per_s=top, knee_method="best step")
    fit = knee_mod.cpu_fit(steps, max_server_cpu) \
        if knee and str(reason).startswith("server CPU") else None
    if fit is not None:
        out.update(max_deliveries_per_s=round(fit.capacity_per_s, 1), knee_method="cpu fit",
                   cpu_fit=fit.to_dict())
    target = float(out["max_deliveries_per_s"])
    best = min(good, key=lambda s: abs(float(s.get("delivered_per_s") or 0.0) - target))
    out.update({
        "best_step": best.get("step"),
        "p99_ms_at_max": best["latency_us"]["percentiles"]["p99"] / 1000
        if best.get("deliveries") else None,
        "server_cpu_us_per_delivery_at_max": best.get("server_cpu_us_per_delivery"),
        "server_cpu_percent_at_max": best.get("server_cpu_percent"),
    })
    return out
