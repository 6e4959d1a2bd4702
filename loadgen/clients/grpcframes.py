"""Sans-I/O gRPC over HTTP/2 for one client stream (`h2` keeps the HTTP/2 state).

grpcio under gevent pays a thread-pool round trip per received message; this
side takes whatever one large `recv()` returned, splits the HTTP/2 frames and
the gRPC messages (5-byte prefix: compressed flag, big-endian length) in one
loop, and hands every frame but our stream's plain DATA to `h2`, in order
(`GrpcStream.receive` says why). `loadgen.clients.grpc_h2` does the socket I/O.
No gevent here: tests drive it against an `h2` server.

Flow control: our receive windows (stream and connection) are RECV_WINDOW
(16 MiB) from the start and given back every ACK_BYTES (1 MiB) read, so a
client that keeps up never makes the server wait. Not the HTTP/2 maximum
(2 GiB): a stalled client must still fill the server's window, as the
protocol's slow-consumer rule (section 7.4) expects of gRPC clients. Sends
respect the server's windows: bytes it cannot take yet wait in `pending` until
a WINDOW_UPDATE.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

# gRPC message prefix (5) + one HTTP/2 DATA frame header (9) per event
FRAME_OVERHEAD = 14
RECV_WINDOW = 16 << 20
MAX_FRAME = 1 << 20  # we accept DATA frames up to 1 MiB: fewer frames, fewer h2 events
MAX_MESSAGE = 64 << 20
STREAM_ID = 1
_STREAM_ID = STREAM_ID.to_bytes(4, "big")
# HTTP/2 frame types and flags (RFC 9113 section 6) read after a GOAWAY
_DATA, _HEADERS, _RST_STREAM, _PING, _GOAWAY, _CONTINUATION = 0, 1, 3, 6, 7, 9
_ACK = _END_STREAM = 0x1
_END_HEADERS, _PADDED, _PRIORITY = 0x4, 0x8, 0x20
ACK_BYTES = 1 << 20  # fast-path DATA given back in WINDOW_UPDATEs of at least this much

# gRPC status numbers (grpc/doc/statuscodes.md) used below
OK, CANCELLED, UNKNOWN, INTERNAL, UNAVAILABLE, RESOURCE_EXHAUSTED = 0, 1, 2, 13, 14, 8
# RST_STREAM error -> status, as gRPC's HTTP/2 mapping (doc/PROTOCOL-HTTP2.md)
_RESET_STATUS = {h2.errors.ErrorCodes.REFUSED_STREAM: UNAVAILABLE,
                 h2.errors.ErrorCodes.CANCEL: CANCELLED,
                 h2.errors.ErrorCodes.ENHANCE_YOUR_CALM: RESOURCE_EXHAUSTED}
# HTTP status of a response that is not gRPC -> status (same document)
_HTTP_STATUS = {400: INTERNAL, 401: 16, 403: 7, 404: 12, 429: UNAVAILABLE, 502: UNAVAILABLE,
                503: UNAVAILABLE, 504: UNAVAILABLE}


class GrpcFrameError(ValueError):
    """The server broke gRPC's message framing; the connection must be closed."""


def encode_message(raw: bytes) -> bytes:
    """One length-prefixed, uncompressed gRPC message."""
    return b"\0" + len(raw).to_bytes(4, "big") + raw


