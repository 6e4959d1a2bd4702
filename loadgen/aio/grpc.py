"""gRPC client (docs/protocol.md 7.4): one `Chat.Connect` bidirectional stream on grpc.aio.

Frames are converted by `loadgen.grpc_codec` (shared with the gevent gRPC clients):
events arrive as the JSON transports' dicts, so callers see the same bodies whatever
the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from grpc import aio

from loadgen.aio.base import Client, CloseInfo, ServerClosed
from loadgen.clients.tls import is_tls_url, read_ca
from loadgen.grpc_codec import CONNECT, event_of, frame_of, status_close, target_of
from servers.core.cursor import RESUME_METADATA, encode_cursor
from servers.proto import rtbench_pb2 as pb


def _serialize(frame: pb.ClientFrame | bytes) -> bytes:
    # bytes pass through untouched: `send_raw` sends frames the stubs cannot build
    return frame if isinstance(frame, bytes) else frame.SerializeToString()


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
        tls_ca: str | None = None,
    ) -> GrpcClient:
        """Start the stream, write `first` at once, then wait for `welcome`.

        `resume`: a `cursor` of an earlier connection, sent as `rtbench-resume` metadata
        (an invalid one ends the stream with INVALID_ARGUMENT, close code 4400)."""
        owned = channel is None
        if channel is None:
            if is_tls_url(url):  # grpcs://, verified against tls_ca (None: grpc's roots)
                channel = aio.secure_channel(target_of(url), grpc.ssl_channel_credentials(
                    root_certificates=read_ca(tls_ca)))
            else:
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
            info = CloseInfo(*status_close(exc.code(), exc.details()))
        except Exception as exc:  # on_event raised, or a frame would not convert
            info = self._reader_error(exc)
            self._call.cancel()
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
