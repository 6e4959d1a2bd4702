"""The CPU knee's line (loadgen/knee.py): where the server's CPU meets its limit."""

from __future__ import annotations

from typing import Any

import pytest

from loadgen.knee import cpu_fit
from loadgen.measure import Histogram


def _step(step: int, delivered: float, cpu: float | None, *, valid: bool = True,
          holes: int = 0, offered: float | None = None, **extra: Any) -> dict[str, Any]:
    lat = Histogram()
    lat.record(5000, 10)
    return {"step": step, "delivered_per_s": delivered, "offered_per_s": offered or delivered,
            "server_cpu_percent": cpu, "holes": holes, "slow_consumer_closes": 0,
            "connect_failures": 0, "deliveries": 10, "latency_us": lat.to_dict(),
            "loadgen": {"valid": valid, "reasons": [] if valid else ["lag"]}, **extra}


def _line(x: float) -> float:
    return 5.0 + 0.025 * x  # 90 % at 3,400 deliveries/s


@pytest.mark.parametrize("knee_at", [3500.0, 3700.0, 3900.0])
def test_the_capacity_does_not_depend_on_where_the_crossing_step_fell(knee_at: float) -> None:
    steps = [_step(0, 1000, _line(1000)), _step(1, 2000, _line(2000)),
             _step(2, 3000, _line(3000)),
             _step(3, knee_at, min(100.0, _line(knee_at)),
                   stopped_because="server CPU >= 90%")]
    fit = cpu_fit(steps, 90)
    assert fit is not None and not fit.capped
    assert fit.capacity_per_s == pytest.approx(3400)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.percent_per_kdelivery == pytest.approx(25)


def test_noise_is_averaged_and_outside_steps_are_left_out() -> None:
    steps = [_step(0, 400, 30.0),  # under FIT_LOW: never on the line (fixed costs weigh)
             _step(1, 2000, _line(2000) + 3), _step(2, 2500, _line(2500) - 3),
             _step(3, 3000, _line(3000) + 3), _step(4, 3200, _line(3200) - 3),
             _step(5, 3600, 99.0),  # clipped by the core: saturated, not on the line
             _step(6, 3300, 60.0, valid=False),  # load generator not valid
             _step(7, 3300, 60.0, holes=2),  # lost messages
             _step(8, 3300, 60.0, offered=4000)]  # fell behind
    fit = cpu_fit(steps, 90)
    assert fit is not None and fit.steps == [1, 2, 3, 4]
    assert fit.capacity_per_s == pytest.approx(3400, rel=0.05)
    assert 0 < fit.r2 < 1


def test_never_more_than_a_clean_step_carried() -> None:
    steps = [_step(0, 1000, 45.0), _step(1, 1500, 60.0), _step(2, 1600, 99.5)]
    fit = cpu_fit(steps, 90)  # the line meets 90 % at 2,500/s: past anything carried
    assert fit is not None and fit.capped and fit.capacity_per_s == 1600


@pytest.mark.parametrize("steps", [
    [_step(0, 1000, 50.0), _step(1, 2000, 95.0, valid=False)],  # one clean step
    [_step(0, 1000, 50.0), _step(1, 1100, 55.0)],  # span under MIN_SPAN
    [_step(0, 1000, 70.0), _step(1, 2000, 50.0)],  # CPU falls as the load rises
    [_step(0, 1000, None), _step(1, 2000, None)],  # no server CPU reading
])
def test_no_line_without_two_rising_clean_steps(steps: list[dict[str, Any]]) -> None:
    assert cpu_fit(steps, 90) is None
