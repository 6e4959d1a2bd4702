"""bench.regress.stats on synthetic samples with known answers (no servers: pure statistics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.regress.stats import (
    METRICS,
    bootstrap_ratio_ci,
    compare_metric,
    hodges_lehmann,
    overall,
    rel_spread,
)

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


def drifting_pairs(effect: float, n: int, seed: int) -> tuple[list[float], list[float]]:
    """Back-to-back pairs on a machine whose speed wanders ±30% between pairs, 2% noise."""
    rng = np.random.default_rng(seed)
    speed = rng.uniform(0.7, 1.3, n)
    base = 100 * speed * rng.normal(1, 0.02, n)
    head = 100 * effect * speed * rng.normal(1, 0.02, n)
    return list(base), list(head)


def test_paired_test_sees_through_drift_that_blinds_the_unpaired_one() -> None:
    base, head = drifting_pairs(1.2, 8, 21)
    paired = compare_metric(CPU, base, head, paired=True)
    assert paired.verdict == "regression" and paired.test == "wilcoxon"
    assert paired.ratio is not None and 1.15 < paired.ratio < 1.25
    assert paired.ci_low is not None and paired.ci_low > 1.1
    assert compare_metric(CPU, base, head).verdict == "inconclusive"  # unpaired: drift swamps it


def test_paired_identical_code_passes() -> None:
    verdicts = [compare_metric(CPU, *drifting_pairs(1.0, 8, s), paired=True).verdict
                for s in range(40)]
    assert "regression" not in verdicts
    assert verdicts.count("pass") >= 38


def test_paired_needs_six_pairs() -> None:
    # with n pairs the exact signed-rank test cannot go below p = 2 / 2**n: 0.0625 at 5
    base, head = drifting_pairs(1.5, 5, 3)
    c = compare_metric(CPU, base, head, paired=True)
    assert c.verdict == "inconclusive" and "fewer than 6 pairs" in c.note


def test_hodges_lehmann_known_answer() -> None:
    # d = 1..7: 28 Walsh averages from 1 to 7, median 4; exact 95% interval = 3rd and 26th
    est, lo, hi = hodges_lehmann([1, 2, 3, 4, 5, 6, 7])
    assert est == 4
    assert (lo, hi) == (2.0, 6.0)
    assert all(math.isnan(x) for x in hodges_lehmann([1, 2, 3, 4, 5])[1:])


def test_noise_as_large_as_the_effect_is_inconclusive() -> None:
    # no significant change, estimate within the threshold, but the CI cannot exclude +20%
    base = [100, 100, 100, 100, 100, 100, 100, 100]
    head = [70, 135, 95, 125, 80, 118, 102, 90]
    c = compare_metric(CPU, base, head, paired=True)
    assert c.verdict == "inconclusive" and "cannot rule out +20%" in c.note
    assert compare_metric(CPU, base, head, paired=True, rule_out=5).verdict == "pass"


def test_noisy_latency_alone_does_not_make_the_check_inconclusive() -> None:
    cpu = compare_metric(CPU, *drifting_pairs(1.0, 8, 5), paired=True)
    p50 = compare_metric(METRICS["p50"], [5, 5, 5, 5, 5, 5, 5, 5],
                         [3, 9, 5, 8, 4, 7, 5, 4], paired=True)
    assert cpu.verdict == "pass" and p50.verdict == "inconclusive"
    assert overall([cpu, p50]) == "pass"
    assert overall([p50]) == "inconclusive"  # no decisive metric compared at all
    slow = compare_metric(METRICS["p50"], *drifting_pairs(1.5, 8, 6), paired=True)
    assert overall([cpu, slow]) == "regression"  # a clear latency regression still fails
