"""gRPC client (`Chat.Connect` bidirectional stream) on grpcio, for gevent processes.

Not the default (`--grpc-client grpcio` picks it): `grpc_h2` ingests ~6x more
(bench/experiments/ingest.py), see below for why.

grpcio runs its own threads; `grpc.experimental.gevent.init_gevent()` (called at
import, before any channel exists) makes its completion queue cooperate with the
gevent hub by polling it in gevent's thread pool: each channel with a call in
flight holds one pool thread while it waits. The known hangs under gevent:
- pool exhaustion: gevent's pool has 10 threads, so an 11th channel never gets
  polled, and closing channels then waits forever. Every client has its own
  channel (one TCP connection, like the other transports), so `_open` grows the
  pool to the number of live channels plus headroom;
- a request iterator that blocks the hub: ours blocks on a gevent queue, which
  yields, and `close()` always ends it with a sentinel, cancels the call and
  closes the channel.
tests/test_loadgen_e2e.py runs 20 concurrent streams and kills a server under
an open one, bounded in time.

Commands, metadata and statuses are shared with the h2 client (`grpcbase`).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, ClassVar

import gevent
import grpc
from gevent.queue import Queue

from loadgen.clients.base import ClientError
from loadgen.clients.grpcbase import GrpcClientBase
from loadgen.clients.grpcframes import FRAME_OVERHEAD
from loadgen.clients.tls import read_ca
from loadgen.grpc_codec import CONNECT, event_of, status_close, target_of
from loadgen.measure import now_us
from servers.proto import rtbench_pb2 as pb

importlib.import_module("grpc.experimental.gevent").init_gevent()  # untyped in grpc-stubs

POOL_HEADROOM = 8  # pool threads beyond one per live channel (unary calls, shutdown)
_END = b""  # request-iterator sentinel (a real frame is never empty: it has a oneof)


def _identity(b: bytes) -> bytes:
    return b


def _reserve_pool_thread(delta: int) -> None:
    """Keep gevent's thread pool larger than the number of live channels (see above)."""
    GrpcClient.live_channels += delta
    pool = gevent.get_hub().threadpool
    need = GrpcClient.live_channels + POOL_HEADROOM
    if pool.maxsize < need:
        pool.maxsize = need


class GrpcClient(GrpcClientBase):
    live_channels: ClassVar[int] = 0

    _call: Any = None
    _channel: grpc.Channel | None = None

    def _open(self) -> dict[str, Any]:
        self._queue: Queue[bytes] = Queue()
        _reserve_pool_thread(1)
        target = target_of(self.url)
        if self.tls:  # grpcs://: verified against tls_ca (None: grpc's default roots)
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(
                root_certificates=read_ca(self.tls_ca)))
        else:
            self._channel = grpc.insecure_channel(target)
        method = self._channel.stream_stream(CONNECT, request_serializer=_identity,
                                             response_deserializer=_identity)
        self._call = method(self._requests(), metadata=self.metadata())
        self._responses: Iterator[bytes] = iter(self._call)
        try:
            first = next(self._responses)
        except grpc.RpcError as exc:
            code, reason = self._status(exc)
            self._teardown()
            raise ClientError(str(code), reason or "stream refused") from None
        except StopIteration:
            self._teardown()
            raise ClientError("closed", "stream ended before welcome") from None
        return event_of(pb.ServerFrame.FromString(first))

    def _requests(self) -> Iterator[bytes]:
        get = self._queue.get
        while True:
            frame = get()
            if frame is _END:
                return
            yield frame

    def _put(self, raw: bytes) -> None:
        if self.closed.is_set() or self._call is None:
            raise ClientError("closed", self.close_reason or "connection is closed")
        self._queue.put(raw)

    def _read_loop(self) -> None:
        dispatch = self._dispatch
        parse = pb.ServerFrame.FromString
        try:
            for raw in self._responses:
                t = now_us()
                dispatch(event_of(parse(raw)), len(raw) + FRAME_OVERHEAD, t)
            self._ended(*self._final_status())
        except grpc.RpcError as exc:
            self._ended(*self._status(exc))
        except ValueError as exc:  # undecodable frame, bad JSON in `data`
            self._ended(1007, f"bad frame from server: {exc}")
            self._teardown()

    def _final_status(self) -> tuple[int, str]:
        return status_close(self._call.code(), self._call.details())

    def _status(self, exc: grpc.RpcError) -> tuple[int, str]:
        call: Any = exc
        try:
            return status_close(call.code(), call.details())
        except AttributeError:
            return 1006, repr(exc)

    def _teardown(self) -> None:
        if self._call is not None:
            self._queue.put(_END)
            self._call.cancel()
            self._call = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            _reserve_pool_thread(-1)

    def close(self) -> None:
        if self._channel is None:
            return
        self._ended(1000, "closed by client")  # first: the cancel below ends the reader too
        self._teardown()
        if self._reader is not None:
            self._reader.kill(block=True, timeout=2)
