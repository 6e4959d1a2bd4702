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


async def test_a_runner_runs_one_at_a_time_and_the_running_one_takes_what_came_meanwhile(
) -> None:
    queued: list[int] = []
    written: list[list[int]] = []
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    runner = eager.Runner()
    inline_seen: list[bool] = []

    async def drain() -> None:
        inline_seen.append(runner.inline)
        while queued:
            batch = queued[:]
            queued.clear()
            if not gate.done():
                await gate  # the first write has to wait
            written.append(batch)

    queued.append(1)
    runner.run(drain)
    assert runner.task is not None and not runner.task.done()  # waiting, as a Task
    queued.append(2)
    runner.run(drain)  # one is running: it takes 2 itself
    assert inline_seen == [True]
    gate.set_result(None)
    await runner.task
    assert written == [[1], [2]]
    queued.append(3)
    runner.run(drain)  # the last one ended: a new one, done inline
    assert written == [[1], [2], [3]] and inline_seen == [True, True]
    assert runner.cancel() is None  # nothing left running
