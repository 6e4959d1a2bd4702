"""The contract: commands in, events out, limits, and the broker interface.

Every adapter and every fanout implementation speaks only these types.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple, Protocol

import orjson

# ---------------------------------------------------------------- commands

Ref = str | int | None  # client-chosen command id, echoed as `ref` in ack/error


class Position(NamedTuple):
    """A place in one stream (a room, a user inbox): its last offset and the stream's epoch.

    Offsets count a stream's messages from 1; offset 0 is "before the first". The epoch
    names one life of the stream's history: when it changes (the broker lost its
    data), offsets restart and older positions mean nothing.
    """

    offset: int
    epoch: str


@dataclass(slots=True, frozen=True)
class Join:
    """Join `room`; with `presence` the connection also gets the room's join/leave events.

    With `since`, the client was a member up to that position: it first gets what it
    missed after it (or a `gap` event), then the live stream.
    """

    room: str
    ref: Ref = None
    presence: bool = False
    since: Position | None = None


@dataclass(slots=True, frozen=True)
class Leave:
    room: str
    ref: Ref = None


@dataclass(slots=True, frozen=True)
class Publish:
    """Publish `data` (any JSON value) to every member of `room`."""

    room: str
    data: Any
    ref: Ref = None


@dataclass(slots=True, frozen=True)
class Direct:
    """Send `data` to every connection of user `to`, on every replica."""

    to: str
    data: Any
    ref: Ref = None


@dataclass(slots=True, frozen=True)
class Ping:
    ref: Ref = None


@dataclass(slots=True, frozen=True)
class PresenceQuery:
    """Ask which of `users` are online (any connection on any replica)."""

    users: tuple[str, ...]
    ref: Ref = None


Command = Join | Leave | Publish | Direct | Ping | PresenceQuery


# ------------------------------------------------------------------ events


class Event:
    """One server-to-client event, encoded at most once per wire format.

    The canonical form is the JSON body (`json()`); it is also what travels over
    the broker, so an event received from Redis reaches JSON clients without a
    decode or re-encode. Other formats (protobuf, SSE framing) are computed on
    first use and cached on the event, so a message fanned out to N clients is
    encoded once per format, never once per recipient.
    """

    __slots__ = ("_body", "_cache", "_json", "_text")

    def __init__(self, body: dict[str, Any] | None = None, raw: bytes | None = None) -> None:
        if body is None and raw is None:
            raise ValueError("Event needs a body or its JSON encoding")
        self._body = body
        self._json = raw
        self._text: str | None = None
        self._cache: dict[str, bytes] | None = None

    @classmethod
    def from_json(cls, raw: bytes) -> Event:
        return cls(raw=raw)

    def json(self) -> bytes:
        """The JSON encoding (computed once)."""
        if self._json is None:
            # orjson's result keeps a 4 KiB allocation whatever its length; a copy is
            # exact-size, which matters for events held in outboxes (and their byte count)
            self._json = bytes(memoryview(orjson.dumps(self._body)))
        return self._json

    def text(self) -> str:
        """The JSON encoding as str, for frameworks whose text frames take str (cached)."""
        if self._text is None:
            self._text = self.json().decode()
        return self._text

    @property
    def body(self) -> dict[str, Any]:
        """The decoded body (parsed once, lazily, for non-JSON formats)."""
        if self._body is None:
            assert self._json is not None
            self._body = orjson.loads(self._json)
        return self._body

    @property
    def type(self) -> str:
        return str(self.body["type"])

    def encoded(self, fmt: str, encode: Callable[[Event], bytes]) -> bytes:
        """The encoding in format `fmt`, computed by `encode` on first use only."""
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        data = cache.get(fmt)
        if data is None:
            data = cache[fmt] = encode(self)
        return data

    def __repr__(self) -> str:
        return f"Event({self.json().decode(errors='replace')[:120]})"


def now_us() -> int:
    """Wall-clock microseconds since the epoch, the unit of every `ts` field."""
    return time.time_ns() // 1000


class CloseReason(IntEnum):
    """Why the server ends a connection; WebSocket close codes, mirrored elsewhere."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down
    POLICY = 1008
    TOO_LARGE = 1009
    INTERNAL = 1011
    BAD_REQUEST = 4400  # the connect request was refused (a bad resume cursor)
    UNAUTHORIZED = 4401  # missing, forged or expired token
    SLOW_CONSUMER = 4408  # outbound queue overflowed; resume from the last cursor

    @property
    def text(self) -> str:
        """The human reason sent with the code (WS close reason, SSE/long-poll `reason`)."""
        return _CLOSE_TEXT.get(self, self.name.lower())


