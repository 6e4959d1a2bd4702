"""servers/transports/ws.py: the WebSocket handshake's refusals and the sender, as plain
calls on a hub over the in-process memory broker; a recording socket stands in for the
stack (each stack is tested end to end in tests/test_conformance.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from servers.core.auth import DEV_SECRET, make_token
from servers.core.connection import Connection
from servers.core.hub import Hub
from servers.core.types import CloseReason, Event
from servers.fanout.memory import MemoryBroker
from servers.settings import Settings
from servers.transports import ws
from servers.transports.context import Context, RequestView


class Recorder(ws.Sender):
    """A sender whose socket is a list; `gate` holds each send while it is clear."""

    __slots__ = ("gate", "sent")

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.sent: list[object] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def send_text(self, text: str) -> None:
        await self.gate.wait()
        self.sent.append(orjson.loads(text)["type"])

    async def close_socket(self, code: int, reason: str) -> None:
        self.sent.append((code, reason))


@pytest.fixture
async def ctx() -> AsyncIterator[Context]:
    hub = Hub(MemoryBroker(), server_id="r1")
    await hub.start()
    try:
        yield Context.create(Settings(broker="memory"), hub)
    finally:
        await hub.shutdown()


async def shake(ctx: Context, req: RequestView,
                ) -> tuple[Connection | None, list[tuple[object, object]]]:
    """The handshake with an accept and a close that record what they were asked."""
    did: list[tuple[object, object]] = []

    async def accept(subprotocol: str | None) -> None:
        did.append(("accept", subprotocol))

    async def close(code: int, reason: str) -> None:
        did.append((code, reason))

    return await ws.handshake(ctx, req, accept, close), did


async def test_a_good_token_is_accepted_with_the_chosen_subprotocol(ctx: Context) -> None:
    token = make_token("ann", DEV_SECRET)
    conn, did = await shake(ctx, RequestView({}, {}, ("rtbench.v1", f"bearer.{token}")))
    assert conn is not None and conn.user == "ann"
    assert did == [("accept", "rtbench.v1")]


async def test_refusals_come_after_the_accept_with_their_close_code(ctx: Context) -> None:
    conn, did = await shake(ctx, RequestView({}, {"token": "nope"}, ("bearer.nope",)))
    assert conn is None and did[0] == ("accept", "bearer.nope")  # a browser gets its offer
    code, reason = did[1]
    assert code == 4401 and str(reason).startswith("malformed token")
    query = {"token": make_token("ann", DEV_SECRET), "resume": "!!"}
    conn, did = await shake(ctx, RequestView({}, query))
    assert conn is None and did[0] == ("accept", None)
    code, reason = did[1]
    assert code == 4400 and str(reason).startswith("bad_cursor: ")
    assert ctx.hub.connection_count == 0


def test_a_close_reason_fits_a_close_frame_and_keeps_whole_characters() -> None:
    assert ws.reason_text("short") == "short"
    cut = ws.reason_text("é" * 100)  # 2 bytes each: 61 fit in 123
    assert cut == "é" * 61 and len(cut.encode()) <= 123


def test_limits_the_stacks_configure() -> None:
    assert ws.max_message_size(Settings(max_frame_bytes=4096)) == 1 << 20
    assert ws.max_message_size(Settings(max_frame_bytes=1 << 20)) == 4 << 20
    assert ws.keepalive(Settings(heartbeat=15)) == 15
    assert ws.keepalive(Settings(heartbeat=0)) is None
    assert ws.PER_MESSAGE_DEFLATE is False


async def test_the_sender_writes_the_queue_then_the_close_reason(ctx: Context) -> None:
    conn = await ctx.hub.open("ann")
    sender = Recorder(conn)
    sender.start()
    assert sender.sent == ["welcome"]  # written at once, in the caller's stack
    conn.outbox.push(Event({"type": "pong", "ts": 1}))
    conn.outbox.close(CloseReason.GOING_AWAY)
    assert sender.sent == ["welcome", "pong", (1001, "server shutting down")]
    await sender.stop()
    await ctx.hub.close(conn)


async def test_a_slow_consumer_gets_its_close_without_its_backlog(ctx: Context) -> None:
    conn = await ctx.hub.open("ann")
    sender = Recorder(conn)
    sender.gate.clear()  # the socket blocks: the first send waits, the rest queue
    sender.start()
    conn.outbox.push(Event({"type": "pong", "ts": 1}))
    conn.outbox.close(CloseReason.SLOW_CONSUMER)
    sender.gate.set()
    await sender.stop()  # a close in progress is let finish
    assert sender.sent == ["welcome", (4408, "slow consumer: outbound queue full")]
    await ctx.hub.close(conn)


async def test_stop_cancels_a_sender_blocked_on_an_open_connection(ctx: Context) -> None:
    conn = await ctx.hub.open("ann")
    sender = Recorder(conn)
    sender.gate.clear()
    sender.start()
    task = sender.runner.task
    assert task is not None and not task.done()
    await sender.stop()  # the client left: nothing more to write
    assert task.cancelled() and sender.sent == []
    await ctx.hub.close(conn)
