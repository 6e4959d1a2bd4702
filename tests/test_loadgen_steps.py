"""The capacity ramp's decisions, the changing open-loop schedule and the judged window,
without sockets (loadgen/steps.py, loadgen/openloop.py, loadgen/recorder.py)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from loadgen.measure import Histogram
from loadgen.openloop import Schedule
from loadgen.recorder import NEVER, OUTSIDE, Collector, Recorder
from loadgen.steps import knee_reason, next_rate, ramp_summary


def _point(*, p99_ms: float = 10, cpu: float | None = 50, delivered: float = 1000,
           offered: float = 1000, lg_reasons: tuple[str, ...] = (), holes: int = 0,
           step: int = 0, **extra: Any) -> dict[str, Any]:
    lat = Histogram()
    lat.record(int(p99_ms * 1000), 100)
    return {"step": step, "deliveries": 100, "latency_us": lat.to_dict(), "holes": holes,
            "slow_consumer_closes": 0, "connect_failures": 0, "server_cpu_percent": cpu,
            "delivered_per_s": delivered, "offered_per_s": offered,
            "server_cpu_us_per_delivery": 9.5,
            "loadgen": {"valid": not lg_reasons, "reasons": list(lg_reasons)}, **extra}


def test_a_calm_step_goes_on() -> None:
    assert knee_reason(_point(), 250, 90) == (None, False)


@pytest.mark.parametrize(("point", "reason", "knee"), [
    (_point(cpu=93), "server CPU 93% >= 90%", True),
    (_point(p99_ms=300), "p99 300.0 ms > 250 ms", True),
    (_point(holes=2), "messages lost", True),
    (_point(delivered=800), "server fell behind (800 of 1000 deliveries/s)", True),
    (_point(lg_reasons=("load generator h/1 used 95% CPU (limit 90%)",), cpu=95),
     "load-side limited: load generator h/1 used 95% CPU (limit 90%)", False),
    (_point(lg_reasons=("greenlet canary lag p99 30.0 ms (limit 20 ms)",), p99_ms=400),
     "load-side limited: greenlet canary lag p99 30.0 ms (limit 20 ms)", False),
])
def test_knee_reasons(point: dict[str, Any], reason: str, knee: bool) -> None:
    assert knee_reason(point, 250, 90) == (reason, knee)


def test_a_late_generator_still_sees_what_the_server_side_measured() -> None:
    """Lag inflates latencies (p99 is not trusted then), not the server's own CPU."""
    lagging = ("greenlet canary lag p99 30.0 ms (limit 20 ms)",)
    assert knee_reason(_point(lg_reasons=lagging, cpu=95, p99_ms=400), 250, 90) == (
        "server CPU 95% >= 90%", True)
    assert knee_reason(_point(lg_reasons=lagging, holes=1), 250, 90) == ("messages lost", True)


def test_next_rate_aims_at_the_cpu_limit_within_bounds() -> None:
    assert next_rate(100, 10, 90, 2.0) == 200  # far below: the factor caps it
    assert next_rate(100, 60, 90, 2.0) == pytest.approx(100 * 90 * 1.03 / 60)
    assert next_rate(100, 89, 90, 2.0) == pytest.approx(110)  # at least 1.1x
    assert next_rate(100, None, 90, 1.5) == 150  # no CPU reading: the factor


