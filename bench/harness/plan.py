"""What `rtbench run` runs: the targets, the scenarios, their Locust parameters per profile.

A target is a transport served by one server stack: ws, sse and longpoll once
per requested stack (servers/stacks/: starlette on uvicorn, aiohttp), gRPC once
(it has one server, grpcio). Every target gets the same scenario parameters (the
comparison is only fair that way); only `--servers`, `--transport`, the server
stack and the result path differ. A profile is a fixed set of parameters, so two
runs of one profile compare.

Profiles (`rtbench run --help` gives each one's expected length, from `eta_seconds`):
  smoke  a few seconds per scenario: checks that the harness and every scenario work
  quick  a few minutes on a 2-core machine (`make bench`)
  full   larger populations, longer steady states
A second stack runs ws, sse and longpoll again: 7 targets instead of 4, about 1.75x the time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from servers.settings import STACKS as STACKS  # the server stacks of ws, sse and longpoll

TRANSPORTS = ("ws", "sse", "longpoll", "grpc")
DEFAULT_STACK = "starlette"  # the servers' default (`rtbench serve` without --stack)
GRPC_STACK = "grpcio"  # gRPC's one server: not chosen, named so every target has a stack
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


def default_stack(transport: str) -> str:
    """The stack a transport's server runs when none is asked for (runs of format <= 2)."""
    return GRPC_STACK if transport == "grpc" else DEFAULT_STACK


def label(transport: str, stack: str) -> str:
    """How the report names a target: `ws · aiohttp`."""
    return f"{transport} \u00b7 {stack}"


def target_order(transport: str, stack: str) -> tuple[int, int, str, str]:
    """Sort key: the usual transport order, then the stacks' (unknown names last)."""
    known = (*STACKS, GRPC_STACK)
    return (TRANSPORTS.index(transport) if transport in TRANSPORTS else len(TRANSPORTS),
            known.index(stack) if stack in known else len(known), transport, stack)


@dataclass(frozen=True, slots=True)
class Target:
    """A transport on one server stack: what one cluster of replicas serves."""

    transport: str
    stack: str

    @property
    def label(self) -> str:
        return label(self.transport, self.stack)

    @property
    def default(self) -> bool:
        return self.stack == default_stack(self.transport)

    def to_dict(self) -> dict[str, str]:
        return {"transport": self.transport, "stack": self.stack}


def targets(transports: Sequence[str], stacks: Sequence[str]) -> list[Target]:
    """ws, sse and longpoll once per stack, gRPC once (on grpcio), transport by transport."""
    for t in transports:
        if t not in TRANSPORTS:
            raise ValueError(f"unknown transport {t!r} (expected {', '.join(TRANSPORTS)})")
    if not stacks:
        raise ValueError("no server stack given")
    for s in stacks:
        if s not in STACKS:
            raise ValueError(f"unknown stack {s!r} (expected {', '.join(STACKS)}; gRPC always "
                             f"runs on {GRPC_STACK})")
    ordered = [s for s in STACKS if s in stacks]
    out: list[Target] = []
    for t in transports:
        out += [Target(t, GRPC_STACK)] if t == "grpc" else [Target(t, s) for s in ordered]
    return out


@dataclass(frozen=True, slots=True)
class Step:
    """One (target, scenario) run of the plan."""

    index: int
    target: Target
    scenario: Scenario

    @property
    def transport(self) -> str:
        return self.target.transport

    @property
    def stack(self) -> str:
        return self.target.stack

    @property
    def key(self) -> str:
        """File name stem: `<scenario>-<transport>`, `-<stack>` added for a stack other than
        the default (so a run of the default stacks names its files as format 2 did)."""
        base = f"{self.scenario.name}-{self.transport}"
        return base if self.target.default else f"{base}-{self.stack}"


def build(profile: str, transports: Sequence[str], scenarios: Sequence[str],
          duration: float | None = None, stacks: Sequence[str] = (DEFAULT_STACK,),
          ) -> list[Step]:
    """The ordered steps: target by target, every scenario on one cluster."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (expected one of {', '.join(PROFILES)})")
    planned = targets(transports, stacks)
    for s in scenarios:
        if s not in SCENARIOS:
            raise ValueError(f"unknown scenario {s!r} (expected {', '.join(SCENARIOS)})")
    if duration is not None and duration <= 0:
        raise ValueError("--duration must be positive")
    specs = _profile(profile)
    ordered = [s for s in SCENARIOS if s in scenarios]
    steps: list[Step] = []
    for target in planned:
        for name in ordered:
            spec = specs[name] if duration is None else specs[name].with_duration(duration)
            steps.append(Step(len(steps), target, spec))
    return steps


# Under TLS each connect costs the one-process (gevent) load generator a handshake: at the
# quick profile's 500 connects/s its canary lagged 40-92 ms in every connections step
# (`rtbench run --quick --net loopback,wan --tls`, results/published/net-tls-quick-20261202.json)
TLS_SPAWN = 100.0
# what one delivery takes on a shaped link, TCP/IP headers included (app bytes per message
# measured up to 464), and the share of a profile's bandwidth a rate ramp may offer: past
# it the link, not the server, is the limit, and queues behind it grow into lost messages
LINK_BYTES_PER_DELIVERY = 500
LINK_SHARE = 0.5


def adapt(steps: Sequence[Step], *, tls: bool = False,
          bandwidth_mbit: float | None = None) -> list[Step]:
    """The plan for a run's conditions: connects at TLS_SPAWN per second under TLS (the run
    time stretched to match), and a rate ramp capped at LINK_SHARE of a link's bandwidth."""
    out = []
    for step in steps:
        sc = step.scenario
        if tls and sc.name == "connections" and sc.spawn_rate > TLS_SPAWN:
            sc = replace(sc, spawn_rate=TLS_SPAWN,
                         run_time=max(sc.run_time, math.ceil(sc.users / TLS_SPAWN) + 3))
        if bandwidth_mbit and sc.ramp:
            members = sc.users  # every publisher is a room member too (loadgen/steps.py)
            pubs = max(1, int(sc.options.get("publishers", 1)))
            per_s = LINK_SHARE * bandwidth_mbit * 1e6 / 8 / LINK_BYTES_PER_DELIVERY
            cap = math.floor(10 * per_s / (pubs * members)) / 10  # never over the share
            if cap < float(sc.options.get("max_publish_rate", math.inf)):
                sc = replace(sc, options={**sc.options, "max_publish_rate": cap})
        out.append(replace(step, scenario=sc))
    return out


def planned_seconds(step: Step) -> float:
    """Expected wall time of a step: its run time (or a ramp's expected length) plus
    Locust's start and stop."""
    return (step.scenario.eta or step.scenario.run_time) + 1.5


CLUSTER_START_S = 2.0  # starting and health-checking one target's replicas


def eta_seconds(steps: Sequence[Step]) -> float:
    """Expected wall time of a plan: its steps plus one cluster start per target."""
    return sum(planned_seconds(s) for s in steps) + CLUSTER_START_S * len(
        {s.target for s in steps})


def parse_list(text: str, allowed: Sequence[str]) -> list[str]:
    """A comma-separated choice list ('all' or empty: every choice)."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items or items == ["all"]:
        return list(allowed)
    return items
