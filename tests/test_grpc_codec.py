"""The protobuf codec of the gRPC transport, without sockets: frames in, events out."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from servers.core.codec import parse_command
from servers.core.errors import ErrorCode, ProtocolError
from servers.core.types import (
    Command,
    Direct,
    Event,
    Join,
    Leave,
    Limits,
    Ping,
    Position,
    PresenceQuery,
    Publish,
)
from servers.proto import rtbench_pb2 as pb
from servers.transports.grpc_codec import (
    FORMAT,
    encode_event,
    event_from_frame,
    parse_frame,
    parse_send,
)

LIMITS = Limits(max_frame_bytes=4096)


def frame(**fields: Any) -> bytes:
    return pb.ClientFrame(**fields).SerializeToString()


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited field on the wire (tag, length, bytes); payload < 128 bytes."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


# ------------------------------------------------------------------- commands

# (ClientFrame, the same command as JSON, the expected Command)
COMMANDS: list[tuple[pb.ClientFrame, dict[str, Any], Command]] = [
    (pb.ClientFrame(id="1", join=pb.Join(room="lobby")),
     {"type": "join", "id": "1", "room": "lobby"}, Join("lobby", "1", False)),
    (pb.ClientFrame(join=pb.Join(room="a:b.c-d_e", presence=True)),
     {"type": "join", "room": "a:b.c-d_e", "presence": True}, Join("a:b.c-d_e", None, True)),
    (pb.ClientFrame(id="2", join=pb.Join(room="r", since=pb.Position(offset=5, epoch="ab")))
     , {"type": "join", "id": "2", "room": "r", "since": {"offset": 5, "epoch": "ab"}},
     Join("r", "2", False, Position(5, "ab"))),
    (pb.ClientFrame(join=pb.Join(room="r", since=pb.Position())),  # zero values: a position
     {"type": "join", "room": "r", "since": {"offset": 0, "epoch": ""}},
     Join("r", None, False, Position(0, ""))),
    (pb.ClientFrame(id="x", leave=pb.Leave(room="lobby")),
     {"type": "leave", "id": "x", "room": "lobby"}, Leave("lobby", "x")),
    (pb.ClientFrame(id="7", publish=pb.Publish(room="r", data=b'{"text": "hi", "n": [1, 2.5]}')),
     {"type": "publish", "id": "7", "room": "r", "data": {"text": "hi", "n": [1, 2.5]}},
     Publish("r", {"text": "hi", "n": [1, 2.5]}, "7")),
    (pb.ClientFrame(publish=pb.Publish(room="r", data=b'"caf\xc3\xa9"')),
     {"type": "publish", "room": "r", "data": "café"}, Publish("r", "café")),
    (pb.ClientFrame(publish=pb.Publish(room="r", data=b"null")),
     {"type": "publish", "room": "r", "data": None}, Publish("r", None)),
    (pb.ClientFrame(id="", direct=pb.Direct(to="bob@x.io", data=b"[1,2]")),
     {"type": "direct", "id": "", "to": "bob@x.io", "data": [1, 2]},
     Direct("bob@x.io", [1, 2], "")),
    (pb.ClientFrame(id="p", ping=pb.Ping()), {"type": "ping", "id": "p"}, Ping("p")),
    (pb.ClientFrame(ping=pb.Ping()), {"type": "ping"}, Ping()),
    (pb.ClientFrame(id="q", presence=pb.PresenceQuery(users=["alice", "bob"])),
     {"type": "presence", "id": "q", "users": ["alice", "bob"]},
     PresenceQuery(("alice", "bob"), "q")),
    (pb.ClientFrame(presence=pb.PresenceQuery()), {"type": "presence", "users": []},
     PresenceQuery(())),
]


@pytest.mark.parametrize(("msg", "as_json", "expected"), COMMANDS)
def test_every_command_parses_like_its_json_twin(
    msg: pb.ClientFrame, as_json: dict[str, Any], expected: Command
) -> None:
    cmd = parse_frame(msg.SerializeToString(), LIMITS)
    assert cmd == expected
    assert cmd == parse_command(orjson.dumps(as_json), LIMITS)


def error_of(raw: bytes, limits: Limits = LIMITS) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_frame(raw, limits)
    return info.value


def join_with_room_bytes(room: bytes) -> bytes:
    # a Join whose room (field 1) holds raw bytes, possibly not UTF-8
    return field(1, field(2, field(1, room)))[2:]  # the ClientFrame body: field 2 = join


# every class of bad input of docs/protocol.md section 5 a frame can carry, and its code
BAD_FRAMES: list[tuple[str, bytes, ErrorCode, str | None]] = [
    ("not protobuf", b"\xff\xff\xff", ErrorCode.BAD_JSON, None),
    ("truncated", frame(id="1", join=pb.Join(room="lobby"))[:-2], ErrorCode.BAD_JSON, None),
    ("string not UTF-8", field(2, field(1, b"lob\xffby")), ErrorCode.BAD_JSON, None),
    ("data not JSON", frame(id="3", publish=pb.Publish(room="r", data=b"{nope")),
     ErrorCode.BAD_JSON, "3"),
    ("data empty", frame(id="4", direct=pb.Direct(to="bob", data=b"")), ErrorCode.BAD_JSON, "4"),
    ("data not UTF-8", frame(publish=pb.Publish(room="r", data=b'"\xff"')),
     ErrorCode.BAD_JSON, None),
    ("too large", frame(id="5", publish=pb.Publish(room="r", data=b'"' + b"x" * 5000 + b'"')),
     ErrorCode.TOO_LARGE, None),
    ("no command", frame(id="6"), ErrorCode.MISSING_FIELD, "6"),
    ("empty frame", b"", ErrorCode.MISSING_FIELD, None),
    ("command of a newer version", frame(id="7") + field(15, b""),
     ErrorCode.UNKNOWN_COMMAND, "7"),
    ("join without room", frame(id="8", join=pb.Join()), ErrorCode.MISSING_FIELD, "8"),
    ("leave without room", frame(leave=pb.Leave()), ErrorCode.MISSING_FIELD, None),
    ("publish without room", frame(publish=pb.Publish(data=b"1")), ErrorCode.MISSING_FIELD, None),
    ("publish without data", frame(id="9", publish=pb.Publish(room="r")),
     ErrorCode.MISSING_FIELD, "9"),
    ("direct without to", frame(direct=pb.Direct(data=b"1")), ErrorCode.MISSING_FIELD, None),
    ("direct without data", frame(direct=pb.Direct(to="bob")), ErrorCode.MISSING_FIELD, None),
    ("id too long", frame(id="i" * 129, ping=pb.Ping()), ErrorCode.BAD_FIELD, None),
    ("too many users", frame(id="u", presence=pb.PresenceQuery(users=["u"] * 101)),
     ErrorCode.BAD_FIELD, "u"),
    ("bad room", frame(id="r", join=pb.Join(room="no spaces")), ErrorCode.BAD_ROOM, "r"),
    ("empty room", frame(publish=pb.Publish(room="", data=b"1")), ErrorCode.BAD_ROOM, None),
    ("room too long", frame(leave=pb.Leave(room="r" * 65)), ErrorCode.BAD_ROOM, None),
    ("bad user", frame(id="d", direct=pb.Direct(to="a/b", data=b"1")), ErrorCode.BAD_USER, "d"),
    ("bad user in query", frame(presence=pb.PresenceQuery(users=["ok", "not ok"])),
     ErrorCode.BAD_USER, None),
]


@pytest.mark.parametrize(("raw", "code", "ref"), [b[1:] for b in BAD_FRAMES],
                         ids=[b[0] for b in BAD_FRAMES])
def test_bad_frames_map_to_protocol_codes(raw: bytes, code: ErrorCode, ref: str | None) -> None:
    exc = error_of(raw)
    assert exc.code == code, exc.message
    assert exc.ref == ref
    assert exc.message


def test_not_utf8_bytes_really_are_in_the_frame() -> None:
    # guards the hand-made frames above: the same bytes with a valid room parse
    assert parse_frame(field(2, field(1, b"lobby")), LIMITS) == Join("lobby")


def test_size_limit_is_on_the_serialized_frame() -> None:
    limits = Limits(max_frame_bytes=256)
    exact = frame(publish=pb.Publish(room="r", data=b'"' + b"x" * 245 + b'"'))
    assert len(exact) == 256
    assert isinstance(parse_frame(exact, limits), Publish)
    exc = error_of(frame(publish=pb.Publish(room="r", data=b'"' + b"x" * 246 + b'"')), limits)
    assert exc.code == ErrorCode.TOO_LARGE
    assert "257" in exc.message


def test_unknown_fields_inside_a_command_are_ignored() -> None:
    body = pb.Join(room="lobby").SerializeToString() + field(9, b"future")
    assert parse_frame(field(2, body), LIMITS) == Join("lobby")


def test_parse_send() -> None:
    raw = pb.SendRequest(conn="host-1-4", frame=pb.ClientFrame(id="1", ping=pb.Ping()))
    conn_id, msg = parse_send(raw.SerializeToString(), LIMITS)
    assert conn_id == "host-1-4"
    assert msg == pb.ClientFrame(id="1", ping=pb.Ping())
    with pytest.raises(ProtocolError) as info:
        parse_send(b"\xff\xff", LIMITS)
    assert info.value.code == ErrorCode.BAD_JSON
    with pytest.raises(ProtocolError) as info:
        parse_send(b"\x0a\x01x" * 2000, LIMITS)
    assert info.value.code == ErrorCode.TOO_LARGE


# --------------------------------------------------------------------- events

EVENTS: list[dict[str, Any]] = [
    {"type": "welcome", "conn": "h-1-1", "user": "alice", "server": "h-1",
     "limits": {"max_frame_bytes": 65536, "max_rooms": 100, "outbox_max_events": 10000,
                "outbox_max_bytes": 8388608}},
    {"type": "welcome", "conn": "h-1-1", "user": "alice", "server": "h-1",
     "limits": {"max_rooms": 100}, "inbox": {"offset": 0, "epoch": "e0"}},
    {"type": "ack"},
    {"type": "ack", "ref": "7"},
    {"type": "ack", "ref": "8", "offset": 12, "epoch": "e1"},
    {"type": "ack", "offset": 0, "epoch": "e1"},
    {"type": "gap", "room": "lobby", "from": 3, "reason": "trimmed", "offset": 40, "epoch": "e1"},
    {"type": "gap", "inbox": True, "from": 0, "reason": "epoch", "offset": 0, "epoch": "e2"},
    {"type": "gap", "room": "lobby", "from": 7, "reason": "disabled"},
    {"type": "ack", "ref": ""},
    {"type": "message", "room": "lobby", "from": "alice", "data": {"text": "hi", "n": [1, None]},
     "ts": 1795804872306577},
    {"type": "message", "room": "lobby", "from": "alice", "data": "x", "ts": 1,
     "offset": 42, "epoch": "e1"},
    {"type": "direct", "from": "alice", "to": "bob", "data": [1, 2, 3], "ts": 5},
    {"type": "direct", "from": "alice", "to": "bob", "data": 0, "ts": 5, "offset": 3,
     "epoch": "e2"},
    {"type": "presence", "room": "lobby", "user": "bob", "status": "joined"},
    {"type": "presence", "room": "lobby", "user": "bob", "status": "left"},
    {"type": "presence_state", "ref": "q", "users": {"alice": True, "bob": False}},
    {"type": "presence_state", "users": {}},
    {"type": "pong", "ref": "p", "ts": 1795804872306577},
    {"type": "pong", "ts": 12},
    {"type": "error", "code": "not_member", "message": "join room 'x' first", "ref": "3"},
    {"type": "error", "code": "bad_json", "message": "frame is not decodable"},
]


@pytest.mark.parametrize("body", EVENTS, ids=[f"{e['type']}-{i}" for i, e in enumerate(EVENTS)])
def test_every_event_round_trips(body: dict[str, Any]) -> None:
    for event in (Event(body), Event.from_json(orjson.dumps(body))):
        decoded = pb.ServerFrame.FromString(encode_event(event))
        assert decoded.WhichOneof("event") == body["type"]
        assert event_from_frame(decoded) == body


def test_integer_refs_are_sent_as_strings() -> None:
    frame_ = pb.ServerFrame.FromString(encode_event(Event({"type": "ack", "ref": 12})))
    assert frame_.ack.ref == "12"
    err = Event({"type": "error", "code": "bad_room", "message": "m", "ref": 0})
    assert pb.ServerFrame.FromString(encode_event(err)).error.ref == "0"


def test_data_is_the_json_encoding() -> None:
    body = {"type": "message", "room": "r", "from": "a", "data": {"k": "é"}, "ts": 1}
    msg = pb.ServerFrame.FromString(encode_event(Event(body))).message
    assert msg.data == '{"k":"é"}'.encode()
    assert msg.from_user == "a"


def test_welcome_ignores_limits_this_version_does_not_know() -> None:
    body = {**EVENTS[0], "limits": {**EVENTS[0]["limits"], "max_future": 3}}
    assert pb.ServerFrame.FromString(encode_event(Event(body))).welcome.limits.max_rooms == 100


def test_an_event_is_serialized_once_per_format() -> None:
    calls: list[Event] = []

    def counting(event: Event) -> bytes:
        calls.append(event)
        return encode_event(event)

    event = Event.from_json(b'{"type":"message","room":"r","from":"a","data":1,"ts":2}')
    first = event.encoded(FORMAT, counting)
    assert all(event.encoded(FORMAT, counting) is first for _ in range(100))
    assert calls == [event]


def test_unknown_event_type_is_refused() -> None:
    with pytest.raises(ValueError, match="future_event"):
        encode_event(Event({"type": "future_event"}))
