"""Busy loops on the load core (nice 0, or SCHED_FIFO only under RT throttling) and their safety."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

BURNER_LIFETIME = 60  # seconds; a burner ends itself even if this process dies
RT_RUNTIME_FILE = Path("/proc/sys/kernel/sched_rt_runtime_us")
RT_PERIOD_FILE = Path("/proc/sys/kernel/sched_rt_period_us")
MIN_OTHERS_SHARE = 0.01  # RT throttling must leave normal tasks at least this share


def read_rt_throttle() -> dict[str, int | None]:
    """The kernel's RT throttling: rt_runtime_us of every rt_period_us (None: unreadable)."""
    out: dict[str, int | None] = {}
    for key, path in (("rt_runtime_us", RT_RUNTIME_FILE), ("rt_period_us", RT_PERIOD_FILE)):
        try:
            out[key] = int(path.read_text().strip())
        except (OSError, ValueError):
            out[key] = None
    return out


def rt_throttle_problem(rt: Mapping[str, int | None], cpu: int) -> str | None:
    """Why a SCHED_FIFO busy loop on `cpu` must not run under throttling `rt`; None if it may.

    It may when RT tasks are throttled to less than the period, leaving normal
    tasks (the shell, sshd's and the kernel's threads on that core) at least
    MIN_OTHERS_SHARE of it.
    """
    runtime, period = rt.get("rt_runtime_us"), rt.get("rt_period_us")
    hang = f"a SCHED_FIFO busy loop would hang core {cpu}; not running it"
    if runtime is None or period is None or period <= 0:
        return (f"cannot read RT throttling ({RT_RUNTIME_FILE}, {RT_PERIOD_FILE}): "
                f"without it {hang}")
    if runtime < 0:
        return (f"RT throttling is disabled ({RT_RUNTIME_FILE} = {runtime}): {hang} "
                f"(the default is 950000: sysctl kernel.sched_rt_runtime_us=950000)")
    others = 1 - runtime / period
    if others < MIN_OTHERS_SHARE:
        return (f"RT throttling leaves normal tasks {others:.1%} of the core "
                f"(sched_rt_runtime_us {runtime} of sched_rt_period_us {period}, "
                f"under {MIN_OTHERS_SHARE:.0%}): {hang}")
    return None


def burner_code(lifetime: int, cpu: int, fifo: bool, parent: int) -> str:
    """The Python a burner runs: checks, then a busy loop.

    It ends itself after `lifetime` s (SIGALRM) and when `parent` dies
    (PR_SET_PDEATHSIG); it refuses to spin unless pinned to `cpu` alone and,
    if `fifo`, running SCHED_FIFO priority 1 (exit status 1 and a message).
    """
    return textwrap.dedent(f"""\
        import ctypes, os, signal, sys
        signal.alarm({int(lifetime)})
        try:
            ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except Exception:
            pass
        if os.getppid() != {int(parent)}:
            sys.exit(0)  # the benchmark died before the death signal was armed
        if os.sched_getaffinity(0) != {{{int(cpu)}}}:
            sys.exit(f"burner: not pinned to core {int(cpu)} alone: {{os.sched_getaffinity(0)}}")
        if {bool(fifo)}:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            except OSError as exc:
                sys.exit(f"burner: SCHED_FIFO refused: {{exc}}")
        while True:
            pass
        """)


class BurnerError(RuntimeError):
    """A burner could not run as asked (no RT throttling, no SCHED_FIFO, not pinned)."""


_POLICIES = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR",
             os.SCHED_BATCH: "SCHED_BATCH", os.SCHED_IDLE: "SCHED_IDLE"}


class Burners:
    """`count` busy loops pinned to `cpu`, SCHED_FIFO priority 1 if `fifo`; start(), stop().

    Each is its own process group. stop() (also on leaving a `with` block) kills
    them, ignoring signals meanwhile; each also ends itself after `lifetime`
    seconds and when this process dies (see `burner_code`).
    """

    def __init__(self, count: int, cpu: int, lifetime: int = BURNER_LIFETIME,
                 fifo: bool = False) -> None:
        self.count, self.cpu, self.lifetime, self.fifo = count, cpu, lifetime, fifo
        self.procs: list[subprocess.Popen[bytes]] = []
        self.rt_throttling: dict[str, int | None] | None = None

    def __enter__(self) -> Burners:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self) -> None:
        """Start them; for RT burners check throttling first and wait until each runs FIFO."""
        if self.fifo:
            self.rt_throttling = read_rt_throttle()
            problem = rt_throttle_problem(self.rt_throttling, self.cpu)
            if problem:
                raise BurnerError(problem)
        code = burner_code(self.lifetime, self.cpu, self.fifo, os.getpid())
        for _ in range(self.count):
            self.procs.append(subprocess.Popen(
                ["taskset", "-c", str(self.cpu), sys.executable, "-c", code],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True))
        if self.fifo:
            self._await_fifo()

    def _await_fifo(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.procs)
        while pending:
            for p in list(pending):
                if p.poll() is not None:
                    err = p.stderr.read().decode(errors="replace").strip() if p.stderr else ""
                    raise BurnerError(f"burner {p.pid} exited with {p.returncode} before "
                                      f"running SCHED_FIFO: {err or '(no message)'}")
                with contextlib.suppress(OSError):
                    if os.sched_getscheduler(p.pid) == os.SCHED_FIFO:
                        pending.remove(p)
            if pending and time.monotonic() > deadline:
                raise BurnerError(f"burner(s) {[p.pid for p in pending]} not SCHED_FIFO "
                                  f"after {timeout:g} s")
            if pending:
                time.sleep(0.01)

    def policies(self) -> list[str | None]:
        out: list[str | None] = []
        for pid in self.pids:
            try:
                policy = os.sched_getscheduler(pid)
            except OSError:
                out.append(None)
            else:
                out.append(_POLICIES.get(policy, str(policy)))
        return out

    def affinities(self) -> list[list[int] | None]:
        from bench.harness.procs import affinity

        return [affinity(pid) for pid in self.pids]

    def cpu_seconds(self) -> list[float | None]:
        return _cpu_seconds(self.pids)

    def stop(self) -> None:
        from bench.harness.procs import signals_ignored, stop_group

        with signals_ignored():
            for p in self.procs:
                stop_group(p, timeout=2.0)
                if p.stderr:
                    p.stderr.close()


def _cpu_seconds(pids: Sequence[int]) -> list[float | None]:
    from bench.harness.cpu import cpu_seconds

    out: list[float | None] = []
    for pid in pids:
        try:
            out.append(round(cpu_seconds(pid), 3))
        except Exception:  # gone already (ended itself): nothing to read
            out.append(None)
    return out
