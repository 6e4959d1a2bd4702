"""The wire rules both client families share (loadgen/wire.py, loadgen/grpc_codec.py):
bytes and frames in, events and close codes out, no sockets."""

from __future__ import annotations

import grpc
import pytest

from loadgen.grpc_codec import event_of, frame_of, status_close, target_of
from loadgen.wire import close_of, error_body, http_reply, poll_batch
from servers.proto import rtbench_pb2 as pb


def test_error_body() -> None:
    body = b'{"type":"error","code":"not_member","message":"join first"}'
    assert error_body(403, body) == {"type": "error", "code": "not_member",
                                     "message": "join first"}
    assert error_body(401, b'{"code":"unauthorized","message":"m"}')["type"] == "error"
    # not an error object: made of the status and the body's start
    assert error_body(502, b"<html>bad gateway</html>") == {
        "type": "error", "code": "http_502", "message": "<html>bad gateway</html>"}
    assert error_body(500, b'{"type":"ack"}')["code"] == "http_500"
    assert error_body(500, b"\xff" + b"x" * 300)["message"] == "\ufffd" + "x" * 199


def test_http_reply() -> None:
    assert http_reply(200, b'{"type":"pong","ts":1}') == {"type": "pong", "ts": 1}
    assert http_reply(200, b"[1]")["code"] == "http_200"  # a reply is an object
    assert http_reply(429, b'{"type":"error","code":"too_many_rooms","message":""}')[
        "code"] == "too_many_rooms"


def test_poll_batch() -> None:
    assert poll_batch(b'{"events":[{"type":"pong"}]}') == ([{"type": "pong"}], None)
    assert poll_batch(b'{"events":[],"closed":{"code":4408,"reason":"slow"}}') == (
        [], (4408, "slow"))
    for bad in (b"[]", b'{"closed":{}}', b'{"events":{}}', b"nope"):
        with pytest.raises(ValueError):
            poll_batch(bad)


def test_close_of() -> None:
    assert close_of({"type": "close", "code": 1001, "reason": "bye"}) == (1001, "bye")
    assert close_of({"type": "close"}) == (1000, "")
    assert close_of({"type": "message"}) is None


@pytest.mark.parametrize(("status", "details", "code"), [
    (grpc.StatusCode.UNAUTHENTICATED, "missing token", 4401),
    (grpc.StatusCode.INVALID_ARGUMENT, "bad_cursor: x", 4400),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "slow_consumer: full", 4408),
    (grpc.StatusCode.UNAVAILABLE, "going_away: server shutting down", 1001),
    (grpc.StatusCode.UNAVAILABLE, "unavailable: redis", 1011),
    (grpc.StatusCode.UNAVAILABLE, "internal: bug", 1011),
    (grpc.StatusCode.OK, None, 1000),
    (grpc.StatusCode.CANCELLED, "x", 1006),
    (16, "by number", 4401),  # what the h2 client reads from grpc-status
    (None, None, 1006),
])
def test_status_close(status: grpc.StatusCode | int | None, details: str | None,
                      code: int) -> None:
    assert status_close(status, details) == (code, details or "")


def test_frames_both_ways() -> None:
    frame = frame_of({"type": "join", "room": "r", "id": 7, "presence": True,
                      "since": {"offset": 3, "epoch": "e"}})
    assert (frame.id, frame.join.room, frame.join.presence) == ("7", "r", True)
    assert (frame.join.since.offset, frame.join.since.epoch) == (3, "e")
    assert frame_of({"type": "publish", "room": "r", "data": {"a": 1}}).publish.data == \
        b'{"a":1}'
    with pytest.raises(ValueError):
        frame_of({"type": "dance"})
    ev = pb.ServerFrame()
    ev.message.room, ev.message.from_user, ev.message.data, ev.message.ts = "r", "u", b"[1]", 5
    ev.message.offset, ev.message.epoch = 2, "e"
    assert event_of(ev) == {"type": "message", "room": "r", "from": "u", "data": [1], "ts": 5,
                            "offset": 2, "epoch": "e"}
    assert event_of(pb.ServerFrame()) == {"type": ""}
    assert target_of("grpc://127.0.0.1:50051/") == "127.0.0.1:50051"
