"""Sans-I/O reader of server-to-client WebSocket frames (RFC 6455 section 5).

websocket-client parses each frame with several Python calls and small socket
reads; at tens of thousands of events per second that, not the network, is the
load generator's ceiling. This reader takes whatever one large `recv()`
returned and splits every complete frame out of it in one tight loop.

Server frames are never masked (5.1); a masked one is a protocol error. Text and
binary messages may be fragmented (continuation frames); control frames are
returned as they come, between fragments too.
"""

from __future__ import annotations

from collections.abc import Callable

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class FrameError(ValueError):
    """The server broke the framing rules; the connection must be closed (1002)."""


class FrameReader:
    """Feed bytes, get `(opcode, payload, wire_bytes)` for each complete message."""

    __slots__ = ("_buf", "_frag", "_frag_op", "_frag_wire")

    def __init__(self) -> None:
        self._buf = b""
        self._frag: list[bytes] = []
        self._frag_op = 0
        self._frag_wire = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes, int]]:
        buf = self._buf + data if self._buf else data
        n = len(buf)
        pos = 0
        out: list[tuple[int, bytes, int]] = []
        append = out.append
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b1 & 0x80:
                raise FrameError("server frames must not be masked")
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > n:
                break
            payload = buf[pos + head:end]
            opcode = b0 & 0x0F
            if b0 & 0x70:
                raise FrameError("reserved bits set without a negotiated extension")
            if opcode >= 0x8:  # control: never fragmented, may arrive between fragments
                if not b0 & 0x80 or length > 125:
                    raise FrameError("fragmented or oversized control frame")
                append((opcode, payload, head + length))
            elif b0 & 0x80 and opcode and not self._frag_op:
                append((opcode, payload, head + length))
            else:
                self._fragment(opcode, bool(b0 & 0x80), payload, head + length, append)
            pos = end
        self._buf = buf[pos:] if pos < n else b""
        return out

    def _fragment(self, opcode: int, fin: bool, payload: bytes, wire: int,
                  append: Callable[[tuple[int, bytes, int]], None]) -> None:
        if opcode == OP_CONT:
            if not self._frag_op:
                raise FrameError("continuation frame without a message to continue")
        elif self._frag_op:
            raise FrameError("new message started inside a fragmented one")
        else:
            self._frag_op = opcode
        self._frag.append(payload)
        self._frag_wire += wire
        if fin:
            message = (self._frag_op, b"".join(self._frag), self._frag_wire)
            self._frag, self._frag_op, self._frag_wire = [], 0, 0
            append(message)
