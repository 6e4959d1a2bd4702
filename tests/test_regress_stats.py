"""bench.stats on synthetic samples with known answers (no servers: pure statistics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.stats import METRICS, bootstrap_ratio_ci, compare_metric, overall, rel_spread

CPU = METRICS["cpu_per_delivery"]  # higher is worse, +10%
THROUGHPUT = METRICS["throughput"]  # lower is worse, -10%


def noisy(center: float, n: int, sd: float, seed: int) -> list[float]:
    return list(np.random.default_rng(seed).normal(center, sd * center, n))


def test_clear_regression() -> None:
    c = compare_metric(CPU, noisy(100, 8, 0.03, 1), noisy(130, 8, 0.03, 2))
    assert c.verdict == "regression"
    assert c.p_value is not None and c.p_value < 0.01
    assert c.ratio is not None and 1.2 < c.ratio < 1.4
    assert c.ci_low is not None and c.ci_low > 1.1


def test_clear_improvement() -> None:
    c = compare_metric(CPU, noisy(100, 8, 0.03, 3), noisy(70, 8, 0.03, 4))
    assert c.verdict == "improvement"
    lower = compare_metric(THROUGHPUT, noisy(100, 8, 0.03, 3), noisy(70, 8, 0.03, 4))
    assert lower.verdict == "regression"  # less throughput is the bad direction


def test_pure_noise_passes() -> None:
    verdicts = [compare_metric(CPU, noisy(100, 8, 0.05, 2 * s), noisy(100, 8, 0.05, 2 * s + 1))
                for s in range(40)]
    # same distribution on both sides: a 10% effect at 5% noise is never "significant and big"
    assert not [c for c in verdicts if c.verdict == "regression"]
    assert sum(c.verdict == "pass" for c in verdicts) >= 38
    covered = sum(c.ci_low is not None and c.ci_high is not None and c.ci_low < 1 < c.ci_high
                  for c in verdicts)
    assert covered >= 32  # a 95% CI should hold the true ratio (1) in most draws


def test_tiny_significant_change_below_threshold_passes() -> None:
    c = compare_metric(CPU, noisy(100, 10, 0.005, 7), noisy(103, 10, 0.005, 8))
    assert c.p_value is not None and c.p_value < 0.01
    assert c.verdict == "pass"
    assert "significant" in c.note


def test_big_change_without_significance_is_inconclusive() -> None:
    c = compare_metric(CPU, [100, 140, 60, 100], [150, 90, 200, 120])
    assert c.p_value is not None and c.p_value >= 0.05
    assert c.verdict == "inconclusive"


def test_too_few_runs_inconclusive() -> None:
    assert compare_metric(CPU, [1.0, 2.0], [3.0, 4.0, 5.0]).verdict == "inconclusive"


def test_p99_only_warns() -> None:
    c = compare_metric(METRICS["p99"], noisy(10, 8, 0.02, 9), noisy(20, 8, 0.02, 10))
    assert c.verdict == "warn"
    assert overall([c]) == "pass"


def test_any_lost_message_fails() -> None:
    assert compare_metric(METRICS["lost"], [0, 0, 0], [0, 1, 0]).verdict == "fail"
    assert compare_metric(METRICS["duplicates"], [2, 0], [0, 0, 0]).verdict == "pass"


def test_threshold_override() -> None:
    base, head = noisy(100, 8, 0.01, 11), noisy(112, 8, 0.01, 12)
    assert compare_metric(CPU, base, head).verdict == "regression"
    assert compare_metric(CPU, base, head, threshold=0.2).verdict == "pass"


def test_bootstrap_ci_is_reproducible_and_covers_the_ratio() -> None:
    base, head = noisy(50, 10, 0.05, 13), noisy(60, 10, 0.05, 14)
    lo, hi = bootstrap_ratio_ci(base, head)
    assert (lo, hi) == bootstrap_ratio_ci(base, head)
    assert lo < float(np.median(head) / np.median(base)) < hi


def test_rel_spread() -> None:
    assert rel_spread([5, 5, 5]) == 0
    assert math.isinf(rel_spread([0, 0, 0]))
    assert rel_spread([1, 2, 3, 4, 5]) == pytest.approx(2 / 3)


def test_overall_order() -> None:
    reg = compare_metric(CPU, noisy(100, 8, 0.03, 1), noisy(130, 8, 0.03, 2))
    inc = compare_metric(CPU, [1.0], [1.0])
    ok = compare_metric(CPU, noisy(100, 8, 0.05, 5), noisy(100, 8, 0.05, 6))
    assert overall([ok, inc, reg]) == "regression"
    assert overall([ok, inc]) == "inconclusive"
    assert overall([ok]) == "pass"
    assert overall([]) == "inconclusive"
