"""JSON codec (sans-I/O): every command, every bad-input class of docs/protocol.md section 5."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from servers.core.codec import check_room, check_user, command_from_obj, parse_command
from servers.core.errors import ErrorCode, ProtocolError
from servers.core.types import (
    Command,
    Direct,
    Join,
    Leave,
    Limits,
    Ping,
    PresenceQuery,
    Publish,
)

LIMITS = Limits()


def parse(obj: Any) -> Command:
    return parse_command(orjson.dumps(obj), LIMITS)


def fails(raw: bytes | str, limits: Limits = LIMITS) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_command(raw, limits)
    return info.value


def fails_obj(obj: Any) -> ProtocolError:
    return fails(orjson.dumps(obj))


# ------------------------------------------------------------------- commands


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"type": "join", "room": "lobby"}, Join("lobby")),
        ({"type": "join", "room": "a:b", "presence": True, "id": 1}, Join("a:b", 1, True)),
        ({"type": "join", "room": "r", "presence": False, "id": "x"}, Join("r", "x", False)),
        ({"type": "leave", "room": "lobby", "id": 7}, Leave("lobby", 7)),
        ({"type": "publish", "room": "r", "data": {"t": "hi"}}, Publish("r", {"t": "hi"})),
        ({"type": "publish", "room": "r", "data": None, "id": 0}, Publish("r", None, 0)),
        ({"type": "publish", "room": "r", "data": [1, "2", 3.5]}, Publish("r", [1, "2", 3.5])),
        ({"type": "direct", "to": "bob@x.org", "data": "yo"}, Direct("bob@x.org", "yo")),
        ({"type": "ping"}, Ping()),
        ({"type": "ping", "id": -3}, Ping(-3)),
        ({"type": "presence", "users": ["a", "b"], "id": "q"}, PresenceQuery(("a", "b"), "q")),
        ({"type": "presence", "users": []}, PresenceQuery(())),
    ],
)
def test_every_command_parses(obj: dict[str, Any], expected: Command) -> None:
    assert parse(obj) == expected


def test_str_and_bytes_frames_parse_alike() -> None:
    frame = '{"type":"join","room":"été"}'
    with pytest.raises(ProtocolError):  # non-ASCII room names break the rule either way
        parse_command(frame, LIMITS)
    assert parse_command('{"type":"ping","id":"é"}', LIMITS) == Ping("é")
    assert parse_command('{"type":"ping","id":"é"}'.encode(), LIMITS) == Ping("é")


def test_unknown_fields_are_ignored() -> None:
    cmd = parse({"type": "publish", "room": "r", "data": 1, "offset": 5, "x": {"y": []}})
    assert cmd == Publish("r", 1)


def test_command_from_obj_validates_decoded_values() -> None:
    assert command_from_obj({"type": "leave", "room": "r"}, LIMITS) == Leave("r")
    with pytest.raises(ProtocolError) as info:
        command_from_obj(["type", "ping"], LIMITS)
    assert info.value.code is ErrorCode.BAD_FRAME


# ------------------------------------------------------------------ bad input


def test_bad_json() -> None:
    err = fails(b"garbage")
    assert err.code is ErrorCode.BAD_JSON
    assert "not valid JSON" in err.message
    assert err.ref is None
    assert fails(b"").code is ErrorCode.BAD_JSON
    assert fails(b'{"type":"ping"').code is ErrorCode.BAD_JSON
    assert fails(b"\xff\xfe").code is ErrorCode.BAD_JSON


@pytest.mark.parametrize("frame", [b"[]", b"1", b'"join"', b"null", b"true"])
def test_bad_frame(frame: bytes) -> None:
    err = fails(frame)
    assert err.code is ErrorCode.BAD_FRAME
    assert "object" in err.message


def test_unknown_command_carries_ref_and_lists_the_commands() -> None:
    err = fails_obj({"type": "shout", "id": 9})
    assert err.code is ErrorCode.UNKNOWN_COMMAND
    assert err.ref == 9
    assert "'shout'" in err.message and "publish" in err.message
    # a huge type name is not echoed in full
    assert len(fails_obj({"type": "x" * 10_000}).message) < 200


def test_missing_type_and_bad_type() -> None:
    err = fails_obj({"room": "r", "id": "a"})
    assert (err.code, err.ref) == (ErrorCode.MISSING_FIELD, "a")
    assert "'type'" in err.message
    err = fails_obj({"type": 3, "id": "a"})
    assert (err.code, err.ref) == (ErrorCode.BAD_FIELD, "a")
    assert "'type'" in err.message


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"type": "join"}, "room"),
        ({"type": "leave"}, "room"),
        ({"type": "publish", "room": "r"}, "data"),
        ({"type": "publish", "data": 1}, "room"),
        ({"type": "direct", "data": 1}, "to"),
        ({"type": "direct", "to": "bob"}, "data"),
        ({"type": "presence"}, "users"),
    ],
)
def test_missing_field_names_the_field_and_keeps_ref(obj: dict[str, Any], field: str) -> None:
    err = fails_obj({**obj, "id": 42})
    assert err.code is ErrorCode.MISSING_FIELD
    assert repr(field) in err.message
    assert err.ref == 42
    assert err.body() == {"type": "error", "code": "missing_field", "message": err.message,
                          "ref": 42}


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"type": "join", "room": 5}, "room"),
        ({"type": "join", "room": "r", "presence": 1}, "presence"),
        ({"type": "join", "room": "r", "presence": "yes"}, "presence"),
        ({"type": "leave", "room": None}, "room"),
        ({"type": "publish", "room": ["r"], "data": 1}, "room"),
        ({"type": "direct", "to": 5, "data": 1}, "to"),
        ({"type": "presence", "users": "alice"}, "users"),
        ({"type": "presence", "users": {"alice": True}}, "users"),
        ({"type": "presence", "users": ["alice", 3]}, "users"),
    ],
)
def test_bad_field_names_the_field_and_keeps_ref(obj: dict[str, Any], field: str) -> None:
    err = fails_obj({**obj, "id": "r1"})
    assert err.code is ErrorCode.BAD_FIELD
    assert repr(field) in err.message
    assert err.ref == "r1"


def test_data_null_is_present_not_missing() -> None:
    assert parse({"type": "direct", "to": "bob", "data": None}) == Direct("bob", None)


@pytest.mark.parametrize("bad_id", [True, False, 1.5, [1], {"a": 1}, "x" * 129])
def test_unreadable_id_is_bad_field_without_ref(bad_id: Any) -> None:
    err = fails_obj({"type": "ping", "id": bad_id})
    assert err.code is ErrorCode.BAD_FIELD
    assert "'id'" in err.message
    assert err.ref is None
    assert "ref" not in err.body()


def test_id_limits() -> None:
    assert parse({"type": "ping", "id": "x" * 128}) == Ping("x" * 128)
    assert parse({"type": "ping", "id": 2**62}) == Ping(2**62)
    assert parse({"type": "ping", "id": None}) == Ping(None)


def test_bool_is_not_an_int_id() -> None:
    # True == 1 in Python: a bool id would be echoed as 1, not true
    err = fails_obj({"type": "join", "room": "r", "id": True})
    assert err.code is ErrorCode.BAD_FIELD


def test_too_large() -> None:
    small = Limits(max_frame_bytes=256)
    pad = "x" * 300
    err = fails(orjson.dumps({"type": "publish", "room": "r", "data": pad, "id": 1}), small)
    assert err.code is ErrorCode.TOO_LARGE
    assert "256" in err.message
    # the limit counts bytes, not characters
    frame = '{"type":"publish","room":"r","data":"' + "é" * 120 + '"}'
    assert len(frame) <= 256 < len(frame.encode())
    assert fails(frame, small).code is ErrorCode.TOO_LARGE
    # exactly at the limit is accepted, even garbage is reported as too large first
    head = b'{"type":"publish","room":"r","data":"'
    exact = head + b"y" * (256 - len(head) - 2) + b'"}'
    assert len(exact) == 256
    assert parse_command(exact, small) == Publish("r", "y" * (256 - len(head) - 2))
    assert fails(b"z" * 257, small).code is ErrorCode.TOO_LARGE


def test_presence_query_is_bounded() -> None:
    users = [f"u{i}" for i in range(LIMITS.max_presence_query)]
    assert len(parse({"type": "presence", "users": users}).users) == 100  # type: ignore[union-attr]
    err = fails_obj({"type": "presence", "users": [*users, "one-more"], "id": 5})
    assert (err.code, err.ref) == (ErrorCode.BAD_FIELD, 5)
    assert "100" in err.message


# ---------------------------------------------------------------------- names


@pytest.mark.parametrize("room", ["r", "a" * 64, "A-z_0.9:x", "lobby:en-GB"])
def test_good_room_names(room: str) -> None:
    assert check_room(room) == room
    assert parse({"type": "join", "room": room}) == Join(room)


@pytest.mark.parametrize("room", ["", "a" * 65, "with space", "a/b", "ü", "a@b", "r\n"])
def test_bad_room_names(room: str) -> None:
    err = fails_obj({"type": "join", "room": room, "id": 3})
    assert (err.code, err.ref) == (ErrorCode.BAD_ROOM, 3)
    assert "room" in err.message


@pytest.mark.parametrize("user", ["u", "b" * 64, "alice@example.org", "A.b_c-9"])
def test_good_user_names(user: str) -> None:
    assert check_user(user) == user
    assert parse({"type": "direct", "to": user, "data": 0}) == Direct(user, 0)


@pytest.mark.parametrize("user", ["", "b" * 65, "a:b", "a b", "ß", "a/b", "x\n"])
def test_bad_user_names(user: str) -> None:
    err = fails_obj({"type": "direct", "to": user, "data": 0, "id": "d"})
    assert (err.code, err.ref) == (ErrorCode.BAD_USER, "d")
    assert "user" in err.message
    err = fails_obj({"type": "presence", "users": ["ok", user]})
    assert err.code is ErrorCode.BAD_USER


def test_long_bad_name_is_truncated_in_message() -> None:
    err = fails_obj({"type": "join", "room": "!" * 5000})
    assert err.code is ErrorCode.BAD_ROOM
    assert len(err.message) < 200
