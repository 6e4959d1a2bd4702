"""Broadcast: one room, subscribers spread over the replicas, open-loop publishers.

    locust -f loadgen/broadcast.py --headless -u 101 -r 50 -t 30s \\
        --transport ws --servers http://127.0.0.1:8001,http://127.0.0.1:8002

`-u` counts every user, the `--publishers` included. With `--step-users K` the
subscribers grow by K every `--step-seconds` (up to `-u`, like hashrocket's
websocket-shootout) until a step's p99 delivery latency exceeds
`--p99-limit-ms` or a delivery goes missing; each step is a point of the
capacity curve in the result's `steps`. `-t` bounds the run either way.
"""

from __future__ import annotations

from locust import LoadTestShape

from loadgen import hooks
from loadgen.roles import RoomPublisher, RoomSubscriber
from loadgen.steps import StepShape

run = hooks.install("broadcast")


class Publisher(RoomPublisher):
    room = "broadcast"


class Subscriber(RoomSubscriber):
    room = "broadcast"


class Steps(StepShape, LoadTestShape):
    """-u/-r/-t as usual, or the capacity steps of --step-users."""

    def tick(self) -> tuple[int, float] | None:
        return self.step_tick(run, self.runner, self.get_run_time())  # type: ignore[no-untyped-call]


run.add_init(Publisher.fixed_from_option)
