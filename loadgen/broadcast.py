"""Broadcast: one room, subscribers spread over the replicas, open-loop publishers.

    locust -f loadgen/broadcast.py --headless -u 101 -r 50 -t 30s \\
        --transport ws --servers http://127.0.0.1:8001,http://127.0.0.1:8002

`-u` counts every user, the `--publishers` included. Two capacity ramps find
the server's knee (loadgen/steps.py): `--ramp-factor F` raises the publish rate
step by step with all `-u` users connected, until p99 passes `--p99-limit-ms`,
a message is lost, the server falls behind or its CPU reaches
`--max-server-cpu`; `--step-users K` adds K subscribers every `--step-seconds`
instead. Each step is a point of the capacity curve in the result's `steps`,
the knee in `extra.ramp`. `-t` bounds the run either way.

    locust -f loadgen/broadcast.py --headless -u 201 -r 200 -t 90s --transport ws \
        --servers http://127.0.0.1:8001,http://127.0.0.1:8002 --ramp-factor 2 \
        --publish-rate 10 --step-seconds 2
"""

from __future__ import annotations

from locust import LoadTestShape

from loadgen import hooks
from loadgen.roles import RoomPublisher, RoomSubscriber
from loadgen.steps import StepShape, ramp_summary

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


def _ramp(r: hooks.Run) -> None:
    if r.p.ramp_factor > 0:
        r.extras.append(lambda rr: {"ramp": ramp_summary(
            rr.steps, rr.ramp_end, rr.p.max_server_cpu)})


run.on_start.append(_ramp)
