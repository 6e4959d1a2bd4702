"""servers/transports/replies.py: HTTP answers as data and the bounded body reader."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from servers.core.errors import AuthError, ErrorCode, ProtocolError
from servers.transports.replies import (
    NO_CONTENT,
    Reply,
    auth_failed,
    forbidden,
    internal_error,
    json_reply,
    protocol_failed,
    read_body,
    unknown_session,
)


def test_error_replies_are_error_events_with_their_status() -> None:
    cases: list[tuple[Reply, int, str]] = [
        (auth_failed(AuthError("token expired")), 401, "unauthorized"),
        (protocol_failed(ProtocolError(ErrorCode.TOO_LARGE, "big")), 413, "too_large"),
        (protocol_failed(ProtocolError(ErrorCode.NOT_MEMBER, "join first")), 403, "not_member"),
        (forbidden(), 403, "forbidden"),
        (unknown_session("c-9"), 404, "unknown_session"),
        (internal_error(), 500, "internal"),
    ]
    for reply, status, code in cases:
        body = orjson.loads(reply.body)
        assert (reply.status, reply.content_type) == (status, "application/json")
        assert (body["type"], body["code"]) == ("error", code) and body["message"]
    assert auth_failed(AuthError("x")).headers["WWW-Authenticate"].startswith("Bearer")
    assert "c-9" in orjson.loads(unknown_session("c-9").body)["message"]


def test_a_protocol_error_keeps_its_ref() -> None:
    reply = protocol_failed(ProtocolError(ErrorCode.BAD_FIELD, "no", ref=7))
    assert orjson.loads(reply.body) == {"type": "error", "code": "bad_field", "message": "no",
                                        "ref": 7}


def test_json_and_empty_replies() -> None:
    assert json_reply(b'{"events":[]}') == Reply(200, b'{"events":[]}')
    assert (NO_CONTENT.status, NO_CONTENT.body, NO_CONTENT.content_type) == (204, b"", None)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_a_body_is_read_whole_up_to_the_limit() -> None:
    assert await read_body("6", chunks(b"abc", b"def"), 6) == b"abcdef"
    assert await read_body(None, chunks(), 6) == b""


async def test_a_declared_length_over_the_limit_is_refused_unread() -> None:
    read: list[bytes] = []

    async def watched() -> AsyncIterator[bytes]:
        read.append(b"x")
        yield b"x"

    with pytest.raises(ProtocolError) as info:
        await read_body("7", watched(), 6)
    assert info.value.code is ErrorCode.TOO_LARGE and read == []


async def test_an_undeclared_body_is_cut_once_past_the_limit() -> None:
    with pytest.raises(ProtocolError, match="exceeds the 6 byte limit"):
        await read_body(None, chunks(b"abcd", b"efg", b"never"), 6)
