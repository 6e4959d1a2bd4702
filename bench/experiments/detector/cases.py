"""The validation's cases: what each trial runs, where it is placed, what it should show."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

CASES = ("light-pinned", "light-unpinned", "starved-burner", "starved-overload")  # default
ALL_CASES = (*CASES, "shared-core")


@dataclass(frozen=True, slots=True)
class Case:
    """One kind of trial: the Locust parameters, the placement, what the detector should say."""

    name: str
    expect: str  # "valid" | "flagged" | "none" (informational)
    users: int
    spawn_rate: float
    run_time: int  # seconds (-t, whole seconds: Locust's format)
    publish_rate: float
    publishers: int = 1
    warmup: float = 1.0
    drain: float = 1.5
    pin_load: bool = True  # Locust (and burners) on the load core
    pin_servers: bool = True  # servers on core 0
    burners: int = 0
    burner_policy: str = "other"  # "other" (nice 0, SCHED_OTHER) | "fifo" (SCHED_FIFO 1)

    def locust_args(self) -> list[str]:
        return ["-u", str(self.users), "-r", f"{self.spawn_rate:g}", "-t", f"{self.run_time}s",
                "--publish-rate", f"{self.publish_rate:g}", "--publishers", str(self.publishers),
                "--warmup", f"{self.warmup:g}", "--drain", f"{self.drain:g}"]


def build_cases(burners: int, overload_users: int, overload_rate: float,
                overload_seconds: int) -> dict[str, Case]:
    light = Case("light-pinned", "valid", users=6, spawn_rate=6, run_time=6, publish_rate=1)
    return {
        "light-pinned": light,
        "light-unpinned": Case("light-unpinned", "valid", users=6, spawn_rate=6, run_time=6,
                               publish_rate=1, pin_load=False, pin_servers=False),
        # one is enough: a SCHED_FIFO loop takes its core from every normal task
        "starved-burner": Case("starved-burner", "flagged", users=6, spawn_rate=6, run_time=6,
                               publish_rate=1, burners=1, burner_policy="fifo"),
        "starved-overload": Case("starved-overload", "flagged", users=overload_users,
                                 spawn_rate=max(1, overload_users - 1),
                                 run_time=overload_seconds, publish_rate=overload_rate),
        "shared-core": Case("shared-core", "none", users=6, spawn_rate=6, run_time=6,
                            publish_rate=1, burners=burners),
    }


def trial_counts(cases: Sequence[Case], light: int, starved: int,
                 shared: int) -> dict[str, int]:
    """Trials per case by what it expects: light (valid), starved (flagged), shared (none)."""
    per = {"valid": light, "flagged": starved, "none": shared}
    return {c.name: per[c.expect] for c in cases}
