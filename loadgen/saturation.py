"""Is the load generator itself the bottleneck? Three signals, judged over one window.

- process CPU (psutil, sampled every second, percent of one core): Python
  load generators run on one core; near 100 % the event loop queues work and
  every latency it measures includes its own backlog.
- greenlet-lag canary: a greenlet sleeps `CANARY_INTERVAL` and records how late
  it wakes up; a busy hub wakes it late, and wakes the readers late too.
- publisher schedule lag (`openloop`): how late publishers wake for a send.

**The judged window.** Only samples taken inside the measurement window count
(`Recorder.judge_from_us` .. `judge_until_us`): after warm-up and spawning,
before the publishers stop and the users are torn down. Samples outside it are
kept apart (`*_outside` histograms) and reported, not judged: a connect storm at
spawn or closing 400 sockets at the end stalls the hub by tens of ms, but no
delivery of the window is timed then. The result's `saturation.window` says
which window was judged and how many canary samples it holds. The canary wakes
100 times a second, so the p99 of a window is not just its worst sample; a
window shorter than `Thresholds.min_window_s` is not judged on lag at all (and
a starved canary wakes less often: its few late samples still carry the lag).

**Garbage collection.** A full (generation 2) collection walks every tracked
object: measured 19-59 ms over a Locust process's ~52,000 objects after its
imports plus the clients' state (issue 11's closing note). Such a pause stalls
every greenlet, so the canary flagged light runs. `freeze_heap()` (at test
start and whenever spawning completes) moves the objects alive then into the
permanent generation, so later collections walk only what was made since; while
users spawn, automatic collection is off (`pause_gc`: a connect storm's objects
live to the end, and the collections they set off paused the hub 40-140 ms with
2,000 connections), and what spawning made is frozen when it completes.
(Figures: results/published/loadgen-stalls-20261202.json.) Collection pauses
are timed (`gc_pause` histogram, per generation counters) and reported with the
other signals.

**The descriptor table** is grown to the open-files limit before the clock
starts (`servers.fdtable`): growing it on the way stalled `socket()` 5-18 ms at
the 256th, 512th, 1,024th and 2,048th descriptor.

Past a threshold the run is marked invalid: its latencies describe the
generator, not the server. Thresholds are options (see `loadgen.options`).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any

from loadgen.measure import Histogram, now_us
from loadgen.recorder import NEVER, OUTSIDE

CANARY_INTERVAL = 0.01  # seconds: 100 samples a second, so a window's p99 is not its max
CPU_INTERVAL = 1.0


@dataclass(slots=True, frozen=True)
class Thresholds:
    max_cpu_percent: float = 90.0  # mean process CPU over the window, percent of one core
    max_lag_ms: float = 20.0  # p99 of canary lag and of publisher schedule lag
    min_samples: int = 3  # fewer CPU samples than this: too short to judge CPU
    min_window_s: float = 1.0  # a shorter judged window is not judged on lag


def check(cpu: dict[str, list[float]], canary: Histogram, schedule: Histogram,
          t: Thresholds, window_s: float | None = None) -> tuple[dict[str, Any], list[str]]:
    """Summary of the saturation signals and the reasons (if any) the run is invalid.

    `cpu`, `canary` and `schedule` hold the judged window's samples only; the window
    lasted `window_s` seconds (None: long enough)."""
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
    judged_lag = window_s is None or window_s >= t.min_window_s
    for name, hist in (("greenlet canary", canary), ("publisher schedule", schedule)):
        p99 = hist.percentile(99)
        # a schedule lag is only judged beside enough canary samples: both watch one hub
        if judged_lag and hist.count and p99 > limit_us:
            reasons.append(f"{name} lag p99 {p99 / 1000:.1f} ms (limit {t.max_lag_ms:g} ms)")
    summary = {
        "cpu_percent": per_proc,
        "canary_lag_us": canary.to_dict(),
        "schedule_lag_us": schedule.to_dict(),
        "lag_judged": judged_lag,
        "thresholds": {"max_cpu_percent": t.max_cpu_percent, "max_lag_ms": t.max_lag_ms,
                       "min_window_s": t.min_window_s},
    }
    return summary, reasons


def window_summary(c: Any, rec: Any, started_us: int, judges_spawn: bool,
                   frozen_objects: int) -> dict[str, Any]:
    """Which window was judged (collector `c`, recorder `rec`), and what happened outside
    it: reported, not judged."""

    def rel(t_us: int) -> float | None:
        return None if t_us >= NEVER else round((t_us - started_us) / 1e6, 3)

    until = min(rec.judge_until_us, now_us())
    start = max(rec.judge_from_us, started_us)
    return {
        "window": {"from_s": rel(start), "until_s": rel(until),
                   "seconds": round(max(0, until - start) / 1e6, 3),
                   "judges_spawn": judges_spawn,
                   "canary_samples": c.hist("canary_lag").count},
        "outside_window": {
            "canary_lag_us": c.hist("canary_lag" + OUTSIDE).to_dict(),
            "schedule_lag_us": c.hist("schedule_lag" + OUTSIDE).to_dict(),
            "cpu_percent": {k: v for k, v in sorted(c.cpu_outside.items()) if v}},
        "gc": {"pause_us": c.hist("gc_pause").to_dict(),
               "pause_outside_us": c.hist("gc_pause" + OUTSIDE).to_dict(),
               "collections": {k: v for k, v in sorted(c.counters.items())
                               if k.startswith("gc_")},
               "frozen_objects": frozen_objects},
    }


def freeze_heap(collect: bool = True) -> None:
    """Move every live object into the permanent generation (see the module docstring).
    `collect` first frees what is garbage now.

    `gc.freeze()` only splices lists; counting the frozen objects walks them all
    (`gc.get_freeze_count()`: a >8 ms hub block at 2,000 gRPC connections, gevent's
    monitor thread, 2026-12-02), so the count is taken once the window closed."""
    if collect:
        gc.collect()
    gc.freeze()


def pause_gc() -> None:
    """No automatic collection while users spawn: connect storms make objects that live to
    the end, and the full collections they set off paused the hub 40-140 ms with 2,000
    connections (make bench, 2026-12-02). `resume_gc` (spawning complete) freezes them."""
    gc.disable()


def resume_gc() -> None:
    gc.enable()


class GcWatch:
    """Times every garbage collection; `drain_into` moves them into a recorder
    (`gc_pause` histogram, `gc_gen<N>` counters). The callback only appends to a
    list: it runs inside whatever allocation triggered the collection, possibly while
    the recorder's own dicts are being iterated."""

    def __init__(self) -> None:
        self._t0 = 0
        self._pending: list[tuple[int, int, int]] = []  # (ended at µs, pause µs, generation)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter_ns()
            return
        pause_us = (time.perf_counter_ns() - self._t0) // 1000
        self._pending.append((time.time_ns() // 1000, pause_us, int(info.get("generation", -1))))

    def drain_into(self, recorder: Any) -> None:
        pending, self._pending = self._pending, []
        for at_us, pause_us, gen in pending:
            recorder.lag("gc_pause", pause_us, at_us)
            recorder.count(f"gc_gen{gen}")
            if pause_us >= 5000:
                recorder.count("gc_pauses_over_5ms")

    def install(self) -> GcWatch:
        gc.callbacks.append(self)
        return self

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


def start_monitor(recorder: Any, stop: Any, gc_watch: GcWatch | None = None) -> list[Any]:
    """Spawn the CPU sampler and the canary (gevent greenlets) until `stop` is set; the
    sampler also moves `gc_watch`'s pauses into the recorder every second."""
    import gevent
    import psutil

    proc = psutil.Process()

    def cpu_sampler() -> None:
        proc.cpu_percent(None)
        began = now_us()
        while not stop.wait(CPU_INTERVAL):
            ended = now_us()
            recorder.cpu_sample(proc.cpu_percent(None), began, ended)
            began = ended
            if gc_watch is not None:
                gc_watch.drain_into(recorder)

    def canary() -> None:
        interval_us = int(CANARY_INTERVAL * 1e6)
        while True:
            due = now_us() + interval_us
            if stop.wait(CANARY_INTERVAL):
                return
            woke = now_us()
            recorder.lag("canary_lag", woke - due, woke)

    return [gevent.spawn(cpu_sampler), gevent.spawn(canary)]
