"""What both client families read the same way, without I/O (docs/protocol.md): which
events answer commands and which move the resume cursor, the reply of an HTTP command,
a long-poll batch, the `close` event that ends an SSE stream.

The asyncio clients (`loadgen.aio`) and the gevent ones (`loadgen.clients`) are pumps
around these rules and the framing parsers, one module per wire format:
`loadgen.sse_parser` (event streams) and `loadgen.grpc_codec` (gRPC frames). WebSocket
frames and HTTP/1.1 responses are parsed by each family's library (aiohttp; the
gevent side's `wsframes`/`httpresponse` on httptools).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["CURSOR_TYPES", "REPLY_TYPES", "close_of", "error_body", "http_reply", "poll_batch"]

# events that answer a command; matched to the waiting command by `ref`
REPLY_TYPES = frozenset({"ack", "pong", "presence_state", "error"})
# events that move the resume cursor (CursorTracker.observe)
CURSOR_TYPES = frozenset({"message", "direct", "gap"})


def error_body(status: int, body: bytes) -> dict[str, Any]:
    """The `error` event of an HTTP error response: its JSON body when it is one, else
    `http_<status>` with the start of the body as the message."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict) and obj.get("type", "error") == "error" and "code" in obj:
        obj["type"] = "error"
        return obj
    return {"type": "error", "code": f"http_{status}",
            "message": body[:200].decode(errors="replace")}


def http_reply(status: int, body: bytes) -> dict[str, Any]:
    """The reply event of a command `POST` (docs/protocol.md 7.2, 7.3): the JSON object of
    a 2xx body (`ack`, `pong`, `presence_state`), an `error` for any other status."""
    if 200 <= status < 300:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            return obj
    return error_body(status, body)


def poll_batch(body: bytes) -> tuple[list[dict[str, Any]], tuple[int, str] | None]:
    """The events of a long-poll `200` body and, when the server ended the connection,
    its `closed` (code, reason). ValueError when the body is not `{"events": [...]}`."""
    obj = orjson.loads(body)
    if not isinstance(obj, dict) or not isinstance(obj.get("events"), list):
        raise ValueError(f"not a long-poll batch: {body[:80]!r}")
    closed = obj.get("closed")
    if not closed:
        return obj["events"], None
    return obj["events"], (int(closed.get("code", 1000)), str(closed.get("reason", "")))


def close_of(event: Mapping[str, Any]) -> tuple[int, str] | None:
    """(code, reason) of the `close` event an SSE stream ends with; None for any other."""
    if event.get("type") != "close":
        return None
    return int(event.get("code", 1000)), str(event.get("reason", ""))
