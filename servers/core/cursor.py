"""The resume cursor: where a client is in each of its streams, as one opaque string.

JSON shape (docs/protocol.md, "Offsets and resume"):

    {"inbox": [offset, "epoch"], "rooms": {"<room>": [offset, "epoch"] | [offset, "epoch", true]}}

where a third element `true` re-joins the room with `presence`. On the wire it is
`base64url(JSON)` without padding (WebSocket `?resume=`, gRPC metadata
`rtbench-resume`, SSE `id:` lines). Both sides use this module: the server to decode
and validate it, clients (and the SSE adapter) to track it with CursorTracker.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from servers.core.codec import MAX_EPOCH, check_room
from servers.core.errors import ErrorCode, ProtocolError
from servers.core.types import Limits, Position

# where a connect request carries the cursor (docs/protocol.md, per transport)
RESUME_PARAM = "resume"  # WebSocket, long-poll connect: ?resume=<cursor>
RESUME_HEADER = "x-rtbench-resume"  # the same as a header
RESUME_METADATA = "rtbench-resume"  # gRPC metadata key


@dataclass(slots=True, frozen=True)
class RoomCursor:
    room: str
    since: Position
    presence: bool = False


@dataclass(slots=True, frozen=True)
class Cursor:
    """A decoded, validated cursor: the inbox position and the rooms to re-join."""

    inbox: Position | None = None
    rooms: tuple[RoomCursor, ...] = ()


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_CURSOR, message)


def check_position(value: Any, what: str) -> Position:
    """`[offset, "epoch"]` (the cursor's form) as a Position; BAD_CURSOR otherwise."""
    if (
        not isinstance(value, list)
        or len(value) not in (2, 3)
        or isinstance(value[0], bool)
        or not isinstance(value[0], int)
        or value[0] < 0
        or not isinstance(value[1], str)
        or len(value[1]) > MAX_EPOCH
    ):
        raise _bad(f"{what} must be [offset >= 0, \"epoch\"]")
    return Position(value[0], value[1])


def cursor_from_obj(obj: Any, limits: Limits) -> Cursor:
    if not isinstance(obj, dict):
        raise _bad("the cursor must be a JSON object")
    inbox = None
    if obj.get("inbox") is not None:
        inbox = check_position(obj["inbox"], "'inbox'")
    rooms_obj = obj.get("rooms", {})
    if not isinstance(rooms_obj, dict):
        raise _bad("'rooms' must be an object room -> [offset, \"epoch\"]")
    if len(rooms_obj) > limits.max_rooms:
        raise _bad(f"the cursor lists {len(rooms_obj)} rooms; a connection may join at most "
                   f"{limits.max_rooms}")
    rooms = []
    for room, value in rooms_obj.items():
        try:
            check_room(room)
        except ProtocolError as exc:
            raise _bad(f"cursor room: {exc.message}") from None
        pos = check_position(value, f"room {room!r}")
        presence = len(value) == 3 and value[2] is True
        rooms.append(RoomCursor(room, pos, presence))
    return Cursor(inbox, tuple(rooms))


def decode_cursor(raw: str, limits: Limits) -> Cursor:
    """Decode a `base64url(JSON)` cursor (padding optional); ProtocolError BAD_CURSOR."""
    if len(raw) > limits.max_frame_bytes:
        raise _bad(f"cursor of {len(raw)} characters exceeds the {limits.max_frame_bytes} limit")
    try:
        data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        obj = orjson.loads(data)
    except (binascii.Error, ValueError):  # JSONDecodeError is a ValueError
        raise _bad("the cursor is not base64url-encoded JSON") from None
    return cursor_from_obj(obj, limits)


def encode_cursor(obj: Mapping[str, Any]) -> str:
    """The wire form of a cursor's JSON object: base64url without padding."""
    return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()


class CursorTracker:
    """A connection's cursor, advanced from the events it receives (or an SSE stream writes).

    A stream's position moves to an event's (offset, epoch) when the epoch differs from
    the one held (a new life of the stream) or the offset is higher. A room is tracked
    from its first event or its join's ack, whichever comes first (a join's missed and
    live events arrive before its ack), until `left`.
    """

    __slots__ = ("inbox", "presence", "rooms")

    def __init__(self, cursor: Mapping[str, Any] | None = None) -> None:
        self.inbox: Position | None = None
        self.rooms: dict[str, Position] = {}
        self.presence: set[str] = set()
        if cursor:
            inbox = cursor.get("inbox")
            if inbox is not None:
                self.inbox = Position(int(inbox[0]), str(inbox[1]))
            for room, value in cursor.get("rooms", {}).items():
                self.rooms[room] = Position(int(value[0]), str(value[1]))
                if len(value) > 2 and value[2] is True:
                    self.presence.add(room)

    @classmethod
    def from_cursor(cls, cursor: Cursor | None) -> CursorTracker:
        """A tracker starting where a decoded cursor (a resumed connection) was."""
        tracker = cls()
        if cursor is not None:
            tracker.inbox = cursor.inbox
            for r in cursor.rooms:
                tracker.rooms[r.room] = r.since
                if r.presence:
                    tracker.presence.add(r.room)
        return tracker

    @staticmethod
    def _newer(held: Position | None, offset: Any, epoch: Any) -> Position | None:
        if not isinstance(offset, int) or not isinstance(epoch, str):
            return None
        if held is None or held.epoch != epoch or offset > held.offset:
            return Position(offset, epoch)
        return None

    def observe(self, body: Mapping[str, Any]) -> bool:
        """Advance from one event body (welcome, message, direct, gap); True if it moved."""
        kind = body.get("type")
        if kind == "welcome":
            pos = body.get("inbox")
            if self.inbox is None and isinstance(pos, Mapping):
                self.inbox = self._newer(None, pos.get("offset"), pos.get("epoch"))
                return self.inbox is not None
            return False
        if kind not in ("message", "direct", "gap"):
            return False
        offset, epoch = body.get("offset"), body.get("epoch")
        if kind == "direct" or (kind == "gap" and body.get("inbox") is True):
            new = self._newer(self.inbox, offset, epoch)
            if new is None:
                return False
            self.inbox = new
            return True
        room = body.get("room")
        if not isinstance(room, str):
            return False
        new = self._newer(self.rooms.get(room), offset, epoch)
        if new is None:
            return False
        self.rooms[room] = new
        return True

    def joined(self, room: str, ack: Mapping[str, Any] | None = None,
               presence: bool = False) -> None:
        """The room was joined; `ack` is the join's reply (its `offset`/`epoch`)."""
        held = self.rooms.get(room)
        new = self._newer(held, (ack or {}).get("offset"), (ack or {}).get("epoch"))
        self.rooms[room] = new or held or Position(0, "")
        if presence:
            self.presence.add(room)

    def left(self, room: str) -> None:
        self.rooms.pop(room, None)
        self.presence.discard(room)

    def cursor(self, rooms: Iterable[str] | None = None) -> dict[str, Any]:
        """The cursor's JSON object (only `rooms` when given: the connection's current ones)."""
        obj: dict[str, Any] = {}
        if self.inbox is not None:
            obj["inbox"] = list(self.inbox)
        names = self.rooms if rooms is None else [r for r in rooms if r in self.rooms]
        obj["rooms"] = {
            r: [*self.rooms[r], True] if r in self.presence else list(self.rooms[r])
            for r in names
        }
        return obj

    def encode(self, rooms: Iterable[str] | None = None) -> str:
        """The cursor's wire form (what `encode_cursor(self.cursor(rooms))` gives)."""
        if rooms is None and not self.presence:
            # fast path: an SSE stream writes it per event; the Positions are the lists
            obj: dict[str, Any] = {"rooms": self.rooms}
            if self.inbox is not None:
                obj = {"inbox": self.inbox, "rooms": self.rooms}
            return base64.urlsafe_b64encode(orjson.dumps(obj, default=list)).rstrip(b"=").decode()
        return encode_cursor(self.cursor(rooms))
