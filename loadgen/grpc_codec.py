"""The gRPC wire format of docs/protocol.md 7.4 without I/O, for every gRPC client (the
asyncio one on grpc.aio, the gevent ones on grpcio and on h2): commands (JSON-shaped
dicts) to `ClientFrame`s, `ServerFrame`s to the JSON transports' event dicts (`data`
decoded from its JSON bytes, so callers see the same bodies whatever the transport),
and a stream's final status to its close code (docs/protocol.md 6).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import orjson

from servers.proto import rtbench_pb2 as pb

__all__ = ["CONNECT", "event_of", "frame_of", "status_close", "target_of"]

CONNECT = "/rtbench.v1.Chat/Connect"

# section 7.4: the status that ends a stream, and the close code it stands for
_STATUS_CODES = {
    grpc.StatusCode.UNAUTHENTICATED: 4401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 4408,
    grpc.StatusCode.INVALID_ARGUMENT: 4400,  # a refused resume cursor
    grpc.StatusCode.OK: 1000,
}
_STATUS = {s.value[0]: s for s in grpc.StatusCode}


def status_close(status: int | grpc.StatusCode | None, details: str | None) -> tuple[int, str]:
    """(close code, reason) of a final status (a StatusCode or its number). UNAVAILABLE
    stands for both 1001 and 1011; only 1011 (setup failed) says `unavailable:` or
    `internal` in its details. Any other status: 1006."""
    if not isinstance(status, grpc.StatusCode):
        status = _STATUS.get(status if status is not None else -1, grpc.StatusCode.UNKNOWN)
    text = details or ""
    code = _STATUS_CODES.get(status)
    if code is None:
        if status == grpc.StatusCode.UNAVAILABLE:
            code = 1011 if text.startswith(("unavailable", "internal")) else 1001
        else:
            code = 1006
    return code, text


def frame_of(cmd: dict[str, Any]) -> pb.ClientFrame:
    """The ClientFrame of a JSON-shaped command."""
    frame = pb.ClientFrame()
    if "id" in cmd:
        frame.id = str(cmd["id"])
    kind = cmd["type"]
    if kind == "publish":
        frame.publish.room = cmd["room"]
        frame.publish.data = orjson.dumps(cmd["data"])
    elif kind == "direct":
        frame.direct.to = cmd["to"]
        frame.direct.data = orjson.dumps(cmd["data"])
    elif kind == "join":
        frame.join.room = cmd["room"]
        frame.join.presence = bool(cmd.get("presence", False))
        since = cmd.get("since")
        if since is not None:
            frame.join.since.offset = since["offset"]
            frame.join.since.epoch = since["epoch"]
    elif kind == "leave":
        frame.leave.room = cmd["room"]
    elif kind == "ping":
        frame.ping.SetInParent()
    elif kind == "presence":
        frame.presence.SetInParent()
        frame.presence.users.extend(cmd["users"])
    else:
        raise ValueError(f"no gRPC frame for command type {kind!r}")
    return frame


def _with_ref(body: dict[str, Any], ev: Any) -> dict[str, Any]:
    if ev.HasField("ref"):
        body["ref"] = ev.ref
    return body


def _stream_extras(body: dict[str, Any], ev: Any) -> dict[str, Any]:
    if ev.HasField("offset"):
        body["offset"] = ev.offset
    if ev.HasField("epoch"):
        body["epoch"] = ev.epoch
    return body


def _gap(ev: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "gap", "from": ev.from_offset, "reason": ev.reason}
    if ev.HasField("room"):
        body["room"] = ev.room
    if ev.inbox:
        body["inbox"] = True
    return _stream_extras(body, ev)


def _welcome(ev: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "welcome", "conn": ev.conn, "user": ev.user, "server": ev.server,
        "limits": {"max_frame_bytes": ev.limits.max_frame_bytes,
                   "max_rooms": ev.limits.max_rooms,
                   "outbox_max_events": ev.limits.outbox_max_events,
                   "outbox_max_bytes": ev.limits.outbox_max_bytes}}
    if ev.HasField("inbox"):
        body["inbox"] = {"offset": ev.inbox.offset, "epoch": ev.inbox.epoch}
    return body


_loads = orjson.loads
_EVENTS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "message": lambda ev: _stream_extras(
        {"type": "message", "room": ev.room, "from": ev.from_user, "data": _loads(ev.data),
         "ts": ev.ts}, ev),
    "direct": lambda ev: _stream_extras(
        {"type": "direct", "from": ev.from_user, "to": ev.to, "data": _loads(ev.data),
         "ts": ev.ts}, ev),
    "ack": lambda ev: _stream_extras(_with_ref({"type": "ack"}, ev), ev),
    "gap": _gap,
    "pong": lambda ev: _with_ref({"type": "pong", "ts": ev.ts}, ev),
    "error": lambda ev: _with_ref(
        {"type": "error", "code": ev.code, "message": ev.message}, ev),
    "presence": lambda ev: {
        "type": "presence", "room": ev.room, "user": ev.user, "status": ev.status},
    "presence_state": lambda ev: _with_ref(
        {"type": "presence_state", "users": dict(ev.users)}, ev),
    "welcome": _welcome,
}


def event_of(frame: pb.ServerFrame) -> dict[str, Any]:
    """The JSON-shaped body of a ServerFrame; unknown (future) events keep only `type`."""
    kind = frame.WhichOneof("event")
    if kind is None:
        return {"type": ""}
    convert = _EVENTS.get(kind)
    return convert(getattr(frame, kind)) if convert else {"type": kind}


def target_of(url: str) -> str:
    """The `host:port` of a `grpc://host:port` URL."""
    return url.rstrip("/").partition("://")[2] or url
