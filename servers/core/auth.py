"""HMAC-SHA256 signed tokens: one verifier for every transport.

Format: ``base64url(json({"sub": user, "exp": unix_seconds})) "." base64url(mac)``
where ``mac = HMAC-SHA256(secret, first_part)``; base64url without padding.
Identity comes only from a verified token, never from a path or query value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import orjson

from servers.core.codec import USER_RE
from servers.core.errors import AuthError

DEV_SECRET = "rtbench-dev-secret"  # default for local runs; set RTBENCH_SECRET elsewhere


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(user: str, secret: str, ttl: float = 86400.0, now: float | None = None) -> str:
    """Sign a token for `user` valid for `ttl` seconds."""
    if not USER_RE.fullmatch(user):
        raise ValueError(f"user name {user!r} must match [A-Za-z0-9_.@-]{{1,64}}")
    exp = int((time.time() if now is None else now) + ttl)
    payload = _b64(orjson.dumps({"sub": user, "exp": exp}))
    mac = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


class TokenVerifier:
    """Checks tokens signed with `secret`; returns the user id or raises AuthError."""

    def __init__(self, secret: str, leeway: float = 5.0) -> None:
        self._key = secret.encode()
        self._leeway = leeway

    def verify(self, token: str | None, now: float | None = None) -> str:
        if not token:
            raise AuthError("missing token")
        if len(token) > 4096:
            raise AuthError("malformed token: too long")
        payload, sep, mac_text = token.partition(".")
        if not sep or not payload or not mac_text:
            raise AuthError("malformed token: expected '<payload>.<signature>'")
        try:
            mac = _unb64(mac_text)
        except ValueError:
            raise AuthError("malformed token: signature is not base64url") from None
        expected = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise AuthError("invalid token signature")
        try:
            claims = orjson.loads(_unb64(payload))
            user, exp = claims["sub"], claims["exp"]
        except (ValueError, KeyError, TypeError):
            raise AuthError("malformed token: bad payload") from None
        if not isinstance(user, str) or not USER_RE.fullmatch(user):
            raise AuthError("malformed token: bad 'sub'")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AuthError("malformed token: bad 'exp'")
        if exp + self._leeway < (time.time() if now is None else now):
            raise AuthError("token expired")
        return user
