"""A client connection as the core sees it, and the hub's counters."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from servers.core.outbox import Outbox


class Connection:
    """One client connection as the core sees it (one per socket/stream/session)."""

    __slots__ = ("fmt", "id", "joining", "outbox", "rooms", "user", "watching")

    def __init__(self, conn_id: str, user: str, fmt: str, outbox: Outbox) -> None:
        self.id = conn_id
        self.user = user
        self.fmt = fmt  # wire format of the adapter: "json" or "proto"
        self.outbox = outbox
        self.rooms: set[str] = set()
        # rooms whose join/leave events it asked for (created on first use: ~200 B saved
        # per held connection, and few connections ask)
        self.watching: set[str] | None = None
        # rooms being subscribed for it (set when needed: most connections never have one)
        self.joining: dict[str, asyncio.Future[None]] | None = None

    def __repr__(self) -> str:
        return f"Connection({self.id}, user={self.user})"


@dataclass(slots=True)
class HubStats:
    """Plain counters read by the metrics exporter at scrape time (no locks on the hot path)."""

    connections_opened: int = 0
    connections_closed: int = 0
    commands: int = 0
    errors: int = 0
    published: int = 0
    broker_messages: int = 0
    deliveries: int = 0
    slow_consumers: int = 0