class MessageReader:
    """Feed DATA bytes, get every complete gRPC message (split or batched alike)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        n = len(buf)
        pos = 0
        out: list[bytes] = []
        append = out.append
        while n - pos >= 5:
            if buf[pos]:
                raise GrpcFrameError("compressed message, but no compression was negotiated")
            length = int.from_bytes(buf[pos + 1:pos + 5], "big")
            if length > MAX_MESSAGE:
                raise GrpcFrameError(f"message of {length} bytes (limit {MAX_MESSAGE})")
            end = pos + 5 + length
            if end > n:
                break
            append(buf[pos + 5:end])
            pos = end
        self._buf = buf[pos:] if pos < n else b""
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)


def _window_update(stream_id: int, increment: int) -> bytes:
    return b"\x00\x00\x04\x08\x00" + stream_id.to_bytes(4, "big") + increment.to_bytes(4, "big")


def _status_of(headers: Sequence[tuple[bytes, bytes]]) -> tuple[int, str] | None:
    """(grpc-status, grpc-message) from trailers or a trailers-only response."""
    status: int | None = None
    message = ""
    http = 200
    for name, value in headers:
        if name == b"grpc-status":
            try:
                status = int(value)
            except ValueError:
                status = UNKNOWN
        elif name == b"grpc-message":
            message = unquote(value.decode("utf-8", "replace"))
        elif name == b":status":
            http = int(value)
    if status is None and http != 200:
        return _HTTP_STATUS.get(http, UNKNOWN), f"HTTP status {http}"
    return None if status is None else (status, message)


class GrpcStream:
    """One `Chat.Connect`-style bidirectional stream on its own HTTP/2 connection.

    `start()` -> bytes to write first; `receive(data)` -> gRPC messages, after
    which `ended` may hold the final `(grpc status, message)`; `send(raw)` queues a
    message; `data_to_send()` is everything to write now (acks, pings, sends).
    """

    def __init__(self, authority: str, path: str,
                 metadata: Sequence[tuple[str, str]] = (), scheme: str = "http") -> None:
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(cfg)
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: RECV_WINDOW,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        self.headers = [(b":method", b"POST"), (b":scheme", scheme.encode()),
                        (b":path", path.encode()), (b":authority", authority.encode()),
                        (b"te", b"trailers"), (b"content-type", b"application/grpc"),
                        (b"user-agent", b"rtbench-loadgen-h2/1")]
        self.headers += [(k.lower().encode(), v.encode()) for k, v in metadata]
        self.messages = MessageReader()
        self.ended: tuple[int, str] | None = None
        self.pending = bytearray()  # queued message bytes the server's window has no room for
        self.window_opened = False  # set by `receive` when a WINDOW_UPDATE may unblock sends
        self._buf = b""  # an incomplete HTTP/2 frame
        self._fast = False  # DATA frames bypass h2 (response headers in, stream not ended)
        self._unacked = 0  # fast-path DATA bytes not yet given back by WINDOW_UPDATE
        self._extra = b""  # our own frames (WINDOW_UPDATE, PING ack), written after h2's
        self._goaway = False  # h2 saw a GOAWAY: we read the frames that follow
        self._block = b""  # header block of trailers after a GOAWAY (HEADERS + CONTINUATION)
        self._block_ends = False

    def start(self) -> bytes:
        conn = self.conn
        conn.initiate_connection()
        conn.increment_flow_control_window(RECV_WINDOW - 65535)  # the connection's window
        conn.send_headers(STREAM_ID, self.headers)
        return conn.data_to_send()

    def data_to_send(self) -> bytes:
        out = self.conn.data_to_send()
        if self._extra:
            out, self._extra = out + self._extra, b""
        return out

    @property
    def accepting(self) -> bool:
        """False once the stream ended or the server sent GOAWAY (h2 then sends nothing)."""
        return self.ended is None and not self._goaway

    def send(self, raw: bytes) -> bool:
        """Queue one message; True when all queued bytes went into HTTP/2 frames."""
        if not self.accepting:
            return False
        self.pending += encode_message(raw)
        return self.flush_pending()

    def flush_pending(self) -> bool:
        """Move queued bytes into DATA frames as the windows allow; True when none are left."""
        conn = self.conn
        pending = self.pending
        while pending:
            room = min(conn.local_flow_control_window(STREAM_ID), conn.max_outbound_frame_size)
            if room <= 0:
                return False
            chunk = bytes(pending[:room])
            del pending[:room]
            conn.send_data(STREAM_ID, chunk)
        return True

    def receive(self, data: bytes) -> list[bytes]:
        """Messages carried by `data` (may also set `ended` and `window_opened`).

        Plain DATA frames of our stream (no END_STREAM, no padding) once the
        response headers are in take the fast path: h2 spends ~14 µs on each, and
        grpcio servers send one DATA frame per message. Every other frame goes to
        h2, in order. h2 never sees the fast frames, so their flow control is ours.
        """
        buf = self._buf + data if self._buf else data
        n = len(buf)
        pos = 0
        slow = -1  # start of a run of frames for h2
        out: list[bytes] = []
        feed = self.messages.feed
        self.window_opened = False
        while n - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            end = pos + 9 + length
            if length > MAX_FRAME:  # h2 raises the right error for it
                slow, pos = pos if slow < 0 else slow, n
                break
            if end > n:
                break
            kind = buf[pos + 3]
            if self._goaway:
                self._after_goaway(kind, buf[pos + 4], buf[pos + 5:pos + 9], buf[pos + 9:end],
                                   out)
                pos = end
                continue
            if kind == 0 and buf[pos + 4] == 0 and buf[pos + 5:pos + 9] == _STREAM_ID:
                if slow >= 0:  # in order: h2 may end the stream before this frame
                    self._slow(buf[slow:pos], out)
                    slow = -1
                if self._fast:
                    out += feed(buf[pos + 9:end])
                    self._unacked += length
                    pos = end
                    continue
            if slow < 0:
                slow = pos
            pos = end
            if kind == _GOAWAY:  # h2 refuses every later frame (see `_after_goaway`)
                self._slow(buf[slow:pos], out)
                slow = -1
                self._goaway = True
        if slow >= 0:
            self._slow(buf[slow:pos], out)
        self._buf = buf[pos:] if pos < n else b""
        if self._unacked >= ACK_BYTES:
            self._extra += _window_update(0, self._unacked) + _window_update(
                STREAM_ID, self._unacked)
            self._unacked = 0
        if self.window_opened and self.pending and self.accepting:
            self.flush_pending()
        return out

    def _after_goaway(self, kind: int, flags: int, sid: bytes, payload: bytes,
                      out: list[bytes]) -> None:
        """A frame after a GOAWAY, which h2 no longer takes (its connection is CLOSED).

        A graceful server shutdown (grpcio: GOAWAY for every stream, PING, a last
        GOAWAY) still ends our stream properly: the trailers carry `going_away`.
        So DATA, trailers (HPACK by h2's decoder: its table stays in sync) and
        RST_STREAM of our stream are still read, and PINGs answered.
        """
        ours = sid == _STREAM_ID
        if kind == _PING and not flags & _ACK:
            self._extra += b"\x00\x00\x08\x06\x01\x00\x00\x00\x00" + payload
        elif kind == _GOAWAY:
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            error = int.from_bytes(payload[4:8], "big")
            if error or last < STREAM_ID:
                self._end(UNAVAILABLE, f"connection terminated by server (GOAWAY {error})")
        elif kind == _RST_STREAM and ours:
            number = int.from_bytes(payload[:4], "big")
            try:
                code = h2.errors.ErrorCodes(number)
            except ValueError:  # an unknown code is a valid one (RFC 9113 section 7)
                self._end(INTERNAL, f"stream reset by server (error {number})")
            else:
                self._end(_RESET_STATUS.get(code, INTERNAL), f"stream reset by server ({code!s})")
        elif not ours or self.ended is not None:
            return
        elif kind == _DATA:
            if flags & _PADDED:
                payload = payload[1:len(payload) - payload[0]]
            out += self.messages.feed(payload)
            self._unacked += len(payload)
            if flags & _END_STREAM:
                self._end(UNKNOWN, "stream ended without grpc-status")
        elif kind in (_HEADERS, _CONTINUATION):
            if kind == _HEADERS:
                if flags & _PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                if flags & _PRIORITY:
                    payload = payload[5:]
                self._block, self._block_ends = payload, bool(flags & _END_STREAM)
            else:
                self._block += payload
            if flags & _END_HEADERS:
                headers = self.conn.decoder.decode(self._block, raw=True)
                status = _status_of(headers)  # type: ignore[arg-type]
                if status is not None:
                    self._end(*status)
                elif self._block_ends:
                    self._end(UNKNOWN, "stream ended without grpc-status")

    def _slow(self, frames: bytes, out: list[bytes]) -> None:
        acked = 0
        for ev in self.conn.receive_data(frames):
            if type(ev) is h2.events.DataReceived:
                acked += ev.flow_controlled_length
                if ev.data:
                    out += self.messages.feed(ev.data)
            else:
                self._event(ev)
        if acked:
            self.conn.acknowledge_received_data(acked, STREAM_ID)

    def _event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.ResponseReceived | h2.events.TrailersReceived):
            status = _status_of(ev.headers or ())
            if status is not None:
                self._end(*status)
            elif isinstance(ev, h2.events.ResponseReceived):
                self._fast = True
        elif isinstance(ev, h2.events.StreamEnded):
            self._end(UNKNOWN, "stream ended without grpc-status")
        elif isinstance(ev, h2.events.StreamReset):
            code = _RESET_STATUS.get(ev.error_code, INTERNAL)  # type: ignore[call-overload]
            self._end(code, f"stream reset by server ({ev.error_code!s})")
        elif isinstance(ev, h2.events.ConnectionTerminated):
            last = ev.last_stream_id
            if ev.error_code or last is None or last < STREAM_ID:
                self._end(UNAVAILABLE, f"connection terminated by server (GOAWAY "
                                       f"{ev.error_code!s})")
        elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.window_opened = True

    def _end(self, status: int, message: str) -> None:
        self._fast = False
        if self.ended is None:
            self.ended = (status, message)

    def cancel(self) -> bytes:
        """RST_STREAM(CANCEL) and GOAWAY: the bytes that end the call from our side."""
        conn = self.conn
        try:
            if self.ended is None:
                conn.reset_stream(STREAM_ID, h2.errors.ErrorCodes.CANCEL)
            conn.close_connection()
        except h2.exceptions.ProtocolError:
            pass  # already closed on the HTTP/2 level: nothing left to say
        self._end(CANCELLED, "cancelled by client")
        return conn.data_to_send()
