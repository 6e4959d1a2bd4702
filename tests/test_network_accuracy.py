"""bench.experiments.netem_accuracy's arithmetic and bench.network.probe.summarize (plain calls);
the measurement itself runs on real namespaces in `python -m bench.experiments.netem_accuracy`."""

from __future__ import annotations

from typing import Any

import pytest

from bench.experiments import netem_accuracy as na
from bench.network import BUILTIN, Profile
from bench.network.probe import summarize


def test_summarize() -> None:
    s = summarize([float(v) for v in range(1, 101)])
    assert (s["count"], s["min"], s["p50"], s["p90"], s["p99"], s["max"]) == (
        100, 1.0, 50.5, 90.0, 99.0, 100.0)
    assert summarize([])["p50"] is None


def test_requested_rtt_with_jitter_and_serialisation() -> None:
    req = na._requested(Profile("j", delay_ms=50, jitter_ms=10), 0)
    assert req == {"rtt_ms": 100.0, "min_ms": 80.0, "max_ms": 120.0}
    wan = na._requested(BUILTIN["wan"], 1500)  # 2 x 1500 bytes at 50 Mbit/s = 0.48 ms
    assert wan["rtt_ms"] == pytest.approx(100.48)


def stats(tx: int, late_sum: int, early_sum: int, over: int, late_max: int) -> dict[str, Any]:
    d = {"tx": tx, "late_ns_sum": late_sum, "early_ns_sum": early_sum,
         "late_over_100us": over, "late_ns_max": late_max}
    return {"client_to_server": d, "server_to_client": dict(d), "cpu_s": 0.1}


def test_element_timing_error_over_a_window() -> None:
    late = na._late(stats(10, 1_000_000, 0, 1, 200_000),
                    stats(110, 3_000_000, 500_000, 3, 300_000))
    assert late == {"packets": 200, "mean_error_us": 15.0, "mean_us": 20.0,
                    "max_us_since_start": 300.0, "share_over_100us": 0.02}
