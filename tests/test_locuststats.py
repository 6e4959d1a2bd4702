"""Batched Locust stats (loadgen/locuststats.py) equal per-delivery `StatsEntry.log`.

gevent and Locust monkey-patch the process they are imported in, so the checks run in
a child process (`python tests/test_locuststats.py`), which exits non-zero with the
failing assertion.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_batched_locust_stats_in_a_child_process() -> None:
    proc = subprocess.run([sys.executable, __file__], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["equal", "bucketing", "flusher"]


# ----------------------------------------------------------- the child process

if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import math
    import random
    from typing import Any

    import gevent
    import locust.stats
    from gevent.event import Event
    from locust.stats import RequestStats, StatsEntry

    from loadgen.locuststats import StatsBatch, log_many



# fields that depend on when each request was logged, not on what was logged
TIMING = {"last_request_timestamp", "start_time", "num_reqs_per_sec", "num_fail_per_sec"}


class Approx(float):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, float) and math.isclose(self, other, rel_tol=1e-9)

    __hash__ = float.__hash__


def samples(n: int, seed: str) -> list[tuple[float, int]]:
    rng = random.Random(seed)
    return [(rng.choice((0.0, 0.4, 3.7, 99.6, 147.2, 3432.0, 58760.5, rng.random() * 500)),
             rng.randrange(50, 500)) for _ in range(n)]


def comparable(entry: StatsEntry) -> dict[str, Any]:
    d = {k: v for k, v in entry.serialize().items() if k not in TIMING}
    # float sums in another order: equal to rounding, not bit for bit
    d["total_response_time"] = Approx(d["total_response_time"])
    d["requests_logged"] = sum(entry.num_reqs_per_sec.values())
    return d


def check_batched_stats_equal_per_request_logging() -> None:
    one, batched = RequestStats(), RequestStats()
    batch = StatsBatch(batched)
    for round_ in range(3):  # several flushes add up like one
        for name, method in (("message", "ws"), ("direct", "ws"), ("message", "sse")):
            for rt, length in samples(200, seed=f"{round_}{name}{method}"):
                one.log_request(method, name, rt, length)
                batch.add(method, name, rt, length)
        batch.flush()
    assert set(one.entries) == set(batched.entries)
    for key, entry in one.entries.items():
        assert comparable(batched.entries[key]) == comparable(entry), key
    assert comparable(batched.total) == comparable(one.total)
    assert batched.total.num_requests == 1800
    batch.flush()  # nothing pending: nothing changes
    assert batched.total.num_requests == 1800


def check_log_many_honours_a_replaced_bucketing() -> None:
    original = locust.stats.bucket_response_time
    locust.stats.bucket_response_time = lambda rt: 7
    try:
        _bucketing()
    finally:
        locust.stats.bucket_response_time = original


def _bucketing() -> None:
    entry = StatsEntry(RequestStats(), "m", "ws")
    log_many(entry, [1.0, 250.0], 10, now=1000.5)
    assert dict(entry.response_times) == {7: 2}
    assert entry.num_reqs_per_sec[1000] == 2 and entry.total_content_length == 10
    assert (entry.min_response_time, entry.max_response_time) == (1.0, 250.0)


def check_bucket_counts_equal_locusts_function() -> None:
    from collections import Counter

    from loadgen.locuststats import _LOCUST_BUCKET_KNOWN, bucket_counts

    assert _LOCUST_BUCKET_KNOWN  # else the C-loop path is never taken: nothing tested here
    rng = random.Random("buckets")
    edges = [e + d for e in (0, 100, 1000, 10000, 100000) for d in (-5.5, -0.5, -1e-9, 0, 0.5, 5)]
    halves = [k + 0.5 for k in range(-3, 120)] + [k * 5.0 for k in range(0, 4000)]
    for times in (edges, halves, [rng.lognormvariate(3, 3) for _ in range(20000)],
                  [rng.uniform(-50, 200) for _ in range(5000)], [3.0] * 10, []):
        want = Counter(locust.stats.bucket_response_time(t) for t in times)
        assert bucket_counts(list(times)) == want


def check_the_flusher_logs_pending_deliveries_and_once_more_at_stop() -> None:
    stats = RequestStats()
    batch, stop = StatsBatch(stats), Event()
    g = batch.run(stop)
    batch.add("ws", "message", 1.5, 100)
    with gevent.Timeout(5):
        while stats.total.num_requests == 0:
            gevent.sleep(0.01)
    batch.add("ws", "message", 2.5, 100)
    stop.set()
    g.join(timeout=5)
    assert g.dead and stats.get("message", "ws").num_requests == 2


if __name__ == "__main__":
    check_batched_stats_equal_per_request_logging()
    print("equal")
    check_log_many_honours_a_replaced_bucketing()
    check_bucket_counts_equal_locusts_function()
    print("bucketing")
    check_the_flusher_logs_pending_deliveries_and_once_more_at_stop()
    print("flusher")
