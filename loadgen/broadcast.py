"""Broadcast: one room, subscribers spread over the replicas, open-loop publishers.

    locust -f loadgen/broadcast.py --headless -u 101 -r 50 -t 30s \\
        --transport ws --servers http://127.0.0.1:8001,http://127.0.0.1:8002

`-u` counts every user, the `--publishers` included. With `--step-users K` the
subscribers grow by K every `--step-seconds` (up to `-u`, like hashrocket's
websocket-shootout) until a step's p99 delivery latency exceeds
`--p99-limit-ms` or a delivery goes missing; each step is a point of the
capacity curve in the result's `steps`.
"""

from __future__ import annotations

from typing import Any

from locust import LoadTestShape

from loadgen import hooks
from loadgen.steps import StepShape
from loadgen.users import RtbenchUser

run = hooks.install("broadcast")
ROOM = "broadcast"


class Publisher(RtbenchUser):
    """Joins the room and publishes at --publish-rate (it receives its own messages too)."""

    fixed_count = 1  # set from --publishers at init

    def on_start(self) -> None:
        name = self.rt.user_name("pub", self.index)
        client = self.connect(name)
        self.listen(client, ROOM)
        self.start_publisher(client, name, ROOM)


class Subscriber(RtbenchUser):
    weight = 1

    def on_start(self) -> None:
        client = self.connect(self.rt.user_name("sub", self.index))
        self.listen(client, ROOM)


class Steps(StepShape, LoadTestShape):
    """-u/-r as usual, or the capacity steps of --step-users."""

    def tick(self) -> tuple[int, float] | None:
        return self.step_tick(run, self.runner, self.get_run_time())  # type: ignore[no-untyped-call]


def _set_publishers(environment: Any, **_: Any) -> None:
    opts = environment.parsed_options
    if opts is not None:
        Publisher.fixed_count = max(1, int(opts.publishers))


run.add_init(_set_publishers)
