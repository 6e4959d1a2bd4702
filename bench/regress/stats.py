"""Statistics of `rtbench compare`/`regress`: a ratio with its CI, a rank test, a verdict.

pyperf's rule: a difference is a regression only when a significance test AND a
minimum effect size agree; when the data cannot tell, say "inconclusive".

Per metric and side we hold repeated samples. Two designs:

- paired (`rtbench regress`: base and head measured back to back, A B B A ...):
  one log-ratio ``log(head_i / base_i)`` per pair; the test is the exact
  Wilcoxon signed-rank test on them, the effect their Hodges-Lehmann estimate
  (median of the Walsh averages) and its CI the matching distribution-free
  interval (order statistics of the Walsh averages), so "CI excludes 1" and
  "p < alpha" agree. Needs >= 6 pairs to ever reach p < 0.05 (2 / 2**n).
- unpaired (`rtbench compare` of two directories, regress against a stored
  baseline): ``median(head) / median(base)``, a percentile-bootstrap CI, the
  two-sided Mann-Whitney U test.

Inconclusive is decided relative to the effect that matters, not by a fixed
spread limit: a "pass" must rule out a regression of `rule_out` x threshold
(the CI's bad end stays below it). Noise that the threshold dwarfs passes;
noise as large as the effect we look for cannot pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import mannwhitneyu, wilcoxon  # type: ignore[import-untyped]

Verdict = Literal["regression", "improvement", "pass", "warn", "inconclusive", "fail"]
ALPHA = 0.05
BOOTSTRAP = 4000
# a pass must exclude a regression this many times the threshold (CI's bad end below it)
RULE_OUT = 2.0


@dataclass(frozen=True)
class Metric:
    """What a metric is and how much worse it may get before it counts.

    `threshold` is a relative change (0.10 = 10%) in the bad direction;
    `kind`: "ratio" (test + effect), "warn" (a ratio metric only ever warned
    about), "count" (any nonzero value in head fails: lost/duplicated messages).
    `decisive`: when this metric cannot decide, the whole check is inconclusive.
    Latency is not: it is timed on the load generator's core, which on a shared
    machine is as busy as its neighbours make it (paired p50 ratios of identical
    code: sd(log) 0.09 on a quiet box, 0.30 with neighbours' benchmarks running,
    against a 15% threshold), and it barely moves with server CPU cost at the
    check's light load (+20% CPU per delivery: p50 ratio 0.97-1.2). A latency
    regression that IS significant and past its threshold still fails the check.
    """

    name: str
    higher_is_worse: bool
    threshold: float
    kind: Literal["ratio", "warn", "count"] = "ratio"
    unit: str = ""
    decisive: bool = True


# Defaults from issue 6; bench/regress/validate.py measures how they behave.
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("throughput", False, 0.10, unit="deliveries/cpu-s"),
    Metric("cpu_per_delivery", True, 0.10, unit="µs"),
    Metric("p50", True, 0.15, unit="ms", decisive=False),
    Metric("p90", True, 0.25, unit="ms", decisive=False),
    Metric("p95", True, 0.25, unit="ms", decisive=False),
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
    spread: float | None  # relative spread (IQR / median): larger side's, or the pair ratios'
    note: str = ""
    test: str = ""  # "wilcoxon" (paired) or "mann-whitney"

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


def _signed_rank_null(n: int) -> np.ndarray:
    """P(W+ <= w) for w = 0 .. n(n+1)/2 under H0 (exact: subsets of the ranks 1..n)."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1
    for r in range(1, n + 1):
        counts[r:] = counts[r:] + counts[:-r].copy()
    return np.cumsum(counts) / 2.0**n


def hodges_lehmann(d: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, CI low, CI high) of the centre of `d`: the Wilcoxon-matched interval.

    The estimate is the median of the Walsh averages (d_i + d_j) / 2, i <= j; the
    CI their order statistics at the exact signed-rank critical value. NaN bounds
    when `d` is too short for any interval at `level` (n < 6 at 95%).
    """
    a = np.asarray(d, dtype=float)
    n = a.size
    i, j = np.triu_indices(n)
    walsh = np.sort((a[i] + a[j]) / 2)
    est = float(np.median(walsh))
    cdf = _signed_rank_null(n)
    c = int(np.searchsorted(cdf, (1 - level) / 2, side="right")) - 1  # P(W+ <= c) <= alpha/2
    if c < 0:
        return est, math.nan, math.nan
    return est, float(walsh[c]), float(walsh[walsh.size - 1 - c])


def _bad(ratio: float, higher_is_worse: bool) -> float:
    """A ratio as a signed relative change: > 0 is worse whatever the metric's direction."""
    return (ratio - 1) if higher_is_worse else (1 - ratio)


