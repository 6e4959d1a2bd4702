"""Catching a connection up on a stream (a room, an inbox) before it goes live.

A connection that joins a room (or opens, for its inbox) has the topic subscribed
but is not yet one of its recipients. While the stream's position, or its history
after the client's `since`, is read from the broker, the live events of the topic
are held for it here. Then, with no await in between, `replay` pushes the missed
events (or a `gap`), then the held events past the position read, and the hub
registers it as a normal recipient: nothing lost or repeated at the seam, and the
hub's delivery loop for everyone else stays a plain set iteration.

The broker's subscription and the reads are separate connections: an event in the
history (or before the position) read may still be on its way on the subscription
when the connection is registered. `fence` makes the live path drop, for that
outbox, the events up to what it was replayed, until one past it arrives.

The same machinery heals a topic whose broker subscription broke (heal.py): its
live events are then held for the heal alone (`suspended`) while the history the
members missed is read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from servers.core.outbox import Outbox
from servers.core.streams import GAP_DISABLED, gap_body, position_of
from servers.core.types import Broker, CloseReason, Event, History, Limits, Position


@dataclass(slots=True)
class Read:
    """A stream read for a connection catching up, and the live events held meanwhile."""

    position: Position | None  # None: history is off
    history: History | None  # None: only the position was read
    held: list[Event]

    def last(self) -> Position | None:
        """The position of the last event `replay` queues (None: history is off)."""
        pos = self.position
        if pos is None:
            return None
        for ev in reversed(self.held):
            p = position_of(ev.json())
            if p is not None and is_after(p, pos):
                return p
        return pos


_OFF = Read(None, None, [])
FENCE_TTL = 5.0  # seconds a fence lasts at most (CatchUp.fence)


def is_after(p: Position, pos: Position) -> bool:
    """Whether an event at `p` comes after `pos` (another epoch: the stream restarted)."""
    return p.epoch != pos.epoch or p.offset > pos.offset


class CatchUp:
    """The outboxes catching up on each topic and the live events held for them."""

    __slots__ = ("broker", "fences", "holding", "limits", "suspended")

    def __init__(self, broker: Broker, limits: Limits) -> None:
        self.broker = broker
        self.limits = limits
        # topic -> outbox catching up on it -> live events held for it (empty most of the time)
        self.holding: dict[str, dict[Outbox, list[Event]]] = {}
        # topics being healed: their live events go to the holds only (heal.py)
        self.suspended: set[str] = set()
        # topic -> outbox -> the position it was replayed up to (rare, mostly empty)
        self.fences: dict[str, dict[Outbox, Position]] = {}

    def fence(self, topic: str, outbox: Outbox, pos: Position) -> None:
        """`outbox` has the stream up to `pos`: drop live events up to it for it (until
        one past it comes, or FENCE_TTL: what was on its way has arrived by then)."""
        if pos.offset == 0:
            return  # nothing can be on its way
        table = self.fences.setdefault(topic, {})
        had = table.get(outbox)
        if had is None or is_after(pos, had):
            table[outbox] = pos
            asyncio.get_running_loop().call_later(FENCE_TTL, self._lift, topic, outbox, pos)

    def _lift(self, topic: str, outbox: Outbox, pos: Position) -> None:
        table = self.fences.get(topic)
        if table is not None and table.get(outbox) == pos:
            self.unfence(topic, outbox)

    def unfence(self, topic: str, outbox: Outbox) -> None:
        table = self.fences.get(topic)
        if table is not None and table.pop(outbox, None) is not None and not table:
            del self.fences[topic]

    def fenced(self, topic: str, event: Event) -> set[Outbox]:
        """The outboxes that already have `event` (live path, `topic` in `fences`);
        fences it is past are lifted (the subscription delivers in order)."""
        p = position_of(event.json())
        if p is None:
            return set()
        table = self.fences[topic]
        skip = set()
        for outbox, pos in list(table.items()):
            if is_after(p, pos):
                del table[outbox]
            else:
                skip.add(outbox)
        if not table:
            del self.fences[topic]
        return skip

    def start_hold(self, outbox: Outbox, topic: str) -> list[Event]:
        """Hold `topic`'s live events for `outbox` from now on (until `stop_hold`)."""
        held: list[Event] = []
        self.holding.setdefault(topic, {})[outbox] = held
        return held

    def stop_hold(self, outbox: Outbox, topic: str) -> None:
        table = self.holding.get(topic)
        if table is not None:
            table.pop(outbox, None)
            if not table:
                del self.holding[topic]

    async def fetch(self, topic: str, since: Position | None, held: list[Event]) -> Read:
        """The stream's position, or its history after `since` (history on)."""
        if since is None:
            return Read(await self.broker.position(topic), None, held)
        hist = await self.broker.history(
            topic, since.offset, since.epoch, self.limits.history_size
        )
        return Read(hist.position, hist, held)

    async def read(self, outbox: Outbox, topic: str, since: Position | None) -> Read:
        """The stream's position (or its history after `since`), holding the topic's live
        events for `outbox` meanwhile. The caller must `replay` and register the
        connection with no await in between, or events would slip past both."""
        if not self.limits.history:
            return _OFF  # no await either: the caller registers at once
        held = self.start_hold(outbox, topic)
        try:
            return await self.fetch(topic, since, held)
        finally:
            self.stop_hold(outbox, topic)

    def hold(self, topic: str, event: Event) -> int:
        """Broker callback path: keep `event` for every outbox catching up on `topic`;
        returns how many outboxes this closed for falling too far behind."""
        table = self.holding.get(topic)
        if not table:
            return 0
        limit = self.limits.outbox_max_events
        dropped = 0
        for outbox, events in table.items():
            if len(events) < limit:
                events.append(event)
            elif not outbox.closed:  # it could never take them all
                outbox.close(CloseReason.SLOW_CONSUMER)
                dropped += 1
        return dropped

    @staticmethod
    def replay(outbox: Outbox, read: Read, since: Position | None, stream: dict[str, Any],
               ) -> int:
        """Push what was missed after `since` (or a gap), then the held live events past
        the position read (earlier ones are in the history or before the position).
        Returns how many events were queued."""
        return push_all(outbox, CatchUp.events(read, since, stream))

    @staticmethod
    def events(read: Read, since: Position | None, stream: dict[str, Any]) -> list[Event]:
        """What `replay` pushes: the history after `since` (or a gap), then the held
        live events past the position read."""
        pos, hist = read.position, read.history
        events: list[Event] = []
        if since is not None:
            if pos is None or hist is None:
                events.append(Event(gap_body(stream, since.offset, None, GAP_DISABLED)))
            elif hist.gap is not None:
                events.append(Event(gap_body(stream, since.offset, pos, hist.gap)))
            else:
                events.extend(map(Event.from_json, hist.entries))
        if pos is not None:
            for ev in read.held:
                p = position_of(ev.json())
                # another epoch: the stream restarted while we read; its events are new
                if p is None or is_after(p, pos):
                    events.append(ev)
        return events


def push_all(outbox: Outbox, events: list[Event]) -> int:
    """Push `events` in order, stopping if `outbox` closes (slow consumer: it will
    resume from what it got); how many were queued."""
    queued = 0
    for ev in events:
        if not outbox.push(ev):
            break
        queued += 1
    return queued
