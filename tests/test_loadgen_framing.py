"""Sans-I/O framing of the gevent clients: WebSocket frames and the SSE response, fed as
bytes."""

from __future__ import annotations

import struct

import pytest

from loadgen.clients.ssestream import ResponseError, SseResponse
from loadgen.clients.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    FrameError,
    FrameReader,
)
from loadgen.sse_parser import MAX_LINE


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


def chunked(*pieces: bytes) -> bytes:
    """An HTTP/1.1 chunked body: one chunk per piece, then the last chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
SSE_EVENTS = [b'event: welcome\r\ndata: {"type":"welcome"}\r\n\r\n',
              b": ping\n\n",
              b'event: message\ndata: {"type":"message",\ndata: "s":1}\n\nevent: message\n',
              b'data: {"type":"message","s":2}\n\n']
SSE_DATA = [b'{"type":"welcome"}', b'{"type":"message",\n"s":1}', b'{"type":"message","s":2}']


def test_sse_response_split_at_every_byte_is_the_same_events() -> None:
    wire = SSE_HEAD + chunked(*SSE_EVENTS)
    whole = SseResponse()
    assert whole.feed(wire) == SSE_DATA
    assert whole.status == 200 and whole.complete
    assert whole.headers["content-type"] == "text/event-stream"
    for cut in range(1, len(wire)):  # chunk sizes, CRLFs, event lines all split somewhere
        r = SseResponse()
        assert r.feed(wire[:cut]) + r.feed(wire[cut:]) == SSE_DATA, cut
    r = SseResponse()
    assert [d for i in range(len(wire)) for d in r.feed(wire[i:i + 1])] == SSE_DATA


def test_sse_response_events_come_out_as_their_chunk_arrives() -> None:
    r = SseResponse()
    assert r.feed(SSE_HEAD) == [] and r.head_done and not r.complete
    assert r.feed(chunked(SSE_EVENTS[0])[:-5]) == [SSE_DATA[0]]  # last chunk not yet sent
    assert r.feed(b"0\r\n\r\n") == [] and r.complete


def test_sse_response_without_chunking_and_its_last_id() -> None:
    body = b"id: abc\ndata: 1\n\n"
    r = SseResponse()
    assert r.feed(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)) \
        == [b"1"]
    assert r.complete and r.last_id == b"abc"


def test_sse_response_error_status_keeps_the_body_unparsed() -> None:
    body = b'{"type":"error","code":"unauthorized","message":"missing token"}'
    r = SseResponse()
    wire = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    assert r.feed(wire[:40]) == [] and r.feed(wire[40:]) == []
    assert r.status == 401 and r.complete and bytes(r.body) == body


@pytest.mark.parametrize("wire", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # not a chunk size
    b"SMTP ready\r\n\r\n",  # not HTTP
])
def test_sse_response_malformed_http_raises(wire: bytes) -> None:
    with pytest.raises(ResponseError):
        SseResponse().feed(wire)


def test_sse_response_runaway_line_raises() -> None:
    r = SseResponse()
    r.feed(SSE_HEAD)
    with pytest.raises(ResponseError, match="longer than"):
        r.feed(chunked(b"data: " + b"x" * (MAX_LINE + 1))[:-5])
