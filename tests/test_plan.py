"""The run plan (bench/harness/plan.py) and the progress line (bench/harness/progress.py)."""

from __future__ import annotations

import io

import pytest

from bench.harness import plan
from bench.harness.progress import Progress


def test_plan_is_identical_across_transports_and_checks_input() -> None:
    steps = plan.build("quick", ["ws", "grpc"], ["chat", "connections"])
    assert [(s.transport, s.scenario.name) for s in steps] == [
        ("ws", "connections"), ("ws", "chat"), ("grpc", "connections"), ("grpc", "chat")]
    assert steps[1].scenario.locust_args() == steps[3].scenario.locust_args()
    longer = plan.build("quick", ["ws"], ["broadcast"], duration=21.5)[0].scenario
    # a ramp's run time only bounds it: --duration caps it (and its expected length)
    assert longer.run_time == 22 and longer.ramp and longer.eta is not None
    assert longer.eta <= 21.5
    assert "-t 22s" in " ".join(longer.locust_args())  # Locust takes whole seconds only
    assert plan.build("quick", ["ws"], ["chat"], duration=2.5)[0].scenario.run_time == 3
    bad: list[tuple[str, list[str], list[str], float | None]] = [
        ("huge", ["ws"], ["chat"], None), ("quick", ["smtp"], ["chat"], None),
        ("quick", ["ws"], ["chess"], None), ("quick", ["ws"], ["chat"], 0)]
    for profile, transports, scenarios, duration in bad:
        with pytest.raises(ValueError):
            plan.build(profile, transports, scenarios, duration)


def test_progress_without_a_terminal_prints_plain_lines() -> None:
    out = io.StringIO()
    p = Progress([2.0, 2.0], stream=out, tty=False)
    p.start_step(0, "ws chat")
    p.update("load")
    p.update("load")  # unchanged phase: no new line
    p.note("  done: ws chat")
    p.start_step(1, "ws direct")
    p.update("load")
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert "1/2 ws chat load" in lines[0] and "\r" not in out.getvalue()
    assert "2/2 ws direct" in lines[2] and "remaining" in lines[2]
