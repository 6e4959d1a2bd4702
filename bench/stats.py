"""Statistics of `rtbench compare`/`regress`: ratio with a bootstrap CI, a rank test, a verdict.

pyperf's rule: a difference is a regression only when a significance test AND a
minimum effect size agree; when the data cannot tell, say "inconclusive".

Per metric and side we hold repeated samples (one per run). The effect is
``median(head) / median(base)``; its CI is a percentile bootstrap (sides
resampled independently: runs are interleaved but not paired by construction);
the test is the two-sided Mann-Whitney U (exact for small samples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import mannwhitneyu  # type: ignore[import-untyped]

Verdict = Literal["regression", "improvement", "pass", "warn", "inconclusive", "fail"]
ALPHA = 0.05
BOOTSTRAP = 4000


@dataclass(frozen=True)
class Metric:
    """What a metric is and how much worse it may get before it counts.

    `threshold` is a relative change (0.10 = 10%) in the bad direction;
    `kind`: "ratio" (test + effect), "warn" (a ratio metric only ever warned
    about), "count" (any nonzero value in head fails: lost/duplicated messages).
    """

    name: str
    higher_is_worse: bool
    threshold: float
    kind: Literal["ratio", "warn", "count"] = "ratio"
    unit: str = ""


# Defaults from issue 6; bench/validate_regress.py measures how they behave.
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("throughput", False, 0.10, unit="deliveries/cpu-s"),
    Metric("cpu_per_delivery", True, 0.10, unit="µs"),
    Metric("p50", True, 0.15, unit="ms"),
    Metric("p90", True, 0.25, unit="ms"),
    Metric("p95", True, 0.25, unit="ms"),
    Metric("p99", True, 0.25, "warn", unit="ms"),
    Metric("lost", True, 0.0, "count", unit="messages"),
    Metric("duplicates", True, 0.0, "count", unit="messages"),
)}


@dataclass(frozen=True)
class Comparison:
    transport: str
    scenario: str
    metric: str
    verdict: Verdict
    n_base: int
    n_head: int
    base: float | None  # medians
    head: float | None
    ratio: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    threshold: float
    spread: float | None  # larger relative spread (IQR / median) of the two sides
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_ratio_ci(base: Sequence[float], head: Sequence[float], level: float = 0.95,
                       n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap CI of median(head)/median(base); seeded, so reproducible."""
    rng = np.random.default_rng(seed)
    b = np.asarray(base, dtype=float)
    h = np.asarray(head, dtype=float)
    mb = np.median(rng.choice(b, (n, b.size)), axis=1)
    mh = np.median(rng.choice(h, (n, h.size)), axis=1)
    ok = mb > 0
    ratios = mh[ok] / mb[ok]
    if ratios.size == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(ratios, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def rel_spread(xs: Sequence[float]) -> float:
    """IQR / median: a robust relative spread (0 for a constant, inf if the median is 0)."""
    a = np.asarray(xs, dtype=float)
    med = float(np.median(a))
    q1, q3 = np.quantile(a, [0.25, 0.75])
    return float((q3 - q1) / abs(med)) if med else math.inf


def compare_metric(metric: Metric, base: Sequence[float], head: Sequence[float], *,
                   threshold: float | None = None, transport: str = "", scenario: str = "",
                   alpha: float = ALPHA, max_spread: float = 0.5) -> Comparison:
    """The verdict for one metric. `threshold` overrides the metric's own.

    - count metrics: "fail" when head has any nonzero sample, else "pass";
    - "regression"/"improvement": Mann-Whitney p < alpha AND the median ratio is
      beyond the threshold in that direction (a "warn" metric says "warn");
    - "inconclusive": fewer than 3 samples a side, a side too spread out, or not
      a median change past the threshold that the test does not confirm;
    - "pass" otherwise (a significant change smaller than the threshold passes).
    """
    thr = metric.threshold if threshold is None else threshold
    base, head = [float(x) for x in base], [float(x) for x in head]
    common: dict[str, Any] = {"transport": transport, "scenario": scenario,
                              "metric": metric.name, "n_base": len(base), "n_head": len(head),
                              "threshold": thr}
    if metric.kind == "count":
        worst = max(head, default=0.0)
        return Comparison(verdict="fail" if worst > 0 else "pass",
                          base=max(base, default=None), head=worst if head else None,
                          ratio=None, ci_low=None, ci_high=None, p_value=None, spread=None,
                          note=f"{worst:g} {metric.unit} in a head run" if worst > 0 else "",
                          **common)
    if len(base) < 3 or len(head) < 3:
        return Comparison(verdict="inconclusive", base=None, head=None, ratio=None, ci_low=None,
                          ci_high=None, p_value=None, spread=None,
                          note="fewer than 3 runs on a side", **common)
    mb, mh = float(np.median(base)), float(np.median(head))
    ratio = mh / mb if mb else math.inf
    lo, hi = bootstrap_ratio_ci(base, head)
    p = float(mannwhitneyu(head, base, alternative="two-sided").pvalue)
    spread = max(rel_spread(base), rel_spread(head))
    # "worse" as a signed relative change: > 0 is bad whatever the metric's direction
    bad = (ratio - 1) if metric.higher_is_worse else (1 - ratio)
    verdict: Verdict
    note = ""
    if p < alpha and bad > thr:
        verdict = "warn" if metric.kind == "warn" else "regression"
    elif p < alpha and -bad > thr:
        verdict = "improvement"
    elif metric.kind == "warn":
        verdict = "pass"  # a warn-only metric never blocks, nor makes the check inconclusive
        if spread > max_spread:
            note = f"spread {spread:.0%}"
    elif spread > max_spread:
        verdict, note = "inconclusive", f"spread {spread:.0%} above {max_spread:.0%}"
    elif bad > thr:
        verdict, note = "inconclusive", "past the threshold but not significant"
    else:
        verdict = "pass"
        if p < alpha:
            note = "significant change within the threshold"
    return Comparison(verdict=verdict, base=mb, head=mh, ratio=ratio, ci_low=lo, ci_high=hi,
                      p_value=p, spread=spread, note=note, **common)


def overall(comparisons: Sequence[Comparison]) -> Verdict:
    """The check's answer: any failure/regression > inconclusive > pass."""
    verdicts = {c.verdict for c in comparisons}
    if verdicts & {"fail", "regression"}:
        return "regression"
    if "inconclusive" in verdicts or not comparisons:
        return "inconclusive"
    return "pass"
