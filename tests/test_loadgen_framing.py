"""Sans-I/O framing of the gevent clients: WebSocket frames and SSE lines, fed as bytes."""

from __future__ import annotations

import struct

import pytest

from loadgen.clients.ssefmt import SseParser, chunk_overhead
from loadgen.clients.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    FrameError,
    FrameReader,
)


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = False) -> bytes:
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack("!Q", n)
    return head + (b"\0\0\0\0" if mask else b"") + payload


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_every_length_encoding(size: int) -> None:
    payload = b"x" * size
    assert FrameReader().feed(frame(OP_TEXT, payload)) == [(OP_TEXT, payload,
                                                             len(frame(OP_TEXT, payload)))]


def test_frames_split_at_every_byte_boundary() -> None:
    stream = frame(OP_TEXT, b'{"a":1}') + frame(OP_PING, b"hb") + frame(OP_BINARY, b"z" * 300)
    for cut in range(len(stream) + 1):
        r = FrameReader()
        got = r.feed(stream[:cut]) + r.feed(stream[cut:])
        assert [(op, p) for op, p, _ in got] == [
            (OP_TEXT, b'{"a":1}'), (OP_PING, b"hb"), (OP_BINARY, b"z" * 300)]


def test_fragmented_message_with_a_control_frame_inside() -> None:
    r = FrameReader()
    got = r.feed(frame(OP_TEXT, b"ab", fin=False) + frame(OP_PING, b"") +
                 frame(OP_CONT, b"cd", fin=False) + frame(OP_CONT, b"e"))
    assert [(op, p) for op, p, _ in got] == [(OP_PING, b""), (OP_TEXT, b"abcde")]
    assert got[1][2] == 2 + 2 + 2 + 2 + 2 + 1  # wire bytes of the three data frames


@pytest.mark.parametrize("data", [
    frame(OP_TEXT, b"x", mask=True),  # server frames are never masked
    frame(OP_CONT, b"x"),  # nothing to continue
    frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b"),  # new message inside one
    frame(OP_CLOSE, b"x" * 126),  # oversized control frame
    bytes([0x80 | 0x40 | OP_TEXT, 1]) + b"x",  # RSV1 without an extension
])
def test_protocol_violations_raise(data: bytes) -> None:
    with pytest.raises(FrameError):
        FrameReader().feed(data)


def test_sse_parser_handles_crlf_lf_comments_and_multiline_data() -> None:
    p = SseParser()
    lines = [b": ping\r\n", b"event: message\r\n", b'data: {"a":\r\n', b"data: 1}\r\n", b"\r\n",
             b"event: ack\n", b"data:{}\n", b"\n", b"\n"]
    out = [d for d in (p.line(x) for x in lines) if d is not None]
    assert out == [b'{"a":\n1}', b"{}"]
    assert p.nbytes == sum(len(x) for x in lines)


def test_chunk_overhead() -> None:
    assert chunk_overhead(0xFF) == 2 + 4 and chunk_overhead(0x100) == 3 + 4
