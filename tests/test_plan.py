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


def test_targets_are_transports_on_stacks_with_grpc_once() -> None:
    both = ["starlette", "aiohttp"]
    assert [t.label for t in plan.targets(plan.TRANSPORTS, both)] == [
        "ws \u00b7 starlette", "ws \u00b7 aiohttp", "sse \u00b7 starlette", "sse \u00b7 aiohttp",
        "longpoll \u00b7 starlette", "longpoll \u00b7 aiohttp", "grpc \u00b7 grpcio"]
    # the stacks' own order whatever the list's; gRPC on grpcio even when not asked for
    assert plan.targets(["ws", "grpc"], ["aiohttp", "starlette"]) == [
        plan.Target("ws", "starlette"), plan.Target("ws", "aiohttp"),
        plan.Target("grpc", "grpcio")]
    assert plan.targets(["grpc"], ["aiohttp"]) == [plan.Target("grpc", "grpcio")]
    assert plan.parse_list("all", plan.STACKS) == list(plan.STACKS) == both
    for stacks in (["tornado"], ["grpcio"], []):
        with pytest.raises(ValueError, match="stack"):
            plan.targets(["ws"], stacks)


def test_every_target_gets_the_same_scenarios_and_its_own_files() -> None:
    steps = plan.build("smoke", ["ws", "grpc"], ["chat", "broadcast"],
                       stacks=["starlette", "aiohttp"])
    assert [(s.transport, s.stack, s.scenario.name) for s in steps] == [
        ("ws", "starlette", "broadcast"), ("ws", "starlette", "chat"),
        ("ws", "aiohttp", "broadcast"), ("ws", "aiohttp", "chat"),
        ("grpc", "grpcio", "broadcast"), ("grpc", "grpcio", "chat")]
    assert [s.index for s in steps] == list(range(6))
    chat = [s.scenario.locust_args() for s in steps if s.scenario.name == "chat"]
    assert chat[0] == chat[1] == chat[2]
    # the default stacks keep format 2's names; another stack adds its name
    assert [s.key for s in steps if s.scenario.name == "chat"] == [
        "chat-ws", "chat-ws-aiohttp", "chat-grpc"]
    assert plan.build("quick", ["ws"], ["chat"]) == plan.build(
        "quick", ["ws"], ["chat"], stacks=["starlette"])  # one stack: today's plan


def test_eta_grows_with_the_targets_not_the_profile() -> None:
    one = plan.build("quick", plan.TRANSPORTS, plan.SCENARIOS)
    two = plan.build("quick", plan.TRANSPORTS, plan.SCENARIOS, stacks=plan.STACKS)
    assert len(one) == 4 * len(plan.SCENARIOS) and len(two) == 7 * len(plan.SCENARIOS)
    assert {s.scenario.name: s.scenario for s in one} == {s.scenario.name: s.scenario for s in two}
    assert plan.eta_seconds(two) / plan.eta_seconds(one) == pytest.approx(1.75)
    assert plan.eta_seconds(one) == pytest.approx(
        sum(plan.planned_seconds(s) for s in one) + 4 * plan.CLUSTER_START_S)


def test_the_plan_adapts_to_tls_and_a_links_bandwidth() -> None:
    from bench.harness.plan import LINK_BYTES_PER_DELIVERY, LINK_SHARE, TLS_SPAWN, adapt, build

    steps = build("quick", ["ws"], ["connections", "broadcast", "chat"])
    assert adapt(steps) == steps  # no TLS, no bandwidth: the plan as built
    conn, ramp, chat = adapt(steps, tls=True, bandwidth_mbit=50)
    assert conn.scenario.spawn_rate == TLS_SPAWN
    assert conn.scenario.run_time >= conn.scenario.users / TLS_SPAWN
    assert conn.scenario.users == steps[0].scenario.users  # as many connections, slower
    offered = float(ramp.scenario.options["max_publish_rate"]) * ramp.scenario.users
    assert offered * LINK_BYTES_PER_DELIVERY * 8 <= LINK_SHARE * 50e6
    assert offered * LINK_BYTES_PER_DELIVERY * 8 > 0.9 * LINK_SHARE * 50e6  # not lower
    assert chat == steps[2]
    # a fast link leaves the ramp's own cap in place
    fast = adapt(steps, bandwidth_mbit=100_000)[1]
    assert fast.scenario.options["max_publish_rate"] == steps[1].scenario.options[
        "max_publish_rate"]
