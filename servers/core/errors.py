"""The one error tree of the core.

    ProtocolError            a client sent something the protocol does not allow
      (code in ErrorCode)    -> `error` event / HTTP 4xx / gRPC status; the
                                connection stays open unless the code says so
    AuthError                missing, malformed, forged or expired token
                             -> HTTP 401 / WS close 4401 / gRPC UNAUTHENTICATED
    BrokerUnavailable        the fanout layer (Redis) cannot take the request
                             -> `error` event with code `unavailable`

Nothing else crosses an adapter boundary: adapters map unexpected exceptions to
`internal` and log them server-side; clients never see a stack trace.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Stable error codes (docs/protocol.md lists them with their meaning)."""

    BAD_JSON = "bad_json"  # frame is not valid JSON / not decodable protobuf
    BAD_FRAME = "bad_frame"  # valid JSON but not an object
    UNKNOWN_COMMAND = "unknown_command"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"  # wrong type or value
    TOO_LARGE = "too_large"  # frame over the configured limit
    BAD_ROOM = "bad_room"  # room name does not match the naming rule
    BAD_USER = "bad_user"  # user name does not match the naming rule
    NOT_MEMBER = "not_member"  # publish/leave on a room the connection has not joined
    TOO_MANY_ROOMS = "too_many_rooms"
    UNAVAILABLE = "unavailable"  # fanout layer down: the command was NOT carried out
    UNKNOWN_SESSION = "unknown_session"  # long-poll/SSE session id unknown or expired
    BAD_CURSOR = "bad_cursor"  # a resume cursor that does not decode or breaks a limit
    INTERNAL = "internal"


# HTTP status for each code, used by the HTTP transports when a command fails.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_JSON: 400,
    ErrorCode.BAD_FRAME: 400,
    ErrorCode.UNKNOWN_COMMAND: 400,
    ErrorCode.MISSING_FIELD: 400,
    ErrorCode.BAD_FIELD: 400,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.BAD_ROOM: 400,
    ErrorCode.BAD_USER: 400,
    ErrorCode.NOT_MEMBER: 403,
    ErrorCode.TOO_MANY_ROOMS: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.UNKNOWN_SESSION: 404,
    ErrorCode.BAD_CURSOR: 400,
    ErrorCode.INTERNAL: 500,
}


class RtbenchError(Exception):
    """Base of every error the core raises on purpose."""


class ProtocolError(RtbenchError):
    """A command the protocol does not allow; becomes an `error` event."""

    def __init__(self, code: ErrorCode, message: str, ref: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.ref = ref

    def body(self) -> dict[str, Any]:
        """The `error` event body sent to the client."""
        body: dict[str, Any] = {"type": "error", "code": str(self.code), "message": self.message}
        if self.ref is not None:
            body["ref"] = self.ref
        return body


class AuthError(RtbenchError):
    """Missing, malformed, forged or expired token."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BrokerUnavailable(RtbenchError):
    """The fanout layer could not carry out a request (Redis down or timing out)."""
