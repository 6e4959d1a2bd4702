"""HTTP responses as data: what the shared transport logic answers, before a stack turns it
into its own response object. Also the one body reader with the frame-size limit.

Every error body is the protocol's `error` event (docs/protocol.md 5), with the status
of its code.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass, field

import orjson

from servers.core.errors import HTTP_STATUS, AuthError, ErrorCode, ProtocolError

JSON = "application/json"
EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP response: status, body, its content type (None: no body) and extra headers."""

    status: int
    body: bytes = b""
    content_type: str | None = JSON
    headers: Mapping[str, str] = field(default_factory=dict)


NO_CONTENT = Reply(204, content_type=None)


def json_reply(body: bytes, status: int = 200) -> Reply:
    """A JSON body already encoded (events are encoded once, never per response)."""
    return Reply(status, body)


def error_reply(code: str, message: str, status: int,
                headers: Mapping[str, str] | None = None) -> Reply:
    body = orjson.dumps({"type": "error", "code": code, "message": message})
    return Reply(status, body, headers=headers or {})


def auth_failed(exc: AuthError) -> Reply:
    return error_reply("unauthorized", exc.message, 401,
                       {"WWW-Authenticate": 'Bearer realm="rtbench"'})


def protocol_failed(exc: ProtocolError) -> Reply:
    return Reply(HTTP_STATUS[exc.code], orjson.dumps(exc.body()))


def forbidden() -> Reply:
    # `forbidden` is HTTP-only (section 5) and not an ErrorCode of the core
    return error_reply("forbidden", "this connection belongs to another user", 403)


def unknown_session(conn_id: str) -> Reply:
    message = f"no connection {conn_id[:80]!r} (expired or never existed)"
    return error_reply(str(ErrorCode.UNKNOWN_SESSION), message, 404)


def internal_error() -> Reply:
    return error_reply(str(ErrorCode.INTERNAL), "internal server error", 500)


async def read_body(declared: str | None, chunks: AsyncIterable[bytes], limit: int) -> bytes:
    """The request body, refusing (TOO_LARGE) more than `limit` bytes without buffering it
    all; `declared` is the Content-Length header, if any."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"body of {declared} bytes exceeds the {limit} limit"
        )
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"body exceeds the {limit} byte limit")
        parts.append(chunk)
    return b"".join(parts)
