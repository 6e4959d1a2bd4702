"""What `rtbench run` runs: the scenarios, their Locust parameters per profile, the order.

Every transport gets the same scenario parameters (the comparison is only fair
that way); only `--servers`, `--transport` and the result path differ. A
profile is a fixed set of parameters, so two runs of one profile compare.

Profiles:
  smoke  a few seconds per scenario: checks that the harness and every scenario work
  quick  about 3 minutes for the four transports on a 2-core machine (`make bench`)
  full   about 30 minutes: larger populations, longer steady states
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

TRANSPORTS = ("ws", "sse", "longpoll", "grpc")
# connections first: its memory-per-connection baseline is a freshly started server
SCENARIOS = ("connections", "broadcast", "chat", "direct", "churn")
PROFILES = ("smoke", "quick", "full")


@dataclass(frozen=True, slots=True)
class Scenario:
    """One Locust scenario with its parameters (the same for every transport)."""

    name: str
    users: int
    spawn_rate: float
    run_time: int  # seconds (-t, whole: Locust's format); steps stop earlier over the limit
    options: dict[str, Any] = field(default_factory=dict)  # rtbench options, --name value
    # expected wall seconds when run_time is only an upper bound (a ramp ends at its knee)
    eta: float | None = None

    def locust_args(self) -> list[str]:
        args = ["-u", str(self.users), "-r", f"{self.spawn_rate:g}", "-t", f"{self.run_time}s"]
        for key, value in self.options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        return args

    def with_duration(self, seconds: float) -> Scenario:
        """The same scenario lasting about `seconds` (a broadcast ramp: at most that long)."""
        return replace(self, run_time=math.ceil(seconds),
                       eta=min(self.eta, seconds) if self.eta else None)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "users": self.users, "spawn_rate": self.spawn_rate,
                "run_time": self.run_time, "options": dict(self.options)}

    @property
    def ramp(self) -> bool:
        return float(self.options.get("ramp_factor", 0)) > 0


def _profile(size: str) -> dict[str, Scenario]:
    # (smoke, quick, full) per knob; rates keep one Locust process (one core) out of
    # saturation in the steady-state scenarios, so their latencies describe the servers
    k = PROFILES.index(size)

    def pick(*v: Any) -> Any:
        return v[k]

    common = {"payload_bytes": 100, "drain": pick(1, 1.5, 2)}
    steady = {**common, "warmup": pick(0.5, 1, 3)}
    return {
        # held idle connections, ramped at -r until -u or a limit (loadgen/connections.py:
        # open files, connect time, server memory); --full aims past the load generator's
        # open-files limit (20,000 here), so that limit is what stops it
        "connections": Scenario(
            "connections", users=pick(100, 2000, 25000), spawn_rate=pick(100, 500, 1000),
            run_time=pick(3, 8, 40), options={**common}),
        # the capacity ramp (loadgen/steps.py): every subscriber connects, then the publish
        # rate rises step by step until the servers' knee; run_time only bounds it.
        # 200 subscribers: at 1,000 the load generator's per-delivery cost outgrew the
        # servers' and it saturated first (canary lag, 24,000 deliveries/s, ws, 2026-12-02)
        "broadcast": Scenario(
            "broadcast", users=1 + pick(20, 200, 200), spawn_rate=pick(50, 200, 200),
            run_time=pick(20, 75, 300), eta=pick(12, 30, 110),
            options={**common, "drain": 2, "publishers": 1, "publish_rate": pick(20, 10, 10),
                     "ramp_factor": pick(2, 2, 1.5), "step_settle": pick(1, 1, 2),
                     "step_seconds": pick(1, 2, 5), "p99_limit_ms": 250,
                     "max_server_cpu": 90, "request_events": "off",
                     "max_publish_rate": pick(80, 5000, 5000)}),
        "chat": Scenario(
            "chat", users=pick(20, 40, 200), spawn_rate=pick(50, 40, 100),
            run_time=pick(3, 5, 60),
            options={**steady, "room_size": 10, "publish_rate": 2}),
        "direct": Scenario(
            "direct", users=pick(8, 20, 100), spawn_rate=pick(50, 20, 100),
            run_time=pick(3, 5, 60),
            options={**steady, "conns_per_user": 2, "publish_rate": 5}),
        "churn": Scenario(
            "churn", users=pick(11, 21, 101), spawn_rate=pick(50, 21, 100),
            run_time=pick(3, 5, 60),
            options={**steady, "publishers": 1, "publish_rate": 10,
                     "churn_interval": pick(1, 1.5, 3)}),
    }


@dataclass(frozen=True, slots=True)
class Step:
    """One (transport, scenario) run of the plan."""

    index: int
    transport: str
    scenario: Scenario

    @property
    def key(self) -> str:
        return f"{self.scenario.name}-{self.transport}"


def build(profile: str, transports: list[str], scenarios: list[str],
          duration: float | None = None) -> list[Step]:
    """The ordered steps: transport by transport, every scenario on one cluster."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (expected one of {', '.join(PROFILES)})")
    for t in transports:
        if t not in TRANSPORTS:
            raise ValueError(f"unknown transport {t!r} (expected {', '.join(TRANSPORTS)})")
    for s in scenarios:
        if s not in SCENARIOS:
            raise ValueError(f"unknown scenario {s!r} (expected {', '.join(SCENARIOS)})")
    if duration is not None and duration <= 0:
        raise ValueError("--duration must be positive")
    specs = _profile(profile)
    ordered = [s for s in SCENARIOS if s in scenarios]
    steps: list[Step] = []
    for t in transports:
        for name in ordered:
            spec = specs[name] if duration is None else specs[name].with_duration(duration)
            steps.append(Step(len(steps), t, spec))
    return steps


def planned_seconds(step: Step) -> float:
    """Expected wall time of a step: its run time (or a ramp's expected length) plus
    Locust's start and stop."""
    return (step.scenario.eta or step.scenario.run_time) + 1.5


def parse_list(text: str, allowed: tuple[str, ...]) -> list[str]:
    """A comma-separated choice list ('all' or empty: every choice)."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items or items == ["all"]:
        return list(allowed)
    return items
