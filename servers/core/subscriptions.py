"""Broker subscriptions shared by a replica's local connections, reference-counted.

A topic is subscribed while at least one local connection needs it. Concurrent
acquires of a topic share one SUBSCRIBE; an acquire returns once the broker has
confirmed it, so anything published after that reaches the replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from servers.core.types import Broker


class _Sub:
    __slots__ = ("count", "ready")

    def __init__(self, ready: asyncio.Future[None]) -> None:
        self.count = 0
        self.ready: asyncio.Future[None] | None = ready  # None once confirmed


class Subscriptions:
    """topic -> how many local users it has; `spawn` runs the (background) unsubscribes."""

    __slots__ = ("broker", "spawn", "subs")

    def __init__(self, broker: Broker, spawn: Callable[[Awaitable[Any]], None]) -> None:
        self.broker = broker
        self.spawn = spawn
        self.subs: dict[str, _Sub] = {}

    async def acquire(self, topic: str) -> None:
        sub = self.subs.get(topic)
        if sub is None:
            sub = self.subs[topic] = _Sub(asyncio.ensure_future(self.broker.subscribe(topic)))
        sub.count += 1
        if sub.ready is None:
            return  # already confirmed
        ready = sub.ready
        try:
            await asyncio.shield(ready)
        except BaseException:
            sub.count -= 1
            if sub.count == 0:
                if ready.done():
                    self._drop_unused(topic, sub)
                else:
                    # our caller was cancelled but the subscribe goes on: keep the entry
                    # (a new acquire reuses it) and undo it once done if still unused
                    ready.add_done_callback(lambda _: self._drop_unused(topic, sub))
            raise
        sub.ready = None  # drop the finished task: one per user topic adds up

    def _drop_unused(self, topic: str, sub: _Sub) -> None:
        """Forget a subscription nobody waits for; unsubscribe if it took effect."""
        if sub.count > 0 or self.subs.get(topic) is not sub:
            return
        del self.subs[topic]
        ready = sub.ready
        if ready is None or (not ready.cancelled() and ready.exception() is None):
            self.spawn(self.broker.unsubscribe(topic))

    def release(self, topic: str) -> None:
        sub = self.subs.get(topic)
        if sub is None:
            return
        sub.count -= 1
        if sub.count <= 0:
            del self.subs[topic]
            self.spawn(self.broker.unsubscribe(topic))
