"""bench.harness.cpu: another process's CPU time, ns-precise, threads that ended included."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from bench.harness.cpu import cpu_clock, cpu_seconds

# burns ~0.2 s of CPU in a thread that then ends, reports that thread's own CPU time
# (ns), and waits on stdin so the parent can read the process's clock meanwhile
CHILD = """
import sys, threading, time
burnt = []
def work():
    end = time.thread_time_ns() + 200_000_000
    while time.thread_time_ns() < end:
        pass
    burnt.append(time.thread_time_ns())
t = threading.Thread(target=work)
t.start()
t.join()
print(burnt[0], flush=True)
sys.stdin.readline()
"""


def test_counts_threads_that_ended() -> None:
    with subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdin is not None
            thread_ns = int(proc.stdout.readline())  # the worker thread has ended by now
            clock = cpu_clock(proc.pid)
            first = clock()
            # the ended thread's CPU is in the process clock (a /proc/<pid>/task sum loses it)
            assert first >= thread_ns / 1e9
            assert clock() >= first  # monotonic
            assert cpu_seconds(proc.pid) >= first
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.wait(timeout=20) == 0
        finally:
            proc.kill()


def test_finer_than_ticks() -> None:
    # psutil's figure moves in 10 ms ticks; ours resolves a single short slice
    clock = cpu_clock(psutil.Process().pid)
    readings = {clock() for _ in range(50)}
    assert len(readings) > 1
    assert any(round(r * 100) != r * 100 for r in readings)  # not all on the 10 ms grid


def test_a_process_that_is_gone_raises() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=20)
    with pytest.raises((OSError, psutil.Error)):
        cpu_seconds(proc.pid)
