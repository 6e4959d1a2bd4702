"""servers/transports/eager.py: a coroutine runs in the caller's stack until it waits."""

from __future__ import annotations

import asyncio

import pytest

from servers.transports import eager


async def _no_wait() -> None:
    return None


async def test_a_coroutine_that_never_waits_runs_to_the_end_in_the_call() -> None:
    steps: list[str] = []

    async def work() -> None:
        steps.append("ran")
        await _no_wait()  # an await that does not suspend

    assert eager.start(work()) is None
    assert steps == ["ran"]  # done before start() returned: no loop turn


async def test_it_goes_on_as_a_task_from_where_it_waited() -> None:
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    steps: list[object] = []

    async def work() -> None:
        steps.append("before")
        steps.append(await gate)  # the value the future resolves with reaches it
        await asyncio.sleep(0)  # a bare yield is handled too
        steps.append("after")

    task = eager.start(work())
    assert task is not None and steps == ["before"]
    gate.set_result(7)
    await task
    assert steps == ["before", 7, "after"]


async def test_exceptions_and_cancellation_reach_the_coroutine() -> None:
    async def fails_now() -> None:
        raise ValueError("early")

    with pytest.raises(ValueError, match="early"):  # before waiting: raised by start()
        eager.start(fails_now())

    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    async def waits() -> None:
        try:
            await gate
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    task = eager.start(waits())
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"] and task.cancelled()

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise KeyError("late")

    later = eager.start(fails_later())
    assert later is not None
    with pytest.raises(KeyError, match="late"):
        await later
