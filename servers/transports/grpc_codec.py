"""Protobuf wire codec of the gRPC transport: ClientFrame bytes -> Command, Event -> ServerFrame.

Sans-I/O. A decoded frame is turned into the dict shape of a JSON command and
validated by `servers.core.codec.command_from_obj`, so the rules and error
messages live in one place; only what JSON cannot express is handled here
(undecodable bytes, `data` that is not JSON, oneof fields this version does not know).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from servers.core.codec import command_from_obj
from servers.core.errors import ErrorCode, ProtocolError
from servers.core.types import Command, Direct, Event, Limits, Publish
from servers.proto import rtbench_pb2 as pb

FORMAT = "proto"  # Connection.fmt and the Event cache key of this encoding

# --------------------------------------------------------------------- commands


def _check_size(raw: bytes, limits: Limits) -> None:
    if len(raw) > limits.max_frame_bytes:
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"frame of {len(raw)} bytes exceeds the {limits.max_frame_bytes} limit",
        )


def _decode_error(exc: DecodeError, what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_JSON, f"frame is not a decodable {what}: {exc}")


def parse_frame(raw: bytes, limits: Limits) -> Command:
    """Decode and validate one serialized ClientFrame (a `Connect` stream message)."""
    _check_size(raw, limits)
    try:
        frame = pb.ClientFrame.FromString(raw)
    except DecodeError as exc:
        raise _decode_error(exc, "ClientFrame") from None
    return frame_command(frame, limits)


def parse_send(raw: bytes, limits: Limits) -> tuple[str, pb.ClientFrame]:
    """Decode a serialized SendRequest: the connection id and its still unvalidated frame."""
    _check_size(raw, limits)
    try:
        request = pb.SendRequest.FromString(raw)
    except DecodeError as exc:
        raise _decode_error(exc, "SendRequest") from None
    return request.conn, request.frame


def frame_command(frame: pb.ClientFrame, limits: Limits) -> Command:
    """Validate a decoded ClientFrame as a command (same rules as a JSON command)."""
    cmd = command_from_obj(frame_to_obj(frame), limits)
    if isinstance(cmd, Publish | Direct):
        # validated after the other fields so that the error can carry the ref
        try:
            data = orjson.loads(cmd.data)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(
                ErrorCode.BAD_JSON, f"field 'data' is not valid UTF-8 JSON: {exc}", cmd.ref
            ) from None
        if isinstance(cmd, Publish):
            return Publish(cmd.room, data, cmd.ref)
        return Direct(cmd.to, data, cmd.ref)
    return cmd


def frame_to_obj(frame: pb.ClientFrame) -> dict[str, Any]:
    """The JSON-command dict a ClientFrame stands for (`data` still as bytes)."""
    obj: dict[str, Any] = {}
    if frame.HasField("id"):
        obj["id"] = frame.id
    kind = frame.WhichOneof("cmd")
    if kind is None:
        # a command of a newer protocol version arrives as an unknown field
        fields = UnknownFieldSet(frame)
        unknown = sorted({fields[i].field_number for i in range(len(fields))})
        if unknown:
            obj["type"] = f"#{unknown[0]}"
        return obj
    obj["type"] = kind
    body = getattr(frame, kind)
    for field, value in body.ListFields():
        obj[field.name] = value
    if kind == "join" and body.HasField("since"):
        obj["since"] = {"offset": body.since.offset, "epoch": body.since.epoch}
    if kind == "presence":
        obj["users"] = list(body.users)  # an empty repeated field is not "set"
    return obj


# ----------------------------------------------------------------------- events


def _ref(body: dict[str, Any]) -> dict[str, str]:
    ref = body.get("ref")
    return {} if ref is None else {"ref": str(ref)}


def _data(value: Any) -> bytes:
    return orjson.dumps(value)


_LIMIT_FIELDS = frozenset(pb.Limits.DESCRIPTOR.fields_by_name)


def _resume_fields(b: dict[str, Any]) -> dict[str, Any]:
    return {k: b[k] for k in ("offset", "epoch") if b.get(k) is not None}


def _welcome(b: dict[str, Any]) -> pb.ServerFrame:
    limits = {k: v for k, v in b["limits"].items() if k in _LIMIT_FIELDS}
    inbox = b.get("inbox")
    return pb.ServerFrame(
        welcome=pb.Welcome(conn=b["conn"], user=b["user"], server=b["server"],
                           limits=pb.Limits(**limits),
                           inbox=pb.Position(**inbox) if inbox is not None else None)
    )


def _ack(b: dict[str, Any]) -> pb.ServerFrame:
    return pb.ServerFrame(ack=pb.Ack(**{**_ref(b), **_resume_fields(b)}))


def _gap(b: dict[str, Any]) -> pb.ServerFrame:
    return pb.ServerFrame(
        gap=pb.Gap(room=b.get("room"), inbox=b.get("inbox", False), from_offset=b["from"],
                   reason=b["reason"], **_resume_fields(b))
    )


def _message(b: dict[str, Any]) -> pb.ServerFrame:
    return pb.ServerFrame(
        message=pb.Message(room=b["room"], from_user=b["from"], data=_data(b["data"]),
                           ts=b["ts"], **_resume_fields(b))
    )


def _direct(b: dict[str, Any]) -> pb.ServerFrame:
    return pb.ServerFrame(
        direct=pb.DirectMessage(from_user=b["from"], to=b["to"], data=_data(b["data"]),
                                ts=b["ts"], **_resume_fields(b))
    )


def _presence(b: dict[str, Any]) -> pb.ServerFrame:
    return pb.ServerFrame(presence=pb.Presence(room=b["room"], user=b["user"], status=b["status"]))


def _presence_state(b: dict[str, Any]) -> pb.ServerFrame:
    return pb.ServerFrame(presence_state=pb.PresenceState(users=b["users"], **_ref(b)))


def _pong(b: dict[str, Any]) -> pb.ServerFrame:
    return pb.ServerFrame(pong=pb.Pong(ts=b["ts"], **_ref(b)))


def _error(b: dict[str, Any]) -> pb.ServerFrame:
    return pb.ServerFrame(error=pb.Error(code=b["code"], message=b["message"], **_ref(b)))


_ENCODERS: dict[str, Callable[[dict[str, Any]], pb.ServerFrame]] = {
    "welcome": _welcome,
    "ack": _ack,
    "message": _message,
    "direct": _direct,
    "presence": _presence,
    "presence_state": _presence_state,
    "pong": _pong,
    "error": _error,
    "gap": _gap,
}


def encode_event(event: Event) -> bytes:
    """A serialized ServerFrame for `event`; call it as `event.encoded(FORMAT, encode_event)`
    so that an event fanned out to many streams is serialized once."""
    body = event.body
    encoder = _ENCODERS.get(body.get("type", ""))
    if encoder is None:
        raise ValueError(f"no ServerFrame for event type {body.get('type')!r}")
    return encoder(body).SerializeToString()


def event_from_frame(frame: pb.ServerFrame) -> dict[str, Any]:
    """The JSON event body a ServerFrame stands for (clients and tests; not the server path)."""
    kind = frame.WhichOneof("event")
    if kind is None:
        return {}
    msg = getattr(frame, kind)
    body: dict[str, Any] = {"type": kind}
    for field, value in msg.ListFields():
        name = field.json_name if field.name in ("from_user", "from_offset") else field.name
        if field.name == "data":
            body[name] = orjson.loads(value)
        elif field.name == "limits":
            body[name] = {f.name: v for f, v in value.ListFields()}
        elif field.name == "inbox" and kind == "welcome":
            body[name] = {"offset": value.offset, "epoch": value.epoch}
        elif field.name == "users":
            body[name] = dict(value)
        else:
            body[name] = value
    if kind == "presence_state":
        body.setdefault("users", {})
    if kind == "gap":  # proto3 leaves zero values unset
        body.setdefault("from", 0)
    return body
