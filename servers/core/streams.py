"""Stream positions inside event encodings: the offset/epoch suffix, and the `gap` event.

A recorded event is its JSON object with `,"offset":N,"epoch":"E"}` spliced in place
of the final `}` (by the broker, atomically with the offset's assignment), so the
position can be read back from the last bytes without decoding the event.
"""

from __future__ import annotations

import re
from typing import Any

from servers.core.types import Position

_SUFFIX = re.compile(rb',"offset":(\d{1,20}),"epoch":"([^"\\]{0,64})"\}\Z')
_TAIL = 120  # bytes that always hold the suffix (20-digit offset, 64-character epoch)

# why a stream could not be replayed from a position (the `gap` event's `reason`)
GAP_TRIMMED = "trimmed"  # history no longer reaches back to the position
GAP_EPOCH = "epoch"  # the position belongs to another life of the stream (data lost)
GAP_DISABLED = "disabled"  # the server keeps no history (history_size 0)


def splice(body: bytes, pos: Position) -> bytes:
    """`body` (a JSON object) with the position as its last two fields."""
    return b'%s,"offset":%d,"epoch":"%s"}' % (body[:-1], pos.offset, pos.epoch.encode())


def position_of(raw: bytes) -> Position | None:
    """The position spliced into an event's JSON encoding; None for an unrecorded event."""
    found = _SUFFIX.search(raw, max(0, len(raw) - _TAIL))
    if found is None:
        return None
    return Position(int(found.group(1)), found.group(2).decode())


def gap_body(stream: dict[str, Any], since: int, current: Position | None, reason: str,
             ) -> dict[str, Any]:
    """A `gap` event: the messages after `since` in `stream` ({"room": r} or
    {"inbox": True}) are lost to this client; it continues from `current`."""
    body: dict[str, Any] = {"type": "gap", **stream, "from": since, "reason": reason}
    if current is not None:  # last, like every event that carries a position
        body["offset"], body["epoch"] = current.offset, current.epoch
    return body
