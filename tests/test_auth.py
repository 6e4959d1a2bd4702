"""Tokens: signing, verification and every refusal of docs/protocol.md section 1."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import orjson
import pytest

from servers.core.auth import DEV_SECRET, TokenVerifier, make_token
from servers.core.errors import AuthError

SECRET = "test-secret"
NOW = 1_700_000_000.0
verifier = TokenVerifier(SECRET)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(payload_part: str, secret: str = SECRET) -> str:
    """`payload_part` correctly signed, so that verification reaches the payload checks."""
    mac = hmac.new(secret.encode(), payload_part.encode(), hashlib.sha256).digest()
    return f"{payload_part}.{b64(mac)}"


def claims_token(claims: Any) -> str:
    return signed(b64(orjson.dumps(claims)))


def refused(token: str | None, now: float = NOW) -> str:
    with pytest.raises(AuthError) as info:
        verifier.verify(token, now=now)
    return info.value.message


def test_round_trip() -> None:
    token = make_token("alice@example.org", SECRET, ttl=60, now=NOW)
    assert verifier.verify(token, now=NOW) == "alice@example.org"
    payload, _, _ = token.partition(".")
    assert "=" not in token
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims == {"sub": "alice@example.org", "exp": int(NOW + 60)}


def test_default_now_and_ttl_use_the_clock() -> None:
    token = make_token("bob", SECRET)
    assert TokenVerifier(SECRET).verify(token) == "bob"


def test_token_matches_the_documented_format() -> None:
    # a client that signs by hand, as docs/protocol.md describes, is accepted
    token = claims_token({"sub": "carol", "exp": int(NOW) + 10})
    assert verifier.verify(token, now=NOW) == "carol"


def test_missing() -> None:
    assert refused(None) == "missing token"
    assert refused("") == "missing token"


def test_forged_signature() -> None:
    other = make_token("alice", "another-secret", now=NOW)
    assert refused(other) == "invalid token signature"
    assert refused(make_token("alice", DEV_SECRET, now=NOW)) == "invalid token signature"
    payload, _, mac = make_token("alice", SECRET, now=NOW).partition(".")
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    assert refused(f"{payload}.{flipped}") == "invalid token signature"


def test_tampered_payload() -> None:
    token = make_token("alice", SECRET, now=NOW)
    _, _, mac = token.partition(".")
    evil = b64(orjson.dumps({"sub": "admin", "exp": int(NOW) + 86400}))
    assert refused(f"{evil}.{mac}") == "invalid token signature"


@pytest.mark.parametrize("token", ["nodot", "abc.", ".abc", "."])
def test_malformed_shape(token: str) -> None:
    assert refused(token).startswith("malformed token:")


def test_malformed_signature_encoding() -> None:
    payload = b64(orjson.dumps({"sub": "alice", "exp": int(NOW) + 60}))
    msg = refused(f"{payload}.a")  # one base64 character can never decode
    assert msg == "malformed token: signature is not base64url"


def test_too_long() -> None:
    assert refused("a" * 5000 + ".b") == "malformed token: too long"


@pytest.mark.parametrize(
    "payload_part",
    [
        b64(b"not json"),
        b64(b"[1, 2]"),
        b64(orjson.dumps({"exp": int(NOW) + 60})),
        b64(orjson.dumps({"sub": "alice"})),
        "a",  # not decodable base64, but signed
        b64(b"\xff\xfe"),
    ],
)
def test_malformed_payload(payload_part: str) -> None:
    assert refused(signed(payload_part)) == "malformed token: bad payload"


@pytest.mark.parametrize(
    ("claims", "field"),
    [
        ({"sub": 5, "exp": int(NOW) + 60}, "sub"),
        ({"sub": "bad user", "exp": int(NOW) + 60}, "sub"),
        ({"sub": "", "exp": int(NOW) + 60}, "sub"),
        ({"sub": "alice", "exp": "tomorrow"}, "exp"),
        ({"sub": "alice", "exp": True}, "exp"),
        ({"sub": "alice", "exp": None}, "exp"),
    ],
)
def test_wrong_claim_types(claims: dict[str, Any], field: str) -> None:
    assert refused(claims_token(claims)) == f"malformed token: bad '{field}'"


def test_expired_and_leeway() -> None:
    token = make_token("alice", SECRET, ttl=10, now=NOW)
    exp = int(NOW) + 10
    assert verifier.verify(token, now=exp) == "alice"
    assert verifier.verify(token, now=exp + 5) == "alice"  # within the 5 s leeway
    assert refused(token, now=exp + 5.01) == "token expired"
    assert refused(token, now=exp + 3600) == "token expired"
    strict = TokenVerifier(SECRET, leeway=0)
    with pytest.raises(AuthError, match="token expired"):
        strict.verify(token, now=exp + 0.5)


def test_float_exp_is_accepted() -> None:
    assert verifier.verify(claims_token({"sub": "a", "exp": NOW + 1.5}), now=NOW) == "a"


@pytest.mark.parametrize("user", ["", "x" * 65, "a b", "a:b", "é"])
def test_make_token_refuses_bad_user_names(user: str) -> None:
    with pytest.raises(ValueError, match="user name"):
        make_token(user, SECRET)


@pytest.mark.parametrize("user", ["a", "x" * 64, "A.b_c-d@e"])
def test_make_token_accepts_good_user_names(user: str) -> None:
    assert verifier.verify(make_token(user, SECRET, now=NOW), now=NOW) == user
