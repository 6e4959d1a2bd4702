"""Is the load generator itself the bottleneck? Three signals, documented thresholds.

- process CPU (psutil, sampled every second, percent of one core): Python
  load generators run on one core; near 100 % the event loop queues work and
  every latency it measures includes its own backlog.
- greenlet-lag canary: a greenlet sleeps `CANARY_INTERVAL` and records how late
  it wakes up; a busy hub wakes it late, and wakes the readers late too.
- publisher schedule lag (`openloop`): how late publishers wake for a send.

Past a threshold the run is marked invalid: its latencies describe the
generator, not the server. Thresholds are options (see `loadgen.options`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loadgen.measure import Histogram

CANARY_INTERVAL = 0.05  # seconds
CPU_INTERVAL = 1.0


@dataclass(slots=True, frozen=True)
class Thresholds:
    max_cpu_percent: float = 90.0  # mean process CPU over the run, percent of one core
    max_lag_ms: float = 20.0  # p99 of canary lag and of publisher schedule lag
    min_samples: int = 3  # fewer CPU samples than this: too short to judge CPU


def check(cpu: dict[str, list[float]], canary: Histogram, schedule: Histogram,
          t: Thresholds) -> tuple[dict[str, Any], list[str]]:
    """Summary of the saturation signals and the reasons (if any) the run is invalid."""
    reasons: list[str] = []
    per_proc = {}
    for proc, samples in sorted(cpu.items()):
        mean = sum(samples) / len(samples) if samples else 0.0
        per_proc[proc] = {"mean": round(mean, 1), "max": round(max(samples, default=0.0), 1),
                          "samples": len(samples)}
        if len(samples) >= t.min_samples and mean > t.max_cpu_percent:
            reasons.append(f"load generator {proc} used {mean:.0f}% CPU "
                           f"(limit {t.max_cpu_percent:g}%)")
    limit_us = t.max_lag_ms * 1000
    for name, hist in (("greenlet canary", canary), ("publisher schedule", schedule)):
        p99 = hist.percentile(99)
        if hist.count and p99 > limit_us:
            reasons.append(f"{name} lag p99 {p99 / 1000:.1f} ms (limit {t.max_lag_ms:g} ms)")
    summary = {
        "cpu_percent": per_proc,
        "canary_lag_us": canary.to_dict(),
        "schedule_lag_us": schedule.to_dict(),
        "thresholds": {"max_cpu_percent": t.max_cpu_percent, "max_lag_ms": t.max_lag_ms},
    }
    return summary, reasons


def start_monitor(recorder: Any, stop: Any) -> list[Any]:
    """Spawn the CPU sampler and the canary (gevent greenlets) until `stop` is set."""
    import gevent
    import psutil

    from loadgen.measure import now_us

    proc = psutil.Process()

    def cpu_sampler() -> None:
        proc.cpu_percent(None)
        while not stop.wait(CPU_INTERVAL):
            recorder.cpu_samples.append(proc.cpu_percent(None))

    def canary() -> None:
        interval_us = int(CANARY_INTERVAL * 1e6)
        while True:
            due = now_us() + interval_us
            if stop.wait(CANARY_INTERVAL):
                return
            recorder.timing("canary_lag", now_us() - due)

    return [gevent.spawn(cpu_sampler), gevent.spawn(canary)]
