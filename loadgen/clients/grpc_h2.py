"""gRPC client (`Chat.Connect` bidirectional stream) on a plain gevent socket, HTTP/2 by `h2`.

The default gRPC client of the load generator (`--grpc-client h2`): grpcio's gevent
mode polls its completion queue in gevent's thread pool, a thread round trip
per received message that caps a Locust process at a fraction of an asyncio
client's ingest rate (see loadgen/README.md, bench/experiments/ingest.py). Here one reader
greenlet per connection reads 256 KiB at a time and `grpcframes.GrpcStream`
(sans-I/O) splits HTTP/2 frames and gRPC messages; no threads, nothing to hang
on at shutdown.

One TCP connection and one stream per client, like the other transports.
Sends share the socket under a lock (publisher greenlets and the reader's
WINDOW_UPDATE / PING acks); a send the server's flow-control window cannot take
blocks until a WINDOW_UPDATE, like a full TCP buffer would.
Commands and metadata (token, resume cursor) are shared with the grpcio client
(`grpcbase`), frame <-> dict conversions and status -> close code with every gRPC
client (`loadgen.grpc_codec`).
"""

from __future__ import annotations

from typing import Any

import h2.exceptions
from gevent.event import Event
from gevent.lock import Semaphore
from google.protobuf.message import DecodeError

from loadgen.clients.base import ClientError, RawSocket
from loadgen.clients.base import split_url as _split
from loadgen.clients.grpcbase import GrpcClientBase
from loadgen.clients.grpcframes import FRAME_OVERHEAD, GrpcFrameError, GrpcStream
from loadgen.grpc_codec import CONNECT, event_of, status_close, target_of
from loadgen.measure import now_us
from servers.proto import rtbench_pb2 as pb

RECV_BYTES = 256 * 1024


class GrpcH2Client(RawSocket, GrpcClientBase):
    ALPN = ("h2",)  # grpcs://: HTTP/2 over TLS is negotiated by ALPN (gRPC servers insist)

    def _open(self) -> dict[str, Any]:
        host, port = _split(target_of(self.url), 50051)
        self._lock = Semaphore()
        self._writable = Event()
        self._backlog: list[bytes] = []  # messages read with the welcome
        self._stream = GrpcStream(f"{host}:{port}", CONNECT, self.metadata(),
                                  scheme="https" if self.tls else "http")
        sock = self._connect_socket(host, port, self.timeout)
        with self._handshake(self.url, (OSError, h2.exceptions.ProtocolError, GrpcFrameError,
                                        DecodeError)):
            sock.sendall(self._stream.start())
            while True:
                data = sock.recv(RECV_BYTES)
                if not data:
                    raise ClientError("1006", "connection closed before welcome")
                msgs = self._stream.receive(data)
                self._flush()
                if msgs:
                    self._backlog = msgs[1:]
                    return event_of(pb.ServerFrame.FromString(msgs[0]))
                if self._stream.ended is not None:
                    code, reason = status_close(*self._stream.ended)
                    raise ClientError(str(code), reason or "stream refused")

    def _flush(self) -> None:
        """Write whatever h2 has queued (acks, pings, sends), in order."""
        sock = self._sock
        if sock is None:
            return
        with self._lock:
            out = self._stream.data_to_send()
            if out:
                sock.sendall(out)

    def _put(self, raw: bytes) -> None:
        if self._sock is None:
            raise ClientError("closed", self.close_reason or "connection is closed")
        stream = self._stream
        try:
            stream.send(raw)
            while True:
                if self.closed.is_set() or self._sock is None or not stream.accepting:
                    raise ClientError("closed", self.close_reason or "stream ended or "
                                      "server going away")
                self._writable.clear()  # before the check: a WINDOW_UPDATE may come in _flush
                done = stream.flush_pending()
                self._flush()
                if done:
                    return
                self._writable.wait()  # the server's window is full: like a full TCP buffer
        except (OSError, h2.exceptions.ProtocolError) as exc:
            self._ended(1006, f"send failed: {exc}")
            raise ClientError("closed", str(exc)) from None

    def _start_reader(self) -> None:
        sock = self._sock
        assert sock is not None
        parse = pb.ServerFrame.FromString
        t = now_us()
        try:
            for raw in self._backlog:
                self._dispatch(event_of(parse(raw)), len(raw) + FRAME_OVERHEAD, t)
        except (ValueError, DecodeError) as exc:
            self._fail(1007, f"bad frame from server: {exc}")
            return
        self._backlog = []
        self._start_reading(sock.fileno())

    def data_received(self, data: bytes, recv_us: int) -> bool:
        """The reactor's read (`recv_us` taken before decoding: parsing is not latency)."""
        stream = self._stream
        dispatch = self._dispatch
        parse = pb.ServerFrame.FromString
        try:
            msgs = stream.receive(data)
            self._flush()  # acks first: the server must not wait on our dispatching
            for raw in msgs:
                dispatch(event_of(parse(raw)), len(raw) + FRAME_OVERHEAD, recv_us)
            if stream.window_opened:
                self._writable.set()
            if stream.ended is not None:
                self._fail(*status_close(*stream.ended))
                return False
        except OSError as exc:
            self._fail(1006, f"connection lost: {exc}")
            return False
        except (h2.exceptions.ProtocolError, GrpcFrameError) as exc:
            self._fail(1002, f"server broke the protocol: {exc}")
            return False
        except (ValueError, DecodeError) as exc:  # undecodable frame, bad JSON in `data`
            self._fail(1007, f"bad frame from server: {exc}")
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._read_fd = -1
        self._fail(1006, "connection closed without a gRPC status" if exc is None
                   else f"connection lost: {exc}")

    def _fail(self, code: int, reason: str) -> None:
        """The stream ended: record why, wake a blocked sender (it sees `closed`), close."""
        self._ended(code, reason)
        self._writable.set()
        self._abort()

    def close(self) -> None:
        sock = self._sock
        if sock is None:
            return
        self._ended(1000, "closed by client")  # first: ends the reader and blocked senders
        self._writable.set()
        self._stop_reading()
        if self._lock.acquire(timeout=1):  # a sender may hang in sendall on a stuck server
            try:
                sock.settimeout(1)
                sock.sendall(self._stream.cancel())
            except OSError:
                pass  # the server is gone already: nothing to cancel
            finally:
                self._lock.release()
        self._abort()
