"""What every HTTP stack's adapters share: the hub, the settings, the token rules and the
exit-signal callbacks. No framework here: a stack hands in what it read from a request
as a RequestView, and gets plain values back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from servers.core.auth import TokenVerifier
from servers.core.hub import Hub
from servers.settings import Settings

log = logging.getLogger("rtbench.http")

SUBPROTOCOL = "rtbench.v1"
TOKEN_SUBPROTOCOL_PREFIX = "bearer."


@dataclass(frozen=True, slots=True)
class RequestView:
    """What the shared logic reads from a request.

    `headers` must look names up case-insensitively (Starlette's Headers and aiohttp's
    CIMultiDictProxy do; a plain dict needs lower-case keys). `subprotocols`: the
    WebSocket subprotocols the client offered, in its order.
    """

    headers: Mapping[str, str]
    query: Mapping[str, str]
    subprotocols: Sequence[str] = ()


def parse_subprotocols(header: str) -> list[str]:
    """The names in a `Sec-WebSocket-Protocol` header."""
    return [p.strip() for p in header.split(",") if p.strip()]


def token_from(req: RequestView) -> str | None:
    """Token from `Authorization: Bearer`, a `bearer.<token>` WS subprotocol, or `?token=`
    (docs/protocol.md 1, in that order)."""
    header = req.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value:
            return value.strip()
    for proto in req.subprotocols:
        if proto.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return proto[len(TOKEN_SUBPROTOCOL_PREFIX) :]
    return req.query.get("token")


def choose_subprotocol(offered: Sequence[str]) -> str | None:
    """The subprotocol a WebSocket handshake answers with: `rtbench.v1` when offered; else
    the client's `bearer.<token>`, since a browser that sent only that must get one of
    its offers back."""
    if SUBPROTOCOL in offered:
        return SUBPROTOCOL
    return next((p for p in offered if p.startswith(TOKEN_SUBPROTOCOL_PREFIX)), None)


@dataclass(slots=True)
class Context:
    """What an adapter needs: the hub, the settings and the token verifier."""

    hub: Hub
    settings: Settings
    verifier: TokenVerifier
    # run when SIGINT/SIGTERM arrives, before the server waits for open responses
    on_exit_signal: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    def create(cls, settings: Settings, hub: Hub) -> Context:
        ctx = cls(hub, settings, TokenVerifier(settings.secret))
        # every connection hears "going away" (1001) before the server stops waiting for them
        ctx.on_exit_signal.append(hub.drain)
        return ctx

    def authenticate(self, req: RequestView) -> str:
        """The user id from the request's token, or AuthError."""
        return self.verifier.verify(token_from(req))

    def exit_signal(self) -> None:
        """SIGINT/SIGTERM arrived: tell every connection to go away (each callback once)."""
        for callback in self.on_exit_signal:
            try:
                callback()
            except Exception:
                log.exception("exit-signal callback %r failed", callback)

    def health(self) -> dict[str, Any]:
        """The `GET /healthz` body (docs/protocol.md 8)."""
        hub = self.hub
        return {"status": "ok", "transport": self.settings.transport, "server": hub.server_id,
                "broker": hub.broker.name, "connections": hub.connection_count}


def keepalive_timeout(settings: Settings) -> float:
    """Seconds an idle HTTP/1.1 connection is kept: longer than a held poll, so that a
    long-poll client's next poll reuses its connection."""
    return max(int(settings.poll_timeout) + 10, 5)


def max_header_bytes(settings: Settings) -> int:
    """The longest request line or header field a stack must accept: a resume cursor may be
    `max_frame_bytes` characters long (servers/core/cursor.py), in `?resume=` beside a token
    or in a header (`Last-Event-ID`, `X-Rtbench-Resume`)."""
    return settings.max_frame_bytes + 8192
