"""Bounded outbox: limits by events and by bytes, waking, timeouts, byte accounting."""

from __future__ import annotations

import asyncio

from servers.core.outbox import Outbox
from servers.core.types import CloseReason, Event


def ev(n: int, pad: int = 0) -> Event:
    return Event({"type": "message", "n": n, "pad": "x" * pad})


def test_push_take_in_order_and_bytes_accounted() -> None:
    box = Outbox(max_events=10, max_bytes=1 << 20)
    events = [ev(i, pad=i) for i in range(5)]
    for e in events:
        assert box.push(e)
    assert len(box) == 5
    assert box.pending_bytes == sum(len(e.json()) for e in events)
    first = box.take(2)
    assert first == events[:2]
    assert len(box) == 3
    assert box.pending_bytes == sum(len(e.json()) for e in events[2:])
    assert box.take() == events[2:]
    assert (len(box), box.pending_bytes) == (0, 0)
    assert box.take() == []
    # reusable after being drained
    assert box.push(events[0])
    assert box.take(1) == [events[0]]
    assert box.pending_bytes == 0


def test_bounded_by_events() -> None:
    box = Outbox(max_events=3, max_bytes=1 << 20)
    assert all(box.push(ev(i)) for i in range(3))
    assert not box.closed
    assert box.push(ev(3)) is False
    assert box.closed
    assert box.close_reason is CloseReason.SLOW_CONSUMER
    assert box.push(ev(4)) is False  # stays closed
    assert [e.body["n"] for e in box.take()] == [0, 1, 2]  # what was queued is kept


def test_bounded_by_bytes() -> None:
    one = ev(0, pad=100)
    size = len(one.json())
    box = Outbox(max_events=1000, max_bytes=2 * size)
    assert box.push(one)
    assert box.push(ev(1, pad=100))
    assert box.pending_bytes == 2 * size
    assert box.push(ev(2)) is False
    assert box.close_reason is CloseReason.SLOW_CONSUMER
    assert len(box) == 2


def test_single_event_larger_than_byte_limit_closes() -> None:
    box = Outbox(max_events=10, max_bytes=50)
    assert box.push(ev(0, pad=100)) is False
    assert box.close_reason is CloseReason.SLOW_CONSUMER


def test_draining_makes_room_again() -> None:
    box = Outbox(max_events=2, max_bytes=1 << 20)
    for round_ in range(5):
        assert box.push(ev(round_)) and box.push(ev(round_))
        assert len(box.take()) == 2
    assert not box.closed


def test_first_close_reason_wins() -> None:
    box = Outbox(10, 1000)
    box.close(CloseReason.GOING_AWAY)
    box.close(CloseReason.NORMAL)
    assert box.close_reason is CloseReason.GOING_AWAY
    assert box.push(ev(1)) is False


async def test_get_wakes_on_push() -> None:
    box = Outbox(10, 1 << 20)
    getter = asyncio.create_task(box.get())
    await asyncio.sleep(0)  # one loop step: the getter runs up to its wait
    assert not getter.done() and box._waiter is not None
    e = ev(1)
    box.push(e)
    got = await asyncio.wait_for(getter, 2)
    assert got == [e]
    assert box.pending_bytes == 0


async def test_get_returns_queued_without_waiting_and_respects_limit() -> None:
    box = Outbox(10, 1 << 20)
    events = [ev(i) for i in range(4)]
    for e in events:
        box.push(e)
    assert await box.get(limit=3) == events[:3]
    assert await box.get() == events[3:]


async def test_get_wakes_on_close_and_returns_the_rest() -> None:
    box = Outbox(10, 1 << 20)
    getter = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    assert not getter.done() and box._waiter is not None
    box.close(CloseReason.GOING_AWAY)
    assert await asyncio.wait_for(getter, 2) == []

    box2 = Outbox(10, 1 << 20)
    e = ev(1)
    box2.push(e)
    box2.close(CloseReason.NORMAL)
    assert await box2.get() == [e]  # closed: what is left is still handed out
    assert await box2.get() == []  # then [] at once


async def test_max_wait_returns_empty_and_clears_waiter() -> None:
    box = Outbox(10, 1 << 20)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await box.get(max_wait=0.05) == []
    assert loop.time() - start >= 0.04
    assert box._waiter is None
    # a later push is seen by a later get (the timed-out waiter left nothing behind)
    e = ev(2)
    assert box.push(e)
    assert await box.get(max_wait=1) == [e]


async def test_cancelled_get_does_not_break_the_next_one() -> None:
    box = Outbox(10, 1 << 20)
    getter = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    assert box._waiter is not None
    getter.cancel()
    await asyncio.gather(getter, return_exceptions=True)
    assert getter.cancelled() and box._waiter is None
    e = ev(3)
    box.push(e)
    assert await asyncio.wait_for(box.get(), 1) == [e]