def test_ramp_summary_of_a_knee_and_of_a_load_side_limit() -> None:
    # server CPU on the line 10 % + 0.02 %/delivery/s: 90 % at 4,000 deliveries/s
    steps = [_point(step=0, delivered=1000, cpu=30), _point(step=1, delivered=2000, cpu=50),
             _point(step=2, delivered=3000, cpu=70, p99_ms=12),
             _point(step=3, delivered=4400, offered=4400, cpu=98, p99_ms=40,
                    stopped_because="server CPU 98% >= 90%", knee=True)]
    s = ramp_summary(steps)
    assert s["knee_reached"] and s["knee_step"] == 3 and s["loadgen_valid"]
    assert s["knee_method"] == "cpu fit" and s["cpu_fit"]["steps"] == [1, 2]
    assert s["max_deliveries_per_s"] == pytest.approx(4000)
    assert s["best_step"] == 3 and s["p99_ms_at_max"] == pytest.approx(40, 0.01)
    # a knee that is not the CPU's: the best step carried, no line
    lost = [*steps[:3], _point(step=3, delivered=3500, holes=1, stopped_because="messages lost",
                               knee=True)]
    s = ramp_summary(lost)
    assert s["knee_method"] == "best step" and s["max_deliveries_per_s"] == 3000
    assert s["cpu_fit"] is None and s["best_step"] == 2
    limited = [_point(step=0, delivered=1000),
               _point(step=1, delivered=2000, lg_reasons=("load generator used 95% CPU",),
                      stopped_because="load-side limited: x", knee=False)]
    s = ramp_summary(limited)
    assert not s["knee_reached"] and s["load_side_limited"] and not s["loadgen_valid"]
    assert s["max_deliveries_per_s"] == 1000  # the limited step is not a point carried
    assert ramp_summary([], "run time ended before a knee")["stopped_because"] == \
        "run time ended before a knee"


def test_schedule_rate_change_keeps_past_sends_and_stays_monotonic() -> None:
    s = Schedule(1_000_000, 10.0)  # every 100 ms
    before = [s.intended(k) for k in range(5)]
    s.set_rate(100.0, 1_250_000)  # from 1.25 s on: every 10 ms
    assert [s.intended(k) for k in range(3)] == before[:3]  # due before the change
    times = [s.intended(k) for k in range(40)]
    assert all(b > a for a, b in itertools.pairwise(times))
    assert times[3] == 1_250_000 and times[4] - times[3] == 10_000
    s.stop_at(1_300_000)
    assert s.until_us == 1_300_000
    with pytest.raises(ValueError):
        s.set_rate(0, 2_000_000)


def test_lags_outside_the_judged_window_are_kept_apart() -> None:
    r = Recorder("h")
    r.judge_from_us, r.judge_until_us = 1_000, 2_000
    r.lag("canary_lag", 50_000, 500)  # spawning
    r.lag("canary_lag", 700, 1_500)
    r.lag("canary_lag", 90_000, 2_500)  # teardown
    r.cpu_sample(99.0, 0, 1_000)  # straddles nothing inside: outside
    r.cpu_sample(20.0, 1_000, 2_000)
    c = Collector()
    c.add_delta(r.take_delta())
    assert c.hist("canary_lag").count == 1 and c.hist("canary_lag").percentile(100) == 700
    assert c.hist("canary_lag" + OUTSIDE).count == 2
    assert c.cpu == {"h/" + str(r.pid): [20.0]}
    assert c.cpu_outside == {"h/" + str(r.pid): [99.0]}
    assert Recorder("x").judge_until_us == NEVER


def test_local_pull_equals_the_encoded_delta() -> None:
    a, b = Recorder("h"), Recorder("h")
    for rec in (a, b):
        for v in (5, 900, 2_049, 70_000, 3_000_000):
            rec.timing("connect", v)
        rec.count("connects", 3)
        rec.received = 4
    ca, cb = Collector(), Collector()
    ca.add_local(a)
    cb.add_delta(b.take_delta())
    assert ca.hist("connect").equals(cb.hist("connect"))
    assert ca.counters == cb.counters and ca.step_counters == cb.step_counters
    assert a.hists["connect"].count == 0 and a.received == 0  # taken


def test_core_ticks_count_work_not_idle_iowait_or_steal(tmp_path: Any) -> None:
    from loadgen.scrape import core_ticks

    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  9 9 9 9 9 9 9 9 0 0\n"
                    "cpu0 100 0 50 800 10 5 35 500 0 0\n"
                    "cpu1 1 0 1 1 0 0 0 0 0 0\n")
    assert core_ticks([0], str(stat)) == (190, 1000)
    assert core_ticks([0, 1], str(stat)) == (192, 1003)
    assert core_ticks([7], str(stat)) is None  # no such core: no CPU signal, not zero
