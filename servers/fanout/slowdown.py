"""Injected slowness, for validating the perf-regression detector ONLY (`rtbench regress`).

`inject_work_us` (env `RTBENCH_INJECT_WORK_US`, default 0 = off) makes the server
burn that many microseconds of CPU for every message it receives from the broker,
before handing it to the hub. `bench/regress/validate.py` sets it to a known share
of the measured per-message cost to check that the detector catches a slowdown of
that size. Never set it in a benchmark whose numbers you mean to publish.
"""

from __future__ import annotations

import time
from typing import Any, cast

from servers.core.types import DEFAULT_RETENTION, Broker, OnMessage, Retention


def burn(us: float) -> None:
    """Spin until this thread has used `us` more microseconds of CPU.

    The thread's CPU clock, not the wall clock: when another process shares the
    core the injected cost stays `us` of CPU, so the slowdown is the known amount.
    """
    end = time.thread_time_ns() + int(us * 1000)
    while time.thread_time_ns() < end:
        pass


class SlowBroker:
    """Wraps a Broker; every message it delivers costs `work_us` of extra CPU."""

    def __init__(self, inner: Broker, work_us: float) -> None:
        self._inner = inner
        self.work_us = work_us
        self.name = inner.name

    async def start(self, on_message: OnMessage, retention: Retention = DEFAULT_RETENTION) -> None:
        work = self.work_us

        def slow(topic: str, payload: bytes) -> None:
            burn(work)
            on_message(topic, payload)

        await self._inner.start(slow, retention)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)


def wrap(inner: Broker, work_us: float) -> Broker:
    """`inner` itself when `work_us` is 0, else a SlowBroker around it."""
    if work_us <= 0:
        return inner
    return cast(Broker, SlowBroker(inner, work_us))