def compare_metric(metric: Metric, base: Sequence[float], head: Sequence[float], *,
                   threshold: float | None = None, transport: str = "", scenario: str = "",
                   alpha: float = ALPHA, rule_out: float = RULE_OUT,
                   paired: bool = False) -> Comparison:
    """The verdict for one metric. `threshold` overrides the metric's own.

    `paired`: base[i] and head[i] were measured back to back (see the module doc).
    - count metrics: "fail" when head has any nonzero sample, else "pass";
    - "regression"/"improvement": p < alpha AND the estimated change is beyond
      the threshold in that direction (a "warn" metric says "warn");
    - "inconclusive": too few samples, a change past the threshold that the test
      does not confirm, or a CI whose bad end reaches `rule_out` x threshold
      (the run cannot rule out a regression twice the size we look for);
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
    paired = paired and len(base) == len(head) and min(base + head, default=0) > 0
    few = 6 if paired else 3
    if len(base) < few or len(head) < few:
        return Comparison(verdict="inconclusive", base=None, head=None, ratio=None, ci_low=None,
                          ci_high=None, p_value=None, spread=None,
                          note=f"fewer than {few} {'pairs' if paired else 'runs on a side'}",
                          **common)
    mb, mh = float(np.median(base)), float(np.median(head))
    if paired:
        d = np.log(np.asarray(head) / np.asarray(base))
        est, lo_d, hi_d = hodges_lehmann(d, 1 - alpha)
        ratio, lo, hi = math.exp(est), math.exp(lo_d), math.exp(hi_d)
        p = 1.0 if not np.any(d) else float(wilcoxon(d, alternative="two-sided").pvalue)
        spread, test = rel_spread(np.exp(d)), "wilcoxon"
    else:
        ratio = mh / mb if mb else math.inf
        lo, hi = bootstrap_ratio_ci(base, head, 1 - alpha)
        p = float(mannwhitneyu(head, base, alternative="two-sided").pvalue)
        spread, test = max(rel_spread(base), rel_spread(head)), "mann-whitney"
    bad = _bad(ratio, metric.higher_is_worse)
    worst_end = max(_bad(lo, metric.higher_is_worse), _bad(hi, metric.higher_is_worse))
    verdict: Verdict
    note = ""
    if p < alpha and bad > thr:
        verdict = "warn" if metric.kind == "warn" else "regression"
    elif p < alpha and -bad > thr:
        verdict = "improvement"
    elif metric.kind == "warn":
        verdict = "pass"  # a warn-only metric never blocks, nor makes the check inconclusive
    elif bad > thr:
        verdict, note = "inconclusive", "past the threshold but not significant"
    elif not worst_end <= rule_out * thr:  # NaN (no CI) is not a pass either
        verdict, note = "inconclusive", (f"too noisy: cannot rule out {rule_out * thr:+.0%} "
                                         f"(spread {spread:.0%})")
    else:
        verdict = "pass"
        if p < alpha:
            note = "significant change within the threshold"
    return Comparison(verdict=verdict, base=mb, head=mh, ratio=ratio, ci_low=lo, ci_high=hi,
                      p_value=p, spread=spread, note=note, test=test, **common)


def overall(comparisons: Sequence[Comparison]) -> Verdict:
    """The check's answer: any failure/regression > inconclusive > pass.

    Only a decisive metric's "inconclusive" makes the check inconclusive (any
    metric's, when no decisive one was compared)."""
    verdicts = {c.verdict for c in comparisons}
    if verdicts & {"fail", "regression"}:
        return "regression"
    decisive = [c for c in comparisons if c.metric not in METRICS or METRICS[c.metric].decisive]
    if not comparisons or any(c.verdict == "inconclusive" for c in decisive or comparisons):
        return "inconclusive"
    return "pass"
