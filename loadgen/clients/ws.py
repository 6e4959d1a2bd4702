"""WebSocket client: websocket-client for the handshake and for sending, our own frame
reader (`wsframes`) on the gevent socket for receiving.

websocket-client's receive path costs ~25 µs per small frame in Python calls
(and, unless `skip_utf8_validation=True`, ~3x more for its pure-Python UTF-8
check); reading 256 KiB at a time and splitting frames in one loop is what lets
one Locust process keep up with the server. `RECV_PATH` switches to
websocket-client's own receive path, without ("websocket-client") or with
("websocket-client+utf8") its UTF-8 validation: bench/experiments/ingest.py
`--ws-validate-utf8` measures both. orjson rejects invalid UTF-8 in any case.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, ClassVar
from urllib.parse import urlencode

import gevent
import orjson
import websocket

from loadgen.clients.base import ClientError, ReactorReader, StreamClient
from loadgen.clients.base import split_url as _split
from loadgen.clients.tls import TlsSocket, connect_tls
from loadgen.clients.wsframes import OP_CLOSE, OP_PING, FrameError, FrameReader
from loadgen.measure import now_us
from servers.core.cursor import RESUME_PARAM

RECV_PATHS = ("frames", "websocket-client", "websocket-client+utf8")
RECV_PATH = "frames"  # bench/experiments/ingest.py sets the others to measure them


def frame_overhead(n: int) -> int:
    """Bytes of an unmasked server frame header for an `n`-byte payload (RFC 6455 5.2)."""
    return 2 if n < 126 else 4 if n < 65536 else 10


class WsClient(ReactorReader, StreamClient):
    transport: ClassVar[str] = "ws"

    _ws: Any = None  # websocket.WebSocket (partly untyped)

    def _open(self) -> dict[str, Any]:
        host, port = _split(self.url, 443 if self.tls else 80)
        query = f"?{urlencode({RESUME_PARAM: self.resume_cursor})}" if self.resume_cursor else ""
        tls: TlsSocket | None = None
        try:
            if self.tls:
                # our TLS session, not websocket-client's SSLSocket: the reactor reads the
                # stream's raw bytes and this session decrypts them (loadgen.clients.tls)
                raw = socket.create_connection((host, port), timeout=self.timeout)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    tls = connect_tls(raw, host, self.tls_ca)
                except BaseException:
                    raw.close()
                    raise
            self._ws = websocket.create_connection(
                f"{'wss' if self.tls else 'ws'}://{host}:{port}/ws{query}",
                header=[f"Authorization: Bearer {self.token}"],
                subprotocols=["rtbench.v1"],
                skip_utf8_validation=RECV_PATH != "websocket-client+utf8",
                enable_multithread=True,  # a lock around send: several greenlets send
                timeout=self.timeout,
                socket=tls,
            )
        except (OSError, websocket.WebSocketException) as exc:
            if tls is not None:
                tls.close()
            raise ClientError("connect_failed", f"{self.url}: {exc}") from None
        self._tls = tls
        self._ws.settimeout(None)
        opcode, data = self._ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code, reason = _close_info(data)
            self._ws.close()
            raise ClientError(str(code), reason or "closed during handshake")
        event: dict[str, Any] = orjson.loads(data)
        return event

    def _send_command(self, cmd: dict[str, Any]) -> None:
        self.send(orjson.dumps(cmd))

    def send(self, frame: bytes) -> None:
        ws = self._ws
        if ws is None or self.closed.is_set():
            raise ClientError("closed", "connection is closed")
        try:
            ws.send(frame, websocket.ABNF.OPCODE_TEXT)
        except (OSError, websocket.WebSocketException) as exc:
            self._ended(1006, f"send failed: {exc}")
            raise ClientError("closed", str(exc)) from None

    def _start_reader(self) -> None:
        if RECV_PATH != "frames":
            self._reader = gevent.spawn(self._read_loop_websocket_client)
            return
        ws = self._ws
        assert ws is not None
        self._feed = FrameReader().feed
        self._start_reading(ws.sock.fileno())

    def data_received(self, data: bytes, recv_us: int) -> bool:
        """The reactor's read: whole frames are dispatched, a partial one waits."""
        ws = self._ws
        if ws is None:
            return False
        dispatch = self._dispatch
        loads = orjson.loads
        try:
            for opcode, payload, wire in self._feed(data):
                if opcode <= 2:
                    dispatch(loads(payload), wire, recv_us)
                elif opcode == OP_CLOSE:
                    self._stop_reading()
                    self._ended(*_close_info(payload))
                    ws.abort()
                    return False
                elif opcode == OP_PING:
                    ws.pong(payload)
        except (OSError, websocket.WebSocketException) as exc:
            self._ended(1006, f"connection lost: {exc}")
            return False
        except (FrameError, orjson.JSONDecodeError) as exc:
            self._stop_reading()
            self._ended(1002, f"server broke the protocol: {exc}")
            ws.abort()
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._read_fd = -1
        self._ended(1006, "connection closed without a close frame" if exc is None
                    else f"connection lost: {exc}")

    def _read_loop_websocket_client(self) -> None:
        ws = self._ws
        assert ws is not None
        recv = ws.recv_data
        dispatch = self._dispatch
        loads = orjson.loads
        close_op = websocket.ABNF.OPCODE_CLOSE
        try:
            while True:
                opcode, data = recv()
                t = now_us()
                if opcode == close_op:
                    self._ended(*_close_info(data))
                    return
                n = len(data)
                dispatch(loads(data), n + frame_overhead(n), t)
        except (OSError, websocket.WebSocketException) as exc:
            self._ended(1006, f"connection lost: {exc}")
        except orjson.JSONDecodeError as exc:
            self._ended(1007, f"server sent invalid JSON: {exc}")
            ws.abort()

    def close(self) -> None:
        ws = self._ws
        if ws is None:
            return
        self._ws = None
        self._ended(1000, "closed by client")
        self._stop_reading()
        if self._reader is not None:  # first: a gevent socket takes one reader at a time
            self._reader.kill(block=True, timeout=1)
        try:
            ws.close(timeout=1)
        except (OSError, websocket.WebSocketException):
            ws.abort()
        ws.shutdown()


def _close_info(data: bytes) -> tuple[int, str]:
    if len(data) >= 2:
        return struct.unpack("!H", data[:2])[0], data[2:].decode(errors="replace")
    return 1005, ""
