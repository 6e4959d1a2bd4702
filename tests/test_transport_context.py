"""servers/transports/context.py: the token and subprotocol rules every stack shares,
and the exit-signal callbacks; plain calls, no framework, no sockets."""

from __future__ import annotations

import logging

import pytest

from servers.core.auth import DEV_SECRET, make_token
from servers.core.errors import AuthError
from servers.core.hub import Hub
from servers.fanout.memory import MemoryBroker
from servers.settings import Settings
from servers.transports.context import (
    SUBPROTOCOL,
    Context,
    RequestView,
    choose_subprotocol,
    keepalive_timeout,
    max_header_bytes,
    parse_subprotocols,
    token_from,
)


def view(headers: dict[str, str] | None = None, query: dict[str, str] | None = None,
         subprotocols: tuple[str, ...] = ()) -> RequestView:
    return RequestView(headers or {}, query or {}, subprotocols)


def test_the_header_wins_then_the_subprotocol_then_the_query() -> None:
    every = view({"authorization": "Bearer from-header"}, {"token": "from-query"},
                 ("rtbench.v1", "bearer.from-proto"))
    assert token_from(every) == "from-header"
    assert token_from(view({}, {"token": "q"}, ("bearer.p",))) == "p"
    assert token_from(view({}, {"token": "q"})) == "q"
    assert token_from(view()) is None


def test_only_a_bearer_header_counts() -> None:
    assert token_from(view({"authorization": "bearer  spaced "})) == "spaced"  # any case
    assert token_from(view({"authorization": "Basic dXNlcg=="}, {"token": "q"})) == "q"
    assert token_from(view({"authorization": "Bearer"}, {"token": "q"})) == "q"  # no value


def test_rtbench_v1_is_chosen_when_offered_else_the_bearer_offer() -> None:
    assert choose_subprotocol(["bearer.t", SUBPROTOCOL]) == SUBPROTOCOL
    assert choose_subprotocol(["chat", "bearer.t"]) == "bearer.t"  # a browser's only offer back
    assert choose_subprotocol(["chat"]) is None
    assert choose_subprotocol([]) is None


def test_the_subprotocol_header_is_split_and_trimmed() -> None:
    assert parse_subprotocols(" rtbench.v1 ,bearer.a.b, ,") == ["rtbench.v1", "bearer.a.b"]
    assert parse_subprotocols("") == []


def _context() -> Context:
    return Context.create(Settings(transport="sse", broker="memory"), Hub(MemoryBroker(),
                                                                          server_id="r1"))


def test_authenticate_verifies_the_token_it_finds() -> None:
    ctx = _context()
    assert ctx.authenticate(view({}, {"token": make_token("ann", DEV_SECRET)})) == "ann"
    with pytest.raises(AuthError, match="missing token"):
        ctx.authenticate(view())
    with pytest.raises(AuthError, match="invalid token signature"):
        ctx.authenticate(view({"authorization": f"Bearer {make_token('ann', 'other')}"}))


def test_the_exit_signal_runs_every_callback_even_after_one_fails(
        caplog: pytest.LogCaptureFixture) -> None:
    ctx = _context()
    ran: list[str] = []

    def broken() -> None:
        ran.append("broken")
        raise RuntimeError("boom")

    ctx.on_exit_signal += [broken, lambda: ran.append("after")]
    with caplog.at_level(logging.ERROR, logger="rtbench.http"):
        ctx.exit_signal()
    assert ran == ["broken", "after"]
    assert ctx.hub.draining is not None  # the hub's drain comes first (Context.create)
    assert "exit-signal callback" in caplog.text and "boom" in caplog.text


def test_health_names_transport_server_broker_and_connections() -> None:
    assert _context().health() == {"status": "ok", "transport": "sse", "server": "r1",
                                   "broker": "memory", "connections": 0}


def test_an_idle_http_connection_outlives_a_held_poll() -> None:
    assert keepalive_timeout(Settings(poll_timeout=25)) == 35
    assert keepalive_timeout(Settings(poll_timeout=0)) == 10


def test_a_request_line_or_header_has_room_for_the_longest_cursor() -> None:
    assert max_header_bytes(Settings(max_frame_bytes=65536)) > 65536 + 4096
