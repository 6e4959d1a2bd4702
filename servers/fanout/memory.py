"""In-process broker: single-node fanout with the same contract as Redis."""

from __future__ import annotations

from collections.abc import Iterable

from servers.core.errors import BrokerUnavailable
from servers.core.types import OnMessage


class MemoryBroker:
    """Delivers publishes synchronously to the one local subscriber (the hub)."""

    name = "memory"

    def __init__(self) -> None:
        self._on_message: OnMessage | None = None
        self._topics: set[str] = set()
        self._counts: dict[str, dict[str, int]] = {}

    async def start(self, on_message: OnMessage) -> None:
        self._on_message = on_message

    async def close(self) -> None:
        self._on_message = None

    async def subscribe(self, topic: str) -> None:
        self._topics.add(topic)

    async def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)

    async def publish(self, topic: str, payload: bytes) -> None:
        if self._on_message is None:
            raise BrokerUnavailable("memory broker is closed")
        if topic in self._topics:
            self._on_message(topic, payload)

    async def count_add(self, key: str, member: str, delta: int) -> int:
        counts = self._counts.setdefault(key, {})
        n = counts.get(member, 0) + delta
        if n <= 0:
            counts.pop(member, None)
            return 0
        counts[member] = n
        return n

    async def count_get(self, key: str, members: Iterable[str]) -> list[int]:
        counts = self._counts.get(key, {})
        return [counts.get(m, 0) for m in members]
