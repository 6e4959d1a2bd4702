"""gRPC client (docs/protocol.md 7.4): one `Chat.Connect` bidirectional stream.

Events are converted to the JSON transports' dicts (`data` decoded from its JSON
bytes), so callers see the same bodies whatever the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
import orjson
from grpc import aio

from loadgen.aio.base import ABNORMAL, UNAUTHORIZED, Client, CloseInfo, ServerClosed
from servers.core.cursor import RESUME_METADATA, encode_cursor
from servers.proto import rtbench_pb2 as pb

CONNECT = "/rtbench.v1.Chat/Connect"

# section 7.4: the status that ends a stream, and the close code it stands for
_STATUS_CODES = {
    grpc.StatusCode.UNAUTHENTICATED: UNAUTHORIZED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 4408,
    grpc.StatusCode.INVALID_ARGUMENT: 4400,  # a refused resume cursor
    grpc.StatusCode.OK: 1000,
}


def close_info(status: grpc.StatusCode, details: str | None) -> CloseInfo:
    """CloseInfo for a final status. UNAVAILABLE stands for both 1001 and 1011;
    only 1011 (setup failed) says `unavailable:`/`internal` in its details."""
    text = details or ""
    code = _STATUS_CODES.get(status)
    if code is None:
        if status == grpc.StatusCode.UNAVAILABLE:
            code = 1011 if text.startswith(("unavailable", "internal")) else 1001
        else:
            code = ABNORMAL
    return CloseInfo(code, text)


def _serialize(frame: pb.ClientFrame | bytes) -> bytes:
    # bytes pass through untouched: `send_raw` sends frames the stubs cannot build
    return frame if isinstance(frame, bytes) else frame.SerializeToString()


def frame_of(cmd: dict[str, Any]) -> pb.ClientFrame:
    """The ClientFrame of a JSON-shaped command (what the base client builds)."""
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
    return url.rstrip("/").partition("://")[2] or url


class GrpcClient(Client):
    transport = "grpc"

    def __init__(self, channel: aio.Channel, owns_channel: bool, call: Any,
                 timeout: float, resume: Mapping[str, Any] | None = None) -> None:
        super().__init__(timeout, resume)
        self._channel = channel
        self._owns_channel = owns_channel
        self._call = call
        self._status: str | None = None  # name of the status that ended the stream
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls,
        url: str,
        token: str | None,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - kept as the per-command reply timeout
        first: Sequence[dict[str, Any]] = (),
        channel: aio.Channel | None = None,
        resume: Mapping[str, Any] | None = None,
    ) -> GrpcClient:
        """Start the stream, write `first` at once, then wait for `welcome`.

        `resume`: a `cursor` of an earlier connection, sent as `rtbench-resume` metadata
        (an invalid one ends the stream with INVALID_ARGUMENT, close code 4400)."""
        owned = channel is None
        if channel is None:
            channel = aio.insecure_channel(target_of(url))
        connect = channel.stream_stream(
            CONNECT, request_serializer=_serialize, response_deserializer=pb.ServerFrame.FromString
        )
        metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        if resume is not None:
            metadata += ((RESUME_METADATA, encode_cursor(resume)),)
        self = cls(channel, owned, connect(None, metadata=metadata), timeout, resume)
        for cmd in first:
            await self._write(frame_of(cmd))
        try:
            await self._await_welcome()
        except ServerClosed as exc:
            raise ServerClosed(exc.code, exc.reason, self._status) from None
        return self

    async def _read(self) -> None:
        read = self._call.read
        deliver = self._deliver
        eof = aio.EOF  # type: ignore[attr-defined]  # grpc-stubs 1.53 predates it
        clock = time.time_ns
        info: CloseInfo | None = None
        try:
            frame = await read()
            if frame is not eof:
                self._set_welcome(event_of(frame))
                while (frame := await read()) is not eof:
                    recv_us = clock() // 1000  # before decoding: parsing is not latency
                    deliver(event_of(frame), recv_us)
            info = CloseInfo(1000, "stream ended")
        except aio.AioRpcError as exc:
            self._status = exc.code().name
            info = close_info(exc.code(), exc.details())
        finally:
            self._finish(info)

    async def _write(self, frame: pb.ClientFrame | bytes) -> None:
        with contextlib.suppress(aio.AioRpcError, asyncio.InvalidStateError):
            # a finished call refuses writes; the reader reports why
            await self._call.write(frame)

    async def _send(self, cmd: dict[str, Any]) -> None:
        await self._write(frame_of(cmd))

    async def _request(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return await self._stream_request(cmd, self._send)

    async def _send_oneway(self, cmd: dict[str, Any]) -> None:
        await self._send(cmd)

    async def send_raw(self, data: bytes | str) -> int | None:
        """Send `data` as the serialized bytes of one ClientFrame (str: its UTF-8)."""
        await self._write(data.encode() if isinstance(data, str) else data)
        return None

    async def close(self) -> None:
        self._closing = True
        self._call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        if self._owns_channel:
            self._owns_channel = False
            await self._channel.close(None)
