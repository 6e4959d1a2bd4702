"""CPU time another process has used, in nanoseconds where the OS allows.

Why not psutil's `cpu_times()`: Linux accounts user/system time in 10 ms ticks
(USER_HZ), which over a few-second sample of ~0.3 CPU-s is 3-8% of noise per
sample - the order of a 10% regression threshold (cpu/delivery values were seen
to fall on a 2.5 µs grid).

Why not the sum of `/proc/<pid>/task/*/schedstat`: it is ns-precise, but only
over the threads alive when read; a thread that ended in the window (an executor
thread, a resolver) takes its CPU time with it. The process CPU clock
(`clock_gettime` on the pid's CPUCLOCK_SCHED clock) is the same scheduler
runtime (`sum_exec_runtime`) for the whole thread group, ended threads included.
Measured: a process whose 3 worker threads had ended read 0.388 s on the process
clock, 0.047 s summed over /proc/<pid>/task/*/schedstat, 0.38 s in ticks.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import psutil

_CPUCLOCK_SCHED = 2  # linux/posix-timers.h: the scheduler's runtime, in ns


def _process_clock_id(pid: int) -> int:
    # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED): what glibc's clock_getcpuclockid builds
    return ((~pid) << 3) | _CPUCLOCK_SCHED


def cpu_clock(pid: int) -> Callable[[], float]:
    """A function giving the CPU seconds process `pid` has used so far (all its threads).

    ns-precise on Linux (the process CPU clock); psutil's tick-based user+system
    time elsewhere, or if the clock cannot be read. The function raises
    `psutil.NoSuchProcess`/`OSError` once the process is gone.
    """
    clock = _process_clock_id(pid)
    try:
        time.clock_gettime_ns(clock)
    except (OSError, OverflowError, AttributeError):
        proc = psutil.Process(pid)
        return lambda: float(sum(proc.cpu_times()[:2]))

    def read() -> float:
        return time.clock_gettime_ns(clock) / 1e9

    return read


def cpu_seconds(pid: int) -> float:
    """CPU seconds process `pid` has used so far (see `cpu_clock`)."""
    return cpu_clock(pid)()


def calibrate(rounds: int = 5) -> float:
    """CPU seconds of a fixed pure-Python loop (best of `rounds`): this core's current speed.

    Thread CPU time, not wall time: on a shared core the wall time measures how
    often the scheduler ran us (contention, which the paired design absorbs),
    the CPU time how fast the core is (frequency, cache, a hypervisor's other
    guests), which a stored baseline depends on.
    """
    best = float("inf")
    for _ in range(rounds):
        t0 = time.thread_time()
        sum(i * i for i in range(1_000_000))
        best = min(best, time.thread_time() - t0)
    return best


def core_speed(cpu: int, rounds: int = 3) -> float | None:
    """`calibrate` run on core `cpu` (this thread moved there and back); None where the
    OS has no affinity."""
    try:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        return None
    try:
        return round(calibrate(rounds), 5)
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, before)
