"""Sans-I/O framing of the gevent clients: WebSocket frames, the SSE response and the
long-poll responses of a keep-alive connection, fed as bytes."""

from __future__ import annotations

import struct

import pytest

from loadgen.clients.httpresponse import Response, ResponseReader
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


def poll_response(body: bytes, status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 %s\r\ndate: Wed, 02 Dec 2026 03:00:00 GMT\r\nserver: uvicorn\r\n"
            b"content-length: %d\r\ncontent-type: application/json\r\n%s\r\n%s"
            % (status, len(body), extra, body))


POLL_BODIES = [b'{"events":[]}', b'{"events":[{"type":"message","room":"r","data":{"n":1}}]}']


def test_keep_alive_responses_split_at_every_byte_are_the_same() -> None:
    wire = poll_response(POLL_BODIES[0]) + poll_response(POLL_BODIES[1])
    want = [Response(200, body, True) for body in POLL_BODIES]
    assert ResponseReader().feed(wire) == want
    for cut in range(1, len(wire)):
        r = ResponseReader()
        assert r.feed(wire[:cut]) + r.feed(wire[cut:]) == want, cut
    r = ResponseReader()
    assert [resp for i in range(len(wire)) for resp in r.feed(wire[i:i + 1])] == want


def test_response_comes_out_only_when_its_body_is_complete() -> None:
    wire = poll_response(POLL_BODIES[1])
    r = ResponseReader()
    assert r.feed(wire[:-1]) == []
    assert r.feed(wire[-1:]) == [Response(200, POLL_BODIES[1], True)]
    assert r.feed(b"") == []


def test_chunked_body_is_joined_and_a_large_one_whole() -> None:
    big = b"x" * 300_000
    wire = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked(b'{"events":', big, b"}"))
    r = ResponseReader()
    got = [resp for i in range(0, len(wire), 65536) for resp in r.feed(wire[i:i + 65536])]
    assert got == [Response(200, b'{"events":' + big + b"}", True)]


def test_error_status_and_connection_close() -> None:
    body = b'{"code":"unknown_session","message":"no connection"}'
    r = ResponseReader()
    assert r.feed(poll_response(body, b"404 Not Found", b"connection: close\r\n")) == [
        Response(404, body, False)]
    with pytest.raises(ResponseError):  # nothing may follow a `connection: close` response
        r.feed(poll_response(POLL_BODIES[0]))
    http10 = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}"
    assert ResponseReader().feed(http10) == [Response(200, b"{}", False)]


@pytest.mark.parametrize("wire", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # not a chunk size
    b"SMTP ready\r\n\r\n",  # not HTTP
    b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",  # not a length
])
def test_malformed_response_raises(wire: bytes) -> None:
    with pytest.raises(ResponseError, match="malformed HTTP response"):
        ResponseReader().feed(wire)
