"""In-process broker: single-node fanout with the same contract as Redis."""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Iterable

from servers.core.errors import BrokerUnavailable
from servers.core.streams import GAP_EPOCH, GAP_TRIMMED, splice
from servers.core.types import (
    DEFAULT_RETENTION,
    History,
    OnCountChange,
    OnMessage,
    OnResubscribed,
    Position,
    Retention,
)


class _Stream:
    """One stream's last offset and its retained entries (offset order, oldest first)."""

    __slots__ = ("entries", "offset")

    def __init__(self) -> None:
        self.offset = 0
        self.entries: deque[tuple[float, bytes]] = deque()  # (monotonic time, payload)


class MemoryBroker:
    """Delivers publishes synchronously to the one local subscriber (the hub).

    History lives in this process: one epoch per broker instance, so a restarted
    server is a new epoch and clients' older positions get a `gap`.
    """

    name = "memory"

    def __init__(self) -> None:
        self._on_message: OnMessage | None = None
        self._topics: set[str] = set()
        self._counts: dict[str, dict[str, int]] = {}
        self._streams: dict[str, _Stream] = {}
        self.epoch = secrets.token_hex(4)
        self.retention = DEFAULT_RETENTION
        self._on_resubscribed: OnResubscribed | None = None
        self._cut = False  # cut(): publishes are carried out but reach no subscriber

    async def start(
        self, on_message: OnMessage, retention: Retention = DEFAULT_RETENTION
    ) -> None:
        self._on_message = on_message
        self.retention = retention

    async def close(self) -> None:
        self._on_message = None

    async def subscribe(self, topic: str) -> None:
        self._topics.add(topic)

    async def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)

    async def publish(self, topic: str, payload: bytes) -> None:
        if self._on_message is None:
            raise BrokerUnavailable("memory broker is closed")
        if topic in self._topics and not self._cut:
            self._on_message(topic, payload)

    # fault injection (tests): the one process cannot lose its subscription otherwise

    def cut(self) -> None:
        """Lose the subscription, as a broken Redis subscriber connection: publishes are
        still carried out (and recorded) but reach no subscriber until `restore`."""
        self._cut = True

    def restore(self) -> None:
        """Subscribed again: tell the watcher (Broker.watch_resubscribe)."""
        self._cut = False
        if self._on_resubscribed is not None:
            self._on_resubscribed(sorted(self._topics))

    def watch_resubscribe(self, callback: OnResubscribed) -> None:
        self._on_resubscribed = callback

    async def count_add(self, key: str, member: str, delta: int) -> int:
        counts = self._counts.setdefault(key, {})
        had = counts.get(member, 0)
        if had == 0 and delta < 0:
            return -1  # nothing to take away (Broker.count_add)
        n = had + delta
        if n <= 0:
            counts.pop(member, None)
            return 0
        counts[member] = n
        return n

    async def count_get(self, key: str, members: Iterable[str]) -> list[int]:
        counts = self._counts.get(key, {})
        return [counts.get(m, 0) for m in members]

    def watch_counts(self, callback: OnCountChange) -> None:
        """One process holds every count: none expires, the callback is never called."""

    # ------------------------------------------------------------- history

    def _trimmed(self, topic: str) -> _Stream:
        stream = self._streams.get(topic)
        if stream is None:
            stream = self._streams[topic] = _Stream()
        entries = stream.entries
        oldest = time.monotonic() - self.retention.ttl
        while entries and (len(entries) > self.retention.size or entries[0][0] < oldest):
            entries.popleft()
        return stream

    async def publish_recorded(self, topic: str, body: bytes) -> Position:
        if self._on_message is None:
            raise BrokerUnavailable("memory broker is closed")
        stream = self._trimmed(topic)
        stream.offset += 1
        pos = Position(stream.offset, self.epoch)
        payload = splice(body, pos)
        stream.entries.append((time.monotonic(), payload))
        if len(stream.entries) > self.retention.size:
            stream.entries.popleft()
        if topic in self._topics and not self._cut:
            self._on_message(topic, payload)
        return pos

    async def position(self, topic: str) -> Position:
        stream = self._streams.get(topic)
        return Position(stream.offset if stream else 0, self.epoch)

    async def history(self, topic: str, after: int, epoch: str, limit: int) -> History:
        stream = self._trimmed(topic)
        pos = Position(stream.offset, self.epoch)
        missed = stream.offset - after
        if epoch != self.epoch or missed < 0:
            return History([], pos, GAP_EPOCH)
        if missed > min(limit, len(stream.entries)):
            return History([], pos, GAP_TRIMMED)
        entries = stream.entries
        return History([entries[i][1] for i in range(len(entries) - missed, len(entries))], pos)
