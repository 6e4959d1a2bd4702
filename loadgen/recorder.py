"""Per-process measurements (`Recorder`) and their exact merge across processes (`Collector`).

Sans-I/O: no gevent, no locust. A worker ships `Recorder.take_delta()` with
every `report_to_master` (histograms of the samples since the last report, as
HdrHistogram encodings, and counter increments) and `Recorder.take_ledger()`
once, when it stops; the master feeds both to its `Collector`. A local run
feeds its own recorder to the collector the same way, so one code path merges.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from typing import Any

from loadgen.delivery import PublisherLog, StreamTracker, Verdict, Window, judge
from loadgen.measure import Histogram, Stamp, now_us

# Histogram names: delivery latency per event kind, plus the timings every run records.
LATENCY_KINDS = ("message", "direct")
# server_leg: from the server's `ts` on a message (when its hub took it) to its receipt,
# the fan-out half of the delivery latency (one crossing of a network profile's link)
TIMINGS = ("connect", "rejoin", "publish_blocked", "server_leg")
# the saturation signals (loadgen.saturation), each kept apart inside and outside the judged window
LAGS = ("schedule_lag", "canary_lag", "gc_pause")
OUTSIDE = "_outside"
NEVER = 1 << 62


class Recorder:
    """Everything one load-generator process measures."""

    def __init__(self, host: str | None = None) -> None:
        self.host = host or socket.gethostname()
        self.pid = os.getpid()
        self.hists: dict[str, Histogram] = {
            k: Histogram() for k in (*LATENCY_KINDS, *TIMINGS, *LAGS,
                                     *(lag + OUTSIDE for lag in LAGS))}
        self.counters: Counter[str] = Counter()
        # the two counters every delivery moves, as plain ints (a Counter increment costs
        # about 0.14 µs, an attribute's 0.02); `take_delta` ships them in `counters`
        self.received = 0
        self.wire_bytes = 0
        self.publishers: list[PublisherLog] = []
        self.windows: list[Window] = []
        self.cpu_samples: list[float] = []  # inside the judged window
        self.cpu_samples_outside: list[float] = []
        self._live: set[Window] = set()
        self._hole_marks: dict[tuple[int, str], int] = {}  # (window, stream) -> its high then
        self.warmup_until_us = 0  # latencies of messages intended before this are not timed
        # the saturation signals' judged window (loadgen.saturation): [from, until) in µs
        self.judge_from_us = 0
        self.judge_until_us = NEVER

    # -------------------------------------------------------------- recording

    def publisher(self, pub_id: str, channel: str) -> PublisherLog:
        log = PublisherLog(pub_id, channel, self.host)
        self.publishers.append(log)
        return log

    def open_window(self, receiver: str, channel: str, start_us: int | None = None) -> Window:
        w = Window(receiver, channel, self.host, now_us() if start_us is None else start_us)
        self.windows.append(w)
        self._live.add(w)
        return w

    def close_window(self, w: Window, end_us: int | None = None) -> None:
        if w.end_us is None:
            w.end_us = now_us() if end_us is None else end_us
        self._live.discard(w)

    def delivered(self, w: Window | None, kind: str, stamp: Stamp | None, recv_us: int,
                  wire_bytes: int) -> bool:
        """One stamped delivery; returns False for a duplicate (not timed twice)."""
        c = self.counters
        self.received += 1
        self.wire_bytes += wire_bytes
        if stamp is None:
            c["unstamped"] += 1
            if w is not None:
                w.unstamped += 1
            return True
        if w is not None and not w.receive(stamp.publisher, stamp.seq):
            c["duplicates"] += 1
            return False
        if stamp.intended_us >= self.warmup_until_us:
            self.hists[kind].record(recv_us - stamp.intended_us)
        else:
            c["warmup_deliveries"] += 1
        return True

    def deliver(self, w: Window | None, kind: str, data: Any, recv_us: int,
                wire_bytes: int, server_ts: Any = None) -> int | None:
        """`delivered(w, kind, parse_stamp(data), recv_us, wire_bytes)` in one call, for the
        hot path of a load generator (one Python call per delivery instead of about six):
        the latency in µs of a stamped first delivery (also during warm-up, when it is
        not timed), None for an unstamped delivery or a duplicate. `server_ts`, the event's
        `ts` (µs, the server's clock: this host's on one machine), times the server leg."""
        c = self.counters
        self.received += 1
        self.wire_bytes += wire_bytes
        if type(data) is not dict:  # parse_stamp, inline from here
            self._unstamped(w)
            return None
        p: Any = data.get("p")
        s: Any = data.get("s")
        t: Any = data.get("t")
        if type(p) is not str or type(s) is not int or type(t) is not int or s < 0:
            self._unstamped(w)
            return None
        if w is not None:
            streams = w.streams
            tracker = streams.get(p)
            if tracker is None:
                tracker = streams[p] = StreamTracker()
            # in order, StreamTracker.add's common case (inline: a call per delivery less)
            if s == tracker.next and not tracker.ahead:
                tracker.next = s + 1
                tracker.high = s
            elif not tracker.add(s):
                c["duplicates"] += 1
                return None
        latency: int = recv_us - t
        if t >= self.warmup_until_us:
            self.hists[kind].record(latency)
            if type(server_ts) is int and t <= server_ts <= recv_us:
                self.hists["server_leg"].record(recv_us - server_ts)
        else:
            c["warmup_deliveries"] += 1
        return latency

    def _unstamped(self, w: Window | None) -> None:
        self.counters["unstamped"] += 1
        if w is not None:
            w.unstamped += 1

    def timing(self, name: str, value_us: int) -> None:
        self.hists[name].record(value_us)

    def in_window(self, at_us: int) -> bool:
        return self.judge_from_us <= at_us < self.judge_until_us

    def lag(self, name: str, value_us: int, at_us: int | None = None) -> None:
        """A saturation signal (one of LAGS) observed at `at_us` (default now): judged
        inside the window, kept in `<name>_outside` otherwise."""
        at = now_us() if at_us is None else at_us
        self.hists[name if self.in_window(at) else name + OUTSIDE].record(value_us)

    def cpu_sample(self, percent: float, began_us: int, ended_us: int) -> None:
        """A CPU sample of [began, ended): judged only if the window holds all of it."""
        inside = self.in_window(began_us) and self.in_window(ended_us - 1)
        (self.cpu_samples if inside else self.cpu_samples_outside).append(percent)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def holes(self) -> int:
        """Live loss signal: seqs of still-open windows that had been overtaken already at the
        previous call (below each stream's highest seq then) and have still not arrived.

        A hole counts once it has outlived a report interval, not the instant a later seq
        overtakes it: on a link that reorders (concurrent HTTP POSTs across a 100 ms link
        arrived out of order 421 and 486 times in one step of a --net wan run, every one
        of them delivered: results/published/net-tls-quick-20261202b.json) an overtaken
        message is late, not lost. A lost one stays missing and counts at the next call;
        the run's verdict (`missing`) judges every message anyway.
        """
        marks: dict[tuple[int, str], int] = {}
        total = 0
        for w in self._live:
            for key, t in w.streams.items():
                mark = self._hole_marks.get((id(w), key))
                if mark is not None:
                    total += t.missing_upto(mark)
                marks[(id(w), key)] = t.high
        self._hole_marks = marks
        return total

    # -------------------------------------------------------------- shipping

    def take_delta(self) -> dict[str, Any]:
        """Samples and counts since the previous call; resets them here."""
        hists = {}
        for name, h in self.hists.items():
            if h.count:
                hists[name] = {"hdr": h.encode(), "clamped": h.clamped}
                h.reset()
        counters = self.take_counters()
        cpu, self.cpu_samples = self.cpu_samples, []
        cpu_outside, self.cpu_samples_outside = self.cpu_samples_outside, []
        return {"host": self.host, "pid": self.pid, "hists": hists, "counters": counters,
                "cpu": cpu, "cpu_outside": cpu_outside, "holes": self.holes()}

    def take_counters(self) -> dict[str, int]:
        """Counter increments since the last call (reset here)."""
        if self.received or self.wire_bytes:
            self.counters["received"] += self.received
            self.counters["wire_bytes"] += self.wire_bytes
            self.received = self.wire_bytes = 0
        counters = dict(self.counters)
        self.counters.clear()
        return counters

    def take_ledger(self) -> dict[str, Any]:
        """Publisher logs and windows (closing open windows now); call once per run."""
        end = now_us()
        for w in list(self._live):
            self.close_window(w, end)
        ledger = {"host": self.host, "pid": self.pid,
                  "publishers": [p.to_dict() for p in self.publishers],
                  "windows": [w.to_dict() for w in self.windows]}
        self.publishers, self.windows = [], []
        return ledger


class Collector:
    """Exact merge of every process's deltas and ledgers; computes the delivery verdict."""

    def __init__(self) -> None:
        self.hists: dict[str, Histogram] = {}
        self.by_host: dict[str, dict[str, Histogram]] = {}
        self.counters: Counter[str] = Counter()
        self.publishers: list[PublisherLog] = []
        self.windows: list[Window] = []
        self.cpu: dict[str, list[float]] = {}  # "host/pid" -> samples (percent of one core)
        self.cpu_outside: dict[str, list[float]] = {}  # the same, outside the judged window
        self.step_cpu: dict[str, list[float]] = {}  # since `start_step()`
        self.holes: dict[str, int] = {}
        self.step: dict[str, Histogram] = {}  # since `start_step()`: the capacity-curve point
        self.step_counters: Counter[str] = Counter()
        self.processes: set[str] = set()

    def add_delta(self, d: dict[str, Any]) -> None:
        proc = f"{d['host']}/{d['pid']}"
        self.processes.add(proc)
        host_hists = self.by_host.setdefault(d["host"], {})
        for name, enc in d["hists"].items():
            h = Histogram.decode(enc["hdr"], int(enc.get("clamped", 0)))
            for target in (self.hists, host_hists, self.step):
                target.setdefault(name, Histogram()).merge(h)
        self.counters.update(d["counters"])
        self.step_counters.update(d["counters"])
        self.cpu.setdefault(proc, []).extend(d["cpu"])
        self.cpu_outside.setdefault(proc, []).extend(d.get("cpu_outside", ()))
        self.step_cpu.setdefault(proc, []).extend(d["cpu"])
        self.holes[proc] = int(d["holes"])

    def add_local(self, rec: Recorder) -> None:
        """`add_delta(rec.take_delta())` without the HdrHistogram encoding and decoding,
        for a local run's live pulls (capacity steps): the round trip blocked the hub for
        10-30 ms at tens of thousands of deliveries per step (gevent's monitor thread
        caught it in take_delta's encode and add_delta's decode, 2026-12-02)."""
        proc = f"{rec.host}/{rec.pid}"
        self.processes.add(proc)
        host_hists = self.by_host.setdefault(rec.host, {})
        for name, h in rec.hists.items():
            if h.count_pending() or h.clamped:
                for target in (self.hists, host_hists, self.step):
                    target.setdefault(name, Histogram()).merge(h)
                h.reset()
        counters = rec.take_counters()
        self.counters.update(counters)
        self.step_counters.update(counters)
        cpu, rec.cpu_samples = rec.cpu_samples, []
        cpu_outside, rec.cpu_samples_outside = rec.cpu_samples_outside, []
        self.cpu.setdefault(proc, []).extend(cpu)
        self.cpu_outside.setdefault(proc, []).extend(cpu_outside)
        self.step_cpu.setdefault(proc, []).extend(cpu)
        self.holes[proc] = rec.holes()

    def add_ledger(self, d: dict[str, Any]) -> None:
        self.processes.add(f"{d['host']}/{d['pid']}")
        self.publishers.extend(PublisherLog.from_dict(p) for p in d["publishers"])
        self.windows.extend(Window.from_dict(w) for w in d["windows"])

    def start_step(self) -> None:
        self.step = {}
        self.step_counters = Counter()
        self.step_cpu = {}

    def step_hist(self, name: str) -> Histogram:
        return self.step.get(name) or Histogram()

    def hist(self, name: str) -> Histogram:
        return self.hists.get(name) or Histogram()

    def latency(self) -> Histogram:
        """All delivery latencies, every kind."""
        total = Histogram()
        for kind in LATENCY_KINDS:
            total.merge(self.hist(kind))
        return total

    def step_latency(self) -> Histogram:
        total = Histogram()
        for kind in LATENCY_KINDS:
            if kind in self.step:
                total.merge(self.step[kind])
        return total

    def verdict(self, grace_us: int) -> Verdict:
        return judge(self.publishers, self.windows, grace_us, now_us())
