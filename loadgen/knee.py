"""Where a rate ramp's CPU knee lies: deliveries per second at the server's CPU limit.

A ramp that ends because the server's cores reached the CPU limit used to report
the deliveries/s of the step that crossed it. Two things moved that figure more
than the server did (results/published/quick-headline-20261202b.json, three
`make bench` runs, every ramp step):
- the crossing step overshoots the limit by anything up to a step's worth (the
  knee steps read 91 % to 99.5 % server CPU), so the figure depended on where
  the ramp's rates happened to fall;
- one 2-second step's CPU share is noisy: the same rate measured twice read
  91.3 % and 82.8 %.

So the knee of a CPU-ended ramp is read off a straight line fitted (least
squares) through every clean step between `FIT_LOW` and `FIT_HIGH` % server CPU:
`cpu % = a + b x deliveries/s`, solved for the limit. More steps carry the
estimate, and none of them needs to land on the limit. Over those three runs'
steps it narrowed the spread of the knees from 23 to 14 % (ws) and from 25 to
15 % (grpc); sse stayed at 29-32 %, where one run's server was cheaper per
delivery at every load (26-35 against 33-35 µs), which no estimator removes.

The estimate never exceeds the most deliveries/s a clean step carried, and
without two clean steps spanning `MIN_SPAN` points of CPU the ramp's best step
is the knee, as before (`method` says which).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

FIT_LOW = 40.0  # % server CPU: below it, fixed costs (timers, heartbeats) weigh in the share
FIT_HIGH = 98.0  # at or over it the share is clipped by the core: the step is saturated
MIN_SPAN = 10.0  # points of CPU the fitted steps must span for a slope worth solving
CARRIED = 0.95  # delivered / offered at least this: the step carried its load


@dataclass(frozen=True, slots=True)
class CpuFit:
    """The fitted line and where it meets the limit."""

    capacity_per_s: float  # deliveries/s at the CPU limit (capped by the best clean step)
    intercept_percent: float  # a: the line's CPU share at no load
    percent_per_kdelivery: float  # b x 1000: CPU points per 1,000 deliveries/s
    steps: list[int]  # the steps the line went through
    r2: float  # how straight the steps are (1: on the line)
    capped: bool  # the line met the limit past the best clean step: that step's load

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def clean(step: dict[str, Any]) -> bool:
    """A step whose load the server carried: nothing lost, valid load generator, p99 kept."""
    stopped = step.get("stopped_because")
    offered = step.get("offered_per_s") or 0.0
    return bool(step.get("loadgen", {}).get("valid")) \
        and not (step.get("holes") or step.get("slow_consumer_closes")
                 or step.get("connect_failures")) \
        and (stopped is None or str(stopped).startswith("server CPU")) \
        and (step.get("delivered_per_s") or 0.0) >= CARRIED * offered


def cpu_fit(steps: Sequence[dict[str, Any]], limit: float) -> CpuFit | None:
    """The line through the clean steps between FIT_LOW and FIT_HIGH % CPU, solved for `limit`.

    None when fewer than two such steps span MIN_SPAN points of CPU, or the line
    does not rise with the load.
    """
    ok = [s for s in steps if clean(s)]
    pts = [s for s in ok if s.get("server_cpu_percent") is not None
           and FIT_LOW <= float(s["server_cpu_percent"]) < FIT_HIGH]
    ys = [float(s["server_cpu_percent"]) for s in pts]
    if len(pts) < 2 or max(ys) - min(ys) < MIN_SPAN:
        return None
    xs = [float(s["delivered_per_s"]) for s in pts]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    if sxx <= 0 or sxy <= 0:
        return None
    b = sxy / sxx
    a = my - b * mx
    syy = sum((y - my) ** 2 for y in ys)
    r2 = sxy * sxy / (sxx * syy) if syy > 0 else 1.0
    at_limit = (limit - a) / b
    best = max(float(s["delivered_per_s"]) for s in ok)
    return CpuFit(capacity_per_s=min(at_limit, best), intercept_percent=a,
                  percent_per_kdelivery=b * 1000, steps=[int(s["step"]) for s in pts],
                  r2=r2, capped=at_limit > best)
