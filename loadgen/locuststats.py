"""Deliveries logged into Locust's request statistics in batches.

Locust's per-request API (`events.request.fire` -> `RequestStats.log_request`, two
`StatsEntry.log` calls) costs 4-5 µs of load-generator CPU per call. A push transport
delivers tens of thousands of messages per second to one process, so firing one
request event per delivery made Locust's bookkeeping the largest cost of ingesting
an SSE or long-poll stream, larger than reading and decoding it. `StatsBatch` keeps
the deliveries of the last fraction of a second and logs them in one step per
(type, name), leaving every statistic exactly as per-delivery logging would (the
same counts, sums, min/max, content lengths and bucketed response times; tested
against `StatsEntry.log` in tests/test_locuststats.py), except that a batch's
requests are counted in the second it is flushed (`num_reqs_per_sec`, up to
`FLUSH_INTERVAL` late).

What batching gives up: `events.request` listeners other than Locust's own stats do
not see successful deliveries (failures still fire one event each). A run that needs
them uses `--request-events on`. rtbench's own latencies never come from these
statistics: they are the lossless HDR histograms of the result file.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from typing import Any

import gevent
import locust.stats
from gevent.event import Event
from locust.stats import RequestStats, StatsEntry

FLUSH_INTERVAL = 0.25  # seconds; Locust's UI and worker reports read every 2-3 s


class _Pending:
    __slots__ = ("length", "times")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.length = 0


def log_many(entry: StatsEntry, times: list[float], length: int, now: float) -> None:
    """`entry.log(t, ...)` for every `t` in `times`, in one step (all at `now`)."""
    if times:
        _Summary(times, length).log(entry, now)


def _monotone_buckets(times: list[float], bucket: Callable[[float], int]) -> Counter[int]:
    """`Counter(map(bucket, times))` for a non-decreasing `bucket`: over the sorted
    times each bucket is one stretch, whose end is found by galloping, then bisection,
    so `bucket` runs about 2 log2(length) times per stretch instead of once per time
    (Locust's rounds to tens, hundreds, thousands with `round(x, -n)`: 0.25 µs a call)."""
    s = sorted(times)
    counts: Counter[int] = Counter()
    i, n = 0, len(s)
    while i < n:
        key = bucket(s[i])
        lo, step = i + 1, 1  # s[i:lo] are in `key`'s bucket
        while True:
            hi = lo + step - 1
            if hi >= n:
                hi = n
                break
            if bucket(s[hi]) != key:  # past it: the end is in [lo, hi)
                break
            lo, step = hi + 1, step * 2
        j = bisect_right(s, key, lo, hi, key=bucket)
        counts[key] += j - i
        i = j
    return counts


_LOCUST_BUCKET = locust.stats.bucket_response_time  # non-decreasing: round() is
_PROBES = (-1.5, 0.0, 0.5, 1.5, 2.5, 99.4, 99.5, 99.6, 100.0, 104.9, 105.0, 115.0, 995.0,
           999.9, 1000.0, 1050.0, 1150.0, 9950.0, 9999.9, 10000.0, 10500.0, 11500.0, 58760.5)
# Locust's own function, not one a locustfile put there before this import
_LOCUST_BUCKET_KNOWN = (_LOCUST_BUCKET.__module__ == "locust.stats" and
                        list(map(_LOCUST_BUCKET, _PROBES)) == sorted(map(_LOCUST_BUCKET, _PROBES)))


def bucket_counts(times: list[float]) -> Counter[int]:
    """How many of `times` fall in each of Locust's response-time buckets.

    `locust.stats.bucket_response_time` is looked up here (Locust lets users replace
    it) and called once per distinct time; Locust's own function, which never
    decreases, once per bucket stretch of the sorted times (same result, tested)."""
    bucket = locust.stats.bucket_response_time
    if bucket is _LOCUST_BUCKET and _LOCUST_BUCKET_KNOWN:
        return _monotone_buckets(times, bucket)
    counts: Counter[int] = Counter()
    for value, n in Counter(times).items():
        counts[bucket(value)] += n
    return counts


class _Summary:
    """What `log_many` adds to an entry, computed once for the entry and the total."""

    __slots__ = ("buckets", "count", "high", "length", "low", "total")

    def __init__(self, times: list[float], length: int) -> None:
        self.count = len(times)
        self.total = sum(times)
        self.low, self.high = min(times), max(times)
        self.length = length
        self.buckets = bucket_counts(times)

    def log(self, entry: StatsEntry, now: float) -> None:
        t = int(now)
        if (entry.use_response_times_cache and entry.last_request_timestamp
                and t > int(entry.last_request_timestamp)):
            entry._cache_response_times(t - 1)
        entry.num_requests += self.count
        entry.num_reqs_per_sec[t] += self.count
        entry.last_request_timestamp = now
        # Locust annotates these as int but stores what request events carry (float ms)
        stored: Any = entry
        stored.total_response_time += self.total
        low = entry.min_response_time
        stored.min_response_time = self.low if low is None else min(low, self.low)
        stored.max_response_time = max(entry.max_response_time, self.high)
        counts = entry.response_times
        for key, n in self.buckets.items():
            counts[key] += n
        entry.total_content_length += self.length


class StatsBatch:
    """Successful deliveries for Locust's `stats`, logged every `FLUSH_INTERVAL`."""

    def __init__(self, stats: RequestStats) -> None:
        self.stats = stats
        self._pending: dict[tuple[str, str], _Pending] = {}

    def add(self, request_type: str, name: str, response_time_ms: float, length: int) -> None:
        pending = self._pending.get((name, request_type))
        if pending is None:
            pending = self._pending[(name, request_type)] = _Pending()
        pending.times.append(response_time_ms)
        pending.length += length

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        now = time.time()
        for (name, method), p in pending.items():
            if p.times:
                summary = _Summary(p.times, p.length)
                summary.log(self.stats.get(name, method), now)
                summary.log(self.stats.total, now)

    def run(self, stop: Event) -> gevent.Greenlet:
        """A greenlet flushing every `FLUSH_INTERVAL` until `stop`, then once more."""

        def loop() -> None:
            while not stop.wait(FLUSH_INTERVAL):
                self.flush()
            self.flush()

        return gevent.spawn(loop)