_CLOSE_TEXT = {
    CloseReason.NORMAL: "",
    CloseReason.GOING_AWAY: "server shutting down",
    CloseReason.SLOW_CONSUMER: "slow consumer: outbound queue full",
}


# ------------------------------------------------------------------ limits


@dataclass(slots=True, frozen=True)
class Limits:
    """Per-connection limits and stream retention; every field is a setting (`RTBENCH_*`)."""

    max_frame_bytes: int = 64 * 1024
    max_rooms: int = 100
    outbox_max_events: int = 10_000
    outbox_max_bytes: int = 8 * 1024 * 1024
    max_presence_query: int = 100
    # retention of each stream's history (room, inbox): the last `history_size` messages
    # no older than `history_ttl` seconds; history_size 0 turns offsets and resume off
    history_size: int = 1000
    history_ttl: float = 300.0

    @property
    def history(self) -> bool:
        return self.history_size > 0


# ------------------------------------------------------------------ broker

# Topics are `room:<name>` and `user:<name>`; the broker maps them to its own
# channel names. A topic's payload is always an event's JSON encoding.
OnMessage = Callable[[str, bytes], None]


class CountChange(NamedTuple):
    """A counter that crossed zero other than through this replica's own `count_add`."""

    key: str
    member: str
    present: bool  # True: it became positive; False: it reached zero


# called with the counters a broker changed on its own (see Broker.watch_counts)
OnCountChange = Callable[[list[CountChange]], None]

# called with the topics a broker subscribed again after losing its subscription
# (see Broker.watch_resubscribe)
OnResubscribed = Callable[[list[str]], None]


def room_topic(room: str) -> str:
    return "room:" + room


def user_topic(user: str) -> str:
    return "user:" + user


@dataclass(slots=True, frozen=True)
class Retention:
    """How much history a broker keeps per stream (Limits.history_size/history_ttl)."""

    size: int = 1000
    ttl: float = 300.0


DEFAULT_RETENTION = Retention()


@dataclass(slots=True, frozen=True)
class History:
    """What a stream holds after a position: the missed entries, or why they are gone.

    `entries` are event JSON encodings (with their `offset`/`epoch`), in offset order,
    exactly the offsets after+1 .. position.offset; empty when `gap` is set ("trimmed":
    history no longer reaches back that far; "epoch": the position belongs to another
    life of the stream). `position` is the stream's current last position.
    """

    entries: list[bytes]
    position: Position
    gap: str | None = None


class Broker(Protocol):
    """Fanout between replicas plus the small shared state presence and history need.

    Contract: after `subscribe(t)` returns, every later `publish(t, ...)` or
    `publish_recorded(t, ...)` from any replica reaches `on_message` exactly once,
    in publish order per publisher; publishes raise BrokerUnavailable instead of
    dropping silently. `publish_recorded` is all or nothing: the event gets the
    stream's next offset, lands in its bounded history and is published, atomically.
    """

    name: str

    async def start(
        self, on_message: OnMessage, retention: Retention = DEFAULT_RETENTION
    ) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, topic: str) -> None: ...

    async def unsubscribe(self, topic: str) -> None: ...

    async def publish(self, topic: str, payload: bytes) -> None: ...

    async def count_add(self, key: str, member: str, delta: int) -> int:
        """Add `delta` to this replica's share of `member`'s counter in set `key` (a share
        never goes below 0); return the counter's new value over all replicas, or -1 for
        a decrement that found nothing of this replica's to take away (Redis with
        presence_ttl 0 keeps no shares: the counter stays at 0 and 0 is returned)."""
        ...

    def watch_counts(self, callback: OnCountChange) -> None:
        """Have `callback` told of counters crossing zero on their own: the shares of a
        replica that stopped refreshing them expired, or this replica wrote its shares
        back after it had been taken for dead (docs/protocol.md 6.1)."""
        ...

    def watch_resubscribe(self, callback: OnResubscribed) -> None:
        """Have `callback` told, with the topics concerned, when the subscription broke
        (what was published meanwhile reached nobody here) and is confirmed again: every
        later publish reaches `on_message` again (the hub replays the rest from history)."""
        ...

    async def count_get(self, key: str, members: Iterable[str]) -> list[int]: ...

    async def publish_recorded(self, topic: str, body: bytes) -> Position:
        """Publish the event JSON object `body` as the stream's next entry; its position.

        The published and recorded payload is `body` with `,"offset":N,"epoch":"E"}`
        in place of its final `}`.
        """
        ...

    async def position(self, topic: str) -> Position:
        """The stream's last position (an epoch is created if the stream has none)."""
        ...

    async def history(self, topic: str, after: int, epoch: str, limit: int) -> History:
        """The entries after offset `after` of `epoch`; a gap if there are more than
        `limit` of them, history no longer holds them all, or the epoch differs."""
        ...
