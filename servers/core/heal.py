"""Healing the local streams after the broker's subscription broke (docs/protocol.md 4.2).

While a replica's subscription is down (Redis restarted, the subscriber connection
cut), other replicas keep publishing: those messages are recorded in history and
acked to their senders, but reach none of this replica's clients. When the broker
has every topic subscribed again it says so (`Broker.watch_resubscribe`); then, for
each room and inbox with local members:

1. at once (no await): the topic's live events are held for the heal and no longer
   delivered (CatchUp.suspended);
2. the history after the last position delivered here is read; if the stream has
   a new epoch (the broker lost its data), the new epoch from its start;
3. with no await from there: the members get the missed messages (or one `gap`:
   `epoch`, then the new epoch's messages; `trimmed`), then the held live events
   past what was read, and the topic goes live again: no hole, no duplicate.

With history off nothing can be replayed: the members get a `gap` with reason
`disabled` at once. A member that joined while the heal read gets only what is
past its own join position. If history cannot be read (the broker failed again)
after a few tries, the members are closed (1011) and resume with their cursors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from servers.core.catchup import CatchUp, Read, is_after, push_all
from servers.core.errors import BrokerUnavailable
from servers.core.outbox import Outbox
from servers.core.streams import GAP_DISABLED, GAP_EPOCH, GAP_TRIMMED, gap_body, position_of
from servers.core.types import CloseReason, Event, Limits, Position

log = logging.getLogger("rtbench.heal")

TRIES = 3  # history reads before giving up on a heal
RETRY_DELAY = 0.5  # seconds between them

# a topic's last delivered position: the last payload (position read on demand, so
# the delivery path only stores a reference) or the position a first member joined at
LastSeen = dict[str, bytes | Position]


def stream_of(topic: str) -> dict[str, Any] | None:
    """The `gap` event's stream fields of a room or inbox topic; None for others."""
    kind, _, name = topic.partition(":")
    if kind == "room":
        return {"room": name}
    if kind == "user":
        return {"inbox": True}
    return None


class Counts(Protocol):
    deliveries: int


class _Heal:
    __slots__ = ("again", "key", "late")

    def __init__(self, limits: Limits) -> None:
        # collects the held live events (closed by CatchUp.hold if they overflow)
        self.key = Outbox(limits.outbox_max_events, limits.outbox_max_bytes)
        self.again = False  # the subscription broke again while reading: read again
        self.late: dict[Outbox, Position] = {}  # members registered meanwhile: their position


class Healer:
    """The heals in progress, one per topic."""

    __slots__ = ("catchup", "heals", "last", "limits", "members", "spawn", "stats")

    def __init__(self, catchup: CatchUp, last: LastSeen,
                 members: Callable[[str], list[Outbox]],
                 spawn: Callable[[Awaitable[Any]], None], stats: Counts) -> None:
        self.catchup = catchup
        self.stats = stats  # the hub's: what a heal queues counts as deliveries
        self.limits = catchup.limits
        self.last = last
        self.members = members
        self.spawn = spawn
        self.heals: dict[str, _Heal] = {}

    def resubscribed(self, topics: list[str]) -> None:
        """Broker callback: heal each of `topics` that has local members."""
        for topic in topics:
            stream = stream_of(topic)
            if stream is None:
                continue
            outboxes = self.members(topic)
            if not outboxes:
                continue
            if not self.limits.history:
                gap = Event(gap_body(stream, 0, None, GAP_DISABLED))
                self.stats.deliveries += sum(outbox.push(gap) for outbox in outboxes)
                continue
            heal = self.heals.get(topic)
            if heal is not None:
                heal.again = True
                continue
            heal = self.heals[topic] = _Heal(self.limits)
            held = self.catchup.start_hold(heal.key, topic)
            self.catchup.suspended.add(topic)
            self.spawn(self._heal(topic, stream, heal, held))

    def joined(self, topic: str, outbox: Outbox, pos: Position | None) -> None:
        """A member registered at `pos`: if the topic is being healed, it gets only what
        comes after `pos` from the heal."""
        heal = self.heals.get(topic)
        if heal is not None and pos is not None:
            heal.late[outbox] = pos

    def _since(self, topic: str) -> Position | None:
        last = self.last.get(topic)
        return position_of(last) if isinstance(last, bytes) else last

    async def _heal(self, topic: str, stream: dict[str, Any], heal: _Heal,
                    held: list[Event]) -> None:
        since = self._since(topic)
        try:
            events = await self._read(topic, since, stream, heal, held)
        except BrokerUnavailable as exc:
            log.warning("cannot heal %s, closing its members: %s", topic, exc)
            events = None
        finally:
            self.catchup.stop_hold(heal.key, topic)
            self.catchup.suspended.discard(topic)
            del self.heals[topic]
        # no await from here: the topic is live again
        outboxes = self.members(topic)
        if events is None or heal.key.closed:
            reason = CloseReason.INTERNAL if events is None else CloseReason.SLOW_CONSUMER
            for outbox in outboxes:
                outbox.close(reason)
            return
        for outbox in outboxes:
            pos = heal.late.get(outbox)
            mine = events if pos is None else [ev for ev in events if _past(ev, pos)]
            self.stats.deliveries += push_all(outbox, mine)
        if events and outboxes:
            last = events[-1].json()
            self.last[topic] = last
            # what history gave may still be on its way on the subscription
            if (reached := position_of(last)) is not None:
                for outbox in outboxes:
                    self.catchup.fence(topic, outbox, reached)

    async def _read(self, topic: str, since: Position | None, stream: dict[str, Any],
                    heal: _Heal, held: list[Event]) -> list[Event]:
        """The events the members missed after `since`, then the held ones."""
        for attempt in range(1, TRIES + 1):
            heal.again = False
            try:
                read = await self.catchup.fetch(topic, since, held)
                if since is None:  # not expected: where the members are is unknown
                    gap = Event(gap_body(stream, 0, read.position, GAP_TRIMMED))
                    return [gap, *CatchUp.events(read, None, stream)]
                hist = read.history
                if hist is not None and hist.gap == GAP_EPOCH and read.position is not None:
                    # a new life of the stream: everything in it is new to the members
                    start = Position(0, read.position.epoch)
                    fresh = await self.catchup.fetch(topic, start, held)
                    if fresh.history is not None and fresh.history.gap is None:
                        gap = Event(gap_body(stream, since.offset, start, GAP_EPOCH))
                        return [gap, *CatchUp.events(fresh, start, stream)]
                    read = Read(fresh.position, hist, held)  # a gap to where it is now
            except BrokerUnavailable:
                if attempt == TRIES:
                    raise
                await asyncio.sleep(RETRY_DELAY)
                continue
            if not heal.again:
                return CatchUp.events(read, since, stream)
        raise BrokerUnavailable(f"the subscription of {topic} kept breaking")


def _past(ev: Event, pos: Position) -> bool:
    p = position_of(ev.json())
    return p is None or is_after(p, pos)
