"""Server-side process stats during one scenario, sampled by a thread of the harness.

CPU seconds and RSS of each replica (and of Redis) every `interval`, from
/proc through psutil: the servers' own cost, independent of what the load
generator reports. It also collects the distinct client endpoints seen
connected to each replica's port: a lower bound on the TCP connections the
clients opened (one that opens and closes between two samples is missed).
The sampler also notices a replica that died, so the harness can stop the
scenario instead of measuring a half cluster.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

INTERVAL = 0.5


@dataclass(slots=True)
class Watched:
    role: str  # "r0", "r1"... or "redis"
    pid: int
    port: int | None = None  # listening port whose client connections are counted
    proc: psutil.Process | None = None
    peers: set[tuple[str, int]] = field(default_factory=set)


@dataclass(slots=True)
class Sample:
    role: str
    pid: int
    t: float  # seconds since the sampler started
    cpu_s: float
    rss: int


def tcp_passive_opens(pid: int | None = None) -> int | None:
    """Count of accepted TCP connections in this network namespace, or in process `pid`'s
    (Linux /proc/[pid/]net/snmp), or None."""
    try:
        path = Path(f"/proc/{pid}/net/snmp" if pid is not None else "/proc/net/snmp")
        lines = path.read_text().splitlines()
    except OSError:
        return None
    tcp = [line.split() for line in lines if line.startswith("Tcp:")]
    if len(tcp) < 2:
        return None
    with contextlib.suppress(ValueError, IndexError):
        return int(tcp[1][tcp[0].index("PassiveOpens")])
    return None


@dataclass
class Sampler:
    """Samples `watched` until stopped; `dead` names the first replica that exited."""

    watched: list[Watched]
    interval: float = INTERVAL
    samples: list[Sample] = field(default_factory=list)
    dead: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0

    def start(self) -> Sampler:
        for w in self.watched:
            with contextlib.suppress(psutil.Error):
                w.proc = psutil.Process(w.pid)
        self._t0 = time.monotonic()
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="rtbench-sampler", daemon=True)
        self._thread.start()
        return self

    def sample(self) -> None:
        t = time.monotonic() - self._t0
        for w in self.watched:
            if w.proc is None:
                continue
            try:
                with w.proc.oneshot():
                    if w.proc.status() == psutil.STATUS_ZOMBIE:
                        raise psutil.NoSuchProcess(w.pid)
                    times = w.proc.cpu_times()
                    rss = int(w.proc.memory_info().rss)
                    if w.port is not None:
                        w.peers.update((c.raddr.ip, c.raddr.port)
                                       for c in w.proc.net_connections("tcp")
                                       if c.raddr and c.laddr.port == w.port)
            except psutil.Error:
                if self.dead is None:
                    self.dead = w.role
                w.proc = None
                continue
            self.samples.append(Sample(w.role, w.pid, round(t, 3),
                                       float(times.user + times.system), rss))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sample()

    def cpu_delta(self, role: str) -> float | None:
        """CPU seconds `role` used between the first and the last sample."""
        mine = [s for s in self.samples if s.role == role]
        if len(mine) < 2:
            return None
        return round(mine[-1].cpu_s - mine[0].cpu_s, 4)

    def peers(self, role: str) -> int | None:
        """Distinct client endpoints seen on `role`'s port (None: not watched by port)."""
        for w in self.watched:
            if w.role == role and w.port is not None:
                return len(w.peers)
        return None

    def rss_max(self, role: str) -> int | None:
        mine = [s.rss for s in self.samples if s.role == role]
        return max(mine) if mine else None


def parse_prom(text: str) -> dict[str, float]:
    """Every sample of a Prometheus text page as {name: value}, labels summed away."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name = head.split("{", 1)[0].strip()
        with contextlib.suppress(ValueError):
            out[name] = out.get(name, 0.0) + float(value)
    return out
