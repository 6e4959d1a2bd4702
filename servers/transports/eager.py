"""Eager start of a coroutine: run it now, in the caller's stack, until it first has to
wait; only then does it become a Task (what Python 3.12's `eager_start=True` does).

Why: a delivery reaches a WebSocket connection inside the Redis reader's callback, and
its send (uvicorn's `websocket.send`) completes without waiting whenever the socket is
writable, which is nearly always. A Task per burst of deliveries costs a trip through
the event loop (about 35 us on an idle 2-core VM, bench.experiments.latency_floor) before
the frame is written; started eagerly, the frame is written in the same callback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, cast


class Runner:
    """One coroutine at a time, each started eagerly: what a connection's sender needs.

    `run(make)` starts `make()` unless one is still running (in the caller's stack, or
    as the Task it went on in): that one takes whatever made the caller ask again,
    e.g. events queued meanwhile, as long as it checks for them before it returns.
    """

    __slots__ = ("inline", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None  # where the last one went on
        self.inline = False  # one runs right now, in the caller's stack

    def run(self, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = self.task
        if self.inline or (task is not None and not task.done()):
            return
        self.inline = True
        try:
            self.task = start(make())
        finally:
            self.inline = False

    def cancel(self) -> asyncio.Task[None] | None:
        """Cancel the one that went on as a Task, if it still runs; that Task."""
        task, self.task = self.task, None
        if task is None or task.done():
            return None
        task.cancel()
        return task


def start(coro: Coroutine[Any, Any, None], name: str | None = None,
          ) -> asyncio.Task[None] | None:
    """Run `coro` until it finishes (None is returned) or waits for the first time (it
    goes on in the returned Task, from where it stopped). Its exceptions are raised
    here if it fails before waiting, like a plain call's."""
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    rest = cast(Coroutine[Any, Any, None], _Continuation(coro, waiting))
    return asyncio.get_running_loop().create_task(rest, name=name)


class _Continuation:
    """The rest of a started coroutine, as a coroutine a Task can run: its first step
    hands the Task what `coro` is waiting on; every later step, and whatever the Task
    throws in (cancel() included, even before that first step), goes to `coro`."""

    __slots__ = ("_coro", "_first", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting
        self._first = True

    def send(self, value: Any) -> Any:
        if self._first:
            self._first = False
            waiting, self._waiting = self._waiting, None
            return waiting
        return self._coro.send(value)

    def throw(self, *exc: Any) -> Any:
        self._first = False
        self._waiting = None
        return self._coro.throw(*exc)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Iterator[Any]:
        return self  # an iterator of its own steps

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return self.send(None)


Coroutine.register(_Continuation)  # what asyncio.iscoroutine() checks
