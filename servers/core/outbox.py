"""Bounded per-connection outbound queue.

The hub never awaits a client: it appends the shared Event to each recipient's
outbox and moves on, so one slow client cannot stall a room (the seed awaited
each send in turn). When a client falls more than `max_events` events or
`max_bytes` bytes behind, the outbox closes with SLOW_CONSUMER and the adapter
disconnects it. Kept small (slots, lazily created waiter): it is held once per
idle connection.

Two ways to consume it: `await get()` (a pump task per connection: long-poll,
gRPC), or `listen(callback)`, called when an event lands in an empty outbox or the
outbox closes, so an adapter can write right then and hold a task only while a
send waits (WebSocket and SSE; an idle connection then holds no task at all).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from servers.core.types import CloseReason, Event


class Outbox:
    __slots__ = (
        "_bytes", "_items", "_listener", "_waiter", "close_reason", "max_bytes", "max_events",
    )

    def __init__(self, max_events: int, max_bytes: int) -> None:
        # allocated on demand and dropped when drained: an empty deque costs ~600 bytes,
        # and most held connections are idle
        self._items: deque[Event] | None = None
        self._bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._listener: Callable[[], None] | None = None
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.close_reason: CloseReason | None = None

    def listen(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` whenever events become available or the outbox closes (None: stop)."""
        self._listener = callback
        if callback is not None and (self._items or self.close_reason is not None):
            callback()

    def __len__(self) -> int:
        return len(self._items) if self._items is not None else 0

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    def push(self, event: Event) -> bool:
        """Queue `event`; False (and the outbox closes) when the limits are exceeded."""
        if self.close_reason is not None:
            return False
        size = len(event.json())
        items = self._items
        if items is None:
            items = self._items = deque()
        if len(items) >= self.max_events or self._bytes + size > self.max_bytes:
            self.close(CloseReason.SLOW_CONSUMER)
            return False
        items.append(event)
        self._bytes += size
        if len(items) == 1:  # consumers only ever wait on an empty outbox
            self._wake()
        return True

    def close(self, reason: CloseReason) -> None:
        """Stop accepting events; a waiting `get` returns what is left."""
        if self.close_reason is None:
            self.close_reason = reason
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._listener is not None:
            self._listener()

    def take(self, limit: int = 1 << 30) -> list[Event]:
        """Remove and return up to `limit` queued events without waiting."""
        items = self._items
        if items is None:
            return []
        if limit >= len(items):
            out = list(items)
            self._items = None
        else:
            out = [items.popleft() for _ in range(limit)]
        for ev in out:
            self._bytes -= len(ev.json())
        return out

    async def get(self, limit: int = 1 << 30, max_wait: float | None = None) -> list[Event]:
        """Wait for at least one event (or close/timeout), then take up to `limit`.

        Returns [] on timeout or when the outbox is closed and drained.
        """
        while not self._items and self.close_reason is None:  # None or empty
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                if max_wait is None:
                    await waiter
                else:
                    try:
                        await asyncio.wait_for(waiter, max_wait)
                    except TimeoutError:
                        return []
            finally:
                self._waiter = None
        return self.take(limit)
