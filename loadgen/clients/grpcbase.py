"""What the two gevent gRPC clients (`grpc_h2`, the default, and `grpc` on grpcio) share:
the `Chat.Connect` call's metadata (token, resume cursor) and commands as encoded
`ClientFrame`s. Each subclass supplies `_put`, which sends one encoded frame on its
stream.

Frame <-> dict conversions and final statuses as close codes are `loadgen.grpc_codec`'s,
shared with the asyncio client, so all three gRPC clients read and write the same frames.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import orjson

from loadgen.clients.base import StreamClient
from loadgen.grpc_codec import frame_of
from servers.core.cursor import RESUME_METADATA
from servers.proto import rtbench_pb2 as pb


class GrpcClientBase(StreamClient):
    transport: ClassVar[str] = "grpc"

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call's metadata: the token, and the cursor when resuming (protocol 7.4)."""
        meta: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {self.token}"),)
        if self.resume_cursor:
            meta += ((RESUME_METADATA, self.resume_cursor),)
        return meta

    def _send_command(self, cmd: dict[str, Any]) -> None:
        self._put(frame_of(cmd).SerializeToString())

    def send(self, frame: bytes) -> None:
        self._send_command(orjson.loads(frame))

    def publish(self, room: str, data: bytes) -> None:
        f = pb.ClientFrame()
        f.publish.room = room
        f.publish.data = data  # already the JSON encoding: no decode/re-encode
        self._put(f.SerializeToString())

    def direct(self, to: str, data: bytes) -> None:
        f = pb.ClientFrame()
        f.direct.to = to
        f.direct.data = data
        self._put(f.SerializeToString())

    @abstractmethod
    def _put(self, raw: bytes) -> None:
        """Send one encoded ClientFrame; ClientError when the stream is closed."""
