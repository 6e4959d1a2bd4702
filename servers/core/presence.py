"""Presence: who is online and who is in which room, counted across replicas.

The broker keeps counters (Broker.count_add): `online` counts each user's
connections, `members:<room>` each user's connections in the room, over every
replica. A room's `presence` events (on topic `presence:<room>`) mark its
counter's 0 <-> 1 edges. The edges that no command caused, a dead replica's
counts expiring or a replica writing its counts back after it had been taken for
dead (docs/protocol.md 6.1), come from the broker (`Broker.watch_counts`) and are
announced the same way, by the one replica that saw them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from servers.core.errors import BrokerUnavailable
from servers.core.types import Broker, CountChange, Event

log = logging.getLogger("rtbench.presence")

ONLINE_KEY = "online"
_MEMBERS = "members:"


def presence_topic(room: str) -> str:
    """Join/leave events of a room travel apart from its messages (opt-in per join)."""
    return "presence:" + room


def members_key(room: str) -> str:
    return _MEMBERS + room


def presence_event(room: str, user: str, joined: bool) -> Event:
    status = "joined" if joined else "left"
    return Event({"type": "presence", "room": room, "user": user, "status": status})


class Presence:
    """Counts members and announces edges; `spawn` runs background broker work."""

    def __init__(self, broker: Broker, spawn: Callable[[Awaitable[Any]], None]) -> None:
        self.broker = broker
        self._spawn = spawn
        broker.watch_counts(self.counts_changed)

    async def member_delta(self, room: str, user: str, delta: int) -> None:
        """Count the user's connections in the room across replicas; announce 0<->1 edges.

        Never raises: membership itself is local and already done; a fanout failure
        here only costs a presence event (logged), it must not undo a join or a leave.
        """
        try:
            n = await self.broker.count_add(members_key(room), user, delta)
            if (delta > 0 and n == 1) or (delta < 0 and n == 0):
                await self._announce(room, user, delta > 0)
        except BrokerUnavailable as exc:
            log.warning("presence update for %s in %s lost: %s", user, room, exc)

    async def connection_delta(self, user: str, delta: int) -> None:
        """Count the user's connections across replicas (no events: `presence` asks)."""
        await self.broker.count_add(ONLINE_KEY, user, delta)

    async def online(self, users: tuple[str, ...]) -> dict[str, bool]:
        counts = await self.broker.count_get(ONLINE_KEY, users)
        return {u: n > 0 for u, n in zip(users, counts, strict=True)}

    def counts_changed(self, changes: list[CountChange]) -> None:
        """Broker callback: announce the room edges nobody's command caused."""
        for change in changes:
            if change.key.startswith(_MEMBERS):
                room = change.key[len(_MEMBERS):]
                self._spawn(self._announce(room, change.member, change.present))

    async def _announce(self, room: str, user: str, joined: bool) -> None:
        await self.broker.publish(presence_topic(room), presence_event(room, user, joined).json())
