"""JSON wire codec: bytes -> Command (validated) and the naming rules.

Plain functions over bytes (no I/O), tested with bytes. Every failure is a ProtocolError
with a stable code and a message that names the offending field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from servers.core.errors import ErrorCode, ProtocolError
from servers.core.types import (
    Command,
    Direct,
    Join,
    Leave,
    Limits,
    Ping,
    Position,
    PresenceQuery,
    Publish,
    Ref,
)

ROOM_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
USER_RE = re.compile(r"[A-Za-z0-9_.@\-]{1,64}")
MAX_EPOCH = 64  # characters of a client-supplied epoch (the servers' own are shorter)


def check_room(room: Any, ref: Ref = None) -> str:
    if not isinstance(room, str):
        raise ProtocolError(ErrorCode.BAD_FIELD, "field 'room' must be a string", ref)
    if not ROOM_RE.fullmatch(room):
        raise ProtocolError(
            ErrorCode.BAD_ROOM, f"room name {room[:80]!r} must match [A-Za-z0-9_.:-]{{1,64}}", ref
        )
    return room


def check_user(user: Any, field: str = "to", ref: Ref = None) -> str:
    if not isinstance(user, str):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"field {field!r} must be a string", ref)
    if not USER_RE.fullmatch(user):
        raise ProtocolError(
            ErrorCode.BAD_USER, f"user name {user[:80]!r} must match [A-Za-z0-9_.@-]{{1,64}}", ref
        )
    return user


def _ref(obj: dict[str, Any]) -> Ref:
    ref = obj.get("id")
    if ref is None:
        return None
    if isinstance(ref, bool) or not isinstance(ref, str | int):
        raise ProtocolError(ErrorCode.BAD_FIELD, "field 'id' must be a string or an integer")
    if isinstance(ref, str) and len(ref) > 128:
        raise ProtocolError(ErrorCode.BAD_FIELD, "field 'id' is longer than 128 characters")
    return ref


def _need(obj: dict[str, Any], field: str, ref: Ref) -> Any:
    try:
        return obj[field]
    except KeyError:
        raise ProtocolError(
            ErrorCode.MISSING_FIELD, f"command {obj['type']!r} needs field {field!r}", ref
        ) from None


def _since(value: Any, ref: Ref) -> Position | None:
    if value is None:
        return None
    if isinstance(value, dict):
        offset, epoch = value.get("offset"), value.get("epoch")
        if (
            isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0
            and isinstance(epoch, str) and len(epoch) <= MAX_EPOCH
        ):
            return Position(offset, epoch)
    raise ProtocolError(
        ErrorCode.BAD_FIELD,
        "field 'since' must be {\"offset\": <integer >= 0>, \"epoch\": <string>}",
        ref,
    )


def _join(o: dict[str, Any], ref: Ref) -> Command:
    presence = o.get("presence", False)
    if not isinstance(presence, bool):
        raise ProtocolError(ErrorCode.BAD_FIELD, "field 'presence' must be true or false", ref)
    room = check_room(_need(o, "room", ref), ref)
    return Join(room, ref, presence, _since(o.get("since"), ref))


def _leave(o: dict[str, Any], ref: Ref) -> Command:
    return Leave(check_room(_need(o, "room", ref), ref), ref)


def _publish(o: dict[str, Any], ref: Ref) -> Command:
    return Publish(check_room(_need(o, "room", ref), ref), _need(o, "data", ref), ref)


def _direct(o: dict[str, Any], ref: Ref) -> Command:
    return Direct(check_user(_need(o, "to", ref), "to", ref), _need(o, "data", ref), ref)


def _ping(o: dict[str, Any], ref: Ref) -> Command:
    return Ping(ref)


def _presence(o: dict[str, Any], ref: Ref) -> Command:
    users = _need(o, "users", ref)
    if not isinstance(users, list):
        raise ProtocolError(ErrorCode.BAD_FIELD, "field 'users' must be a list of user names", ref)
    return PresenceQuery(tuple(check_user(u, "users", ref) for u in users), ref)


_PARSERS: dict[str, Callable[[dict[str, Any], Ref], Command]] = {
    "join": _join,
    "leave": _leave,
    "publish": _publish,
    "direct": _direct,
    "ping": _ping,
    "presence": _presence,
}

COMMAND_TYPES = tuple(_PARSERS)


def command_from_obj(obj: Any, limits: Limits) -> Command:
    """Validate an already-decoded JSON value as a command."""
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "a command must be a JSON object")
    ref = _ref(obj)
    kind = obj.get("type")
    if kind is None:
        raise ProtocolError(ErrorCode.MISSING_FIELD, "command needs field 'type'", ref)
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_FIELD, "field 'type' must be a string", ref)
    parser = _PARSERS.get(kind)
    if parser is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_COMMAND,
            f"unknown command {kind[:40]!r}; expected one of {', '.join(COMMAND_TYPES)}",
            ref,
        )
    cmd = parser(obj, ref)
    if isinstance(cmd, PresenceQuery) and len(cmd.users) > limits.max_presence_query:
        raise ProtocolError(
            ErrorCode.BAD_FIELD, f"at most {limits.max_presence_query} users per query", ref
        )
    return cmd


def parse_command(raw: bytes | str, limits: Limits) -> Command:
    """Decode and validate one JSON command frame."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
    if size > limits.max_frame_bytes:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"frame of {size} bytes exceeds the {limits.max_frame_bytes} limit"
        )
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"frame is not valid JSON: {exc}") from None
    return command_from_obj(obj, limits)
