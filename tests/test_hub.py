"""The hub over the in-process MemoryBroker: no sockets, every rule of the core."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from servers.core.connection import Connection
from servers.core.errors import BrokerUnavailable, ErrorCode, ProtocolError
from servers.core.hub import Hub
from servers.core.types import (
    CloseReason,
    CountChange,
    Direct,
    Event,
    Join,
    Leave,
    Limits,
    OnCountChange,
    Ping,
    Position,
    PresenceQuery,
    Publish,
)
from servers.fanout.memory import MemoryBroker


class CountingBroker(MemoryBroker):
    """Counts subscribes, records publishes; subscribes wait while `gate` is clear."""

    def __init__(self) -> None:
        super().__init__()
        self.subscribes: Counter[str] = Counter()
        self.published: list[tuple[str, bytes]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def subscribe(self, topic: str) -> None:
        self.subscribes[topic] += 1
        await self.gate.wait()
        await super().subscribe(topic)

    async def publish(self, topic: str, payload: bytes) -> None:
        self.published.append((topic, payload))
        await super().publish(topic, payload)


class FlakyBroker(MemoryBroker):
    """Raises BrokerUnavailable, as RedisBroker does when Redis is down, while `down` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.down_prefix = ""  # only topics/keys with this prefix fail
        self.count_gate = asyncio.Event()  # count_add waits while it is clear
        self.count_gate.set()

    def _check(self, topic: str) -> None:
        if self.down and topic.startswith(self.down_prefix):
            raise BrokerUnavailable("redis is down (test)")

    async def publish(self, topic: str, payload: bytes) -> None:
        self._check(topic)
        await super().publish(topic, payload)

    async def subscribe(self, topic: str) -> None:
        self._check(topic)
        await super().subscribe(topic)

    async def count_add(self, key: str, member: str, delta: int) -> int:
        await self.count_gate.wait()
        self._check(key)
        return await super().count_add(key, member, delta)

    async def count_get(self, key: str, members: Any) -> list[int]:
        self._check("")
        return await super().count_get(key, members)

    async def publish_recorded(self, topic: str, body: bytes) -> Position:
        self._check(topic)
        return await super().publish_recorded(topic, body)

    async def position(self, topic: str) -> Position:
        self._check(topic)
        return await super().position(topic)


async def make_hub(broker: MemoryBroker | None = None, **limits: int) -> Hub:
    hub = Hub(broker or MemoryBroker(), Limits(**limits), server_id="t")
    await hub.start()
    return hub


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    h = await make_hub()
    yield h
    await h.shutdown()


def ack(ref: Any, offset: int, hub: Hub) -> dict[str, Any]:
    """An ack carrying a stream position (history is on by default)."""
    epoch = cast(MemoryBroker, hub.broker).epoch
    return {"type": "ack", "ref": ref, "offset": offset, "epoch": epoch}


async def settle(hub: Hub) -> None:
    """Wait for the hub's background broker bookkeeping (presence counters, unsubscribes)."""
    while hub._background:
        await asyncio.gather(*list(hub._background), return_exceptions=True)


def bodies(conn: Connection) -> list[dict[str, Any]]:
    return [e.body for e in conn.outbox.take()]


def only(conn: Connection, kind: str) -> list[Event]:
    return [e for e in conn.outbox.take() if e.type == kind]


async def opened(hub: Hub, user: str) -> Connection:
    conn = await hub.open(user)
    assert [b["type"] for b in bodies(conn)] == ["welcome"]
    return conn


async def joined(hub: Hub, user: str, room: str, presence: bool = False) -> Connection:
    """A new connection of `user` in `room`; its outbox may hold presence events."""
    conn = await opened(hub, user)
    await hub.handle(conn, Join(room, presence=presence))
    assert conn.outbox.closed is False
    return conn


# --------------------------------------------------------------------- basics


async def test_welcome_is_first(hub: Hub) -> None:
    conn = await hub.open("alice")
    (welcome,) = bodies(conn)
    assert welcome == {
        "type": "welcome",
        "conn": conn.id,
        "user": "alice",
        "server": "t",
        "limits": {"max_frame_bytes": 65536, "max_rooms": 100, "outbox_max_events": 10_000,
                   "outbox_max_bytes": 8 * 1024 * 1024},
        "inbox": {"offset": 0, "epoch": cast(MemoryBroker, hub.broker).epoch},
    }
    assert conn.id.startswith("t-")
    other = await hub.open("alice")
    assert other.id != conn.id
    assert hub.get(conn.id) is conn and hub.connection_count == 2
    await hub.close(conn)
    await hub.close(other)
    assert hub.get(conn.id) is None


async def test_publish_reaches_every_member_once_with_one_shared_event(hub: Hub) -> None:
    members = [await joined(hub, u, "r") for u in ("alice", "bob", "carol", "bob")]
    outsider = await joined(hub, "dave", "other")
    sender = members[0]
    await hub.handle(sender, Publish("r", {"text": "hi"}, ref=1))
    received = [conn.outbox.take() for conn in members]
    acks = [e for e in received[0] if e.type == "ack"]
    assert [a.body for a in acks] == [ack(1, 1, hub)]
    messages = [[e for e in evs if e.type == "message"] for evs in received]
    assert all(len(m) == 1 for m in messages)  # exactly once, sender included
    first = messages[0][0]
    assert all(m[0] is first for m in messages)  # one Event: encoded once for everybody
    assert first.body["room"] == "r" and first.body["from"] == "alice"
    assert first.body["data"] == {"text": "hi"} and isinstance(first.body["ts"], int)
    assert outsider.outbox.take() == []
    assert hub.stats.published == 1 and hub.stats.deliveries == 4


async def test_handle_raw_errors_keep_the_connection_usable(hub: Hub) -> None:
    conn = await opened(hub, "alice")
    await hub.handle_raw(conn, b"garbage")
    await hub.handle_raw(conn, '{"type":"nope","id":"x"}')
    await hub.handle_raw(conn, b'{"type":"ping","id":2}')
    got = bodies(conn)
    assert [b["type"] for b in got] == ["error", "error", "pong"]
    assert got[0]["code"] == "bad_json" and "ref" not in got[0]
    assert (got[1]["code"], got[1]["ref"]) == ("unknown_command", "x")
    assert got[2]["ref"] == 2 and isinstance(got[2]["ts"], int)
    assert hub.stats.errors == 2


async def test_ack_only_with_an_id_but_pong_always(hub: Hub) -> None:
    conn = await opened(hub, "alice")
    await hub.handle(conn, Join("r"))
    await hub.handle(conn, Ping())
    assert [b["type"] for b in bodies(conn)] == ["pong"]
    reply = await hub.execute(conn, Leave("r"))
    assert reply.body == {"type": "ack"}


async def test_not_member(hub: Hub) -> None:
    conn = await opened(hub, "alice")
    await hub.handle(conn, Publish("nope", 1, ref=3))
    await hub.handle(conn, Leave("nope", ref=4))
    errs = bodies(conn)
    assert [(e["code"], e["ref"]) for e in errs] == [("not_member", 3), ("not_member", 4)]
    assert "'nope'" in errs[0]["message"]
    with pytest.raises(ProtocolError) as info:
        await hub.execute(conn, Publish("nope", 1))
    assert info.value.code is ErrorCode.NOT_MEMBER


async def test_too_many_rooms() -> None:
    hub = await make_hub(max_rooms=2)
    try:
        conn = await opened(hub, "alice")
        await hub.handle(conn, Join("a"))
        await hub.handle(conn, Join("b"))
        await hub.handle(conn, Join("a", ref=1))  # rejoining does not count
        await hub.handle(conn, Join("c", ref=2))
        reply, err = bodies(conn)
        assert reply == ack(1, 0, hub)
        assert (err["code"], err["ref"]) == ("too_many_rooms", 2)
        assert conn.rooms == {"a", "b"}
        await hub.handle(conn, Leave("a"))
        await hub.handle(conn, Join("c", ref=3))
        assert bodies(conn) == [ack(3, 0, hub)]
    finally:
        await hub.shutdown()


async def test_leave_stops_delivery(hub: Hub) -> None:
    alice = await joined(hub, "alice", "r")
    bob = await joined(hub, "bob", "r")
    await hub.handle(bob, Leave("r", ref="l"))
    assert bodies(bob) == [{"type": "ack", "ref": "l"}]
    await hub.handle(alice, Publish("r", "after"))
    assert bob.outbox.take() == []
    assert [e.body["data"] for e in only(alice, "message")] == ["after"]
    await hub.handle(bob, Publish("r", "x", ref=1))
    assert bodies(bob)[0]["code"] == "not_member"


async def test_join_is_idempotent() -> None:
    broker = CountingBroker()
    hub = await make_hub(broker)
    try:
        alice = await opened(hub, "alice")
        for ref in (1, 2, 3):
            await hub.handle(alice, Join("r", ref=ref))
        assert [b["ref"] for b in bodies(alice)] == [1, 2, 3]
        assert broker.subscribes["room:r"] == 1
        await hub.handle(alice, Publish("r", "once"))
        assert len(only(alice, "message")) == 1
        await hub.handle(alice, Leave("r"))  # one leave undoes the joins
        await settle(hub)
        assert "room:r" not in broker._topics
    finally:
        await hub.shutdown()


async def test_direct_reaches_every_connection_of_the_user(hub: Hub) -> None:
    alice = await opened(hub, "alice")
    bob1 = await opened(hub, "bob")
    bob2 = await opened(hub, "bob")
    await hub.handle(alice, Direct("bob", {"k": 1}, ref="d"))
    assert bodies(alice) == [ack("d", 1, hub)]
    (m1,) = bob1.outbox.take()
    (m2,) = bob2.outbox.take()
    assert m1 is m2
    assert {k: m1.body[k] for k in ("type", "from", "to", "data")} == {
        "type": "direct", "from": "alice", "to": "bob", "data": {"k": 1}}
    # offline user: acked, nobody gets anything
    await hub.handle(alice, Direct("nobody", 1, ref="n"))
    assert bodies(alice) == [ack("n", 1, hub)]
    assert bob1.outbox.take() == [] and bob2.outbox.take() == []
    # to oneself: every own connection, the sender's included
    await hub.handle(bob1, Direct("bob", "me"))
    assert len(bob1.outbox.take()) == 1 and len(bob2.outbox.take()) == 1


# ------------------------------------------------------------------- presence


class WatchedBroker(MemoryBroker):
    """Keeps the count-change callback, to play what a Redis broker reports on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.on_counts: OnCountChange | None = None

    def watch_counts(self, callback: OnCountChange) -> None:
        self.on_counts = callback


async def test_counts_that_changed_on_their_own_are_announced_to_the_room() -> None:
    broker = WatchedBroker()
    hub = await make_hub(broker)
    try:
        alice = await joined(hub, "alice", "r", presence=True)
        await settle(hub)
        alice.outbox.take()
        assert broker.on_counts is not None  # the hub registered itself
        # a dead replica's bob expired; carol came back with a replica taken for dead
        broker.on_counts([CountChange("members:r", "bob", False), CountChange("online", "bob",
                          False), CountChange("members:r", "carol", True),
                          CountChange("members:other", "dan", False)])
        await settle(hub)
        assert bodies(alice) == [
            {"type": "presence", "room": "r", "user": "bob", "status": "left"},
            {"type": "presence", "room": "r", "user": "carol", "status": "joined"},
        ]
    finally:
        await hub.shutdown()


async def test_a_leave_that_finds_nothing_to_uncount_is_not_announced(hub: Hub) -> None:
    # the count was already taken away (a reaped replica): -1, no second `left`
    alice = await joined(hub, "alice", "r", presence=True)
    bob = await joined(hub, "bob", "r")
    await settle(hub)
    alice.outbox.take()
    broker = cast(MemoryBroker, hub.broker)
    assert await broker.count_add("members:r", "bob", -1) == 0
    assert await broker.count_add("members:r", "bob", -1) == -1
    await hub.handle(bob, Leave("r"))
    await settle(hub)
    assert alice.outbox.take() == []


async def test_presence_events_go_to_watchers_on_first_and_last_connection(hub: Hub) -> None:
    alice = await joined(hub, "alice", "r", presence=True)
    await settle(hub)
    assert bodies(alice) == [{"type": "presence", "room": "r", "user": "alice",
                              "status": "joined"}]
    bob1 = await joined(hub, "bob", "r")
    await settle(hub)
    bob2 = await joined(hub, "bob", "r")  # second connection: no event
    await settle(hub)
    assert bodies(alice) == [{"type": "presence", "room": "r", "user": "bob",
                              "status": "joined"}]
    assert bob1.outbox.take() == [] and bob2.outbox.take() == []  # not watching
    await hub.handle(bob1, Leave("r"))
    await settle(hub)
    assert alice.outbox.take() == []  # bob is still in the room on bob2
    await hub.close(bob2)
    await settle(hub)
    assert bodies(alice) == [{"type": "presence", "room": "r", "user": "bob",
                              "status": "left"}]
    await hub.close(bob1)
    await settle(hub)
    assert alice.outbox.take() == []


async def test_presence_watchers_only_see_their_rooms(hub: Hub) -> None:
    watcher = await joined(hub, "alice", "r", presence=True)
    plain = await joined(hub, "carol", "r")
    await joined(hub, "bob", "elsewhere")
    await settle(hub)
    statuses = [(b["user"], b["status"]) for b in bodies(watcher)]
    assert statuses == [("alice", "joined"), ("carol", "joined")]
    assert plain.outbox.take() == []


async def test_presence_query(hub: Hub) -> None:
    alice = await opened(hub, "alice")
    await settle(hub)
    await hub.handle(alice, PresenceQuery(("alice", "bob"), ref="q"))
    assert bodies(alice) == [{"type": "presence_state", "ref": "q",
                              "users": {"alice": True, "bob": False}}]
    bob1 = await opened(hub, "bob")
    bob2 = await opened(hub, "bob")
    await settle(hub)
    await hub.handle(alice, PresenceQuery(("bob",)))
    assert bodies(alice)[0]["users"] == {"bob": True}
    await hub.close(bob1)
    await settle(hub)
    await hub.handle(alice, PresenceQuery(("bob",)))
    assert bodies(alice)[0]["users"] == {"bob": True}
    await hub.close(bob2)
    await settle(hub)
    await hub.handle(alice, PresenceQuery(("bob",)))
    assert bodies(alice)[0]["users"] == {"bob": False}


# ------------------------------------------------------------------ lifecycle


async def test_close_releases_every_subscription() -> None:
    broker = MemoryBroker()
    hub = await make_hub(broker)
    try:
        conns = [await joined(hub, u, room, presence=True)
                 for u in ("a", "b", "a") for room in ("r1", "r2")]
        await settle(hub)
        assert broker._topics == {"user:a", "user:b", "room:r1", "room:r2",
                                  "presence:r1", "presence:r2"}
        for conn in conns:
            await hub.close(conn)
            await hub.close(conn)  # twice is harmless
        await settle(hub)
        assert broker._topics == set()
        assert hub._topics.subs == {} and hub.room_count == 0 and hub.connection_count == 0
        assert broker._counts == {"online": {}, "members:r1": {}, "members:r2": {}}
        assert all(c.outbox.close_reason is CloseReason.NORMAL for c in conns)
        assert hub.stats.connections_opened == hub.stats.connections_closed == 6
    finally:
        await hub.shutdown()


async def test_shutdown_tells_every_connection_to_go_away() -> None:
    hub = await make_hub()
    conns = [await opened(hub, u) for u in ("a", "b")]
    await hub.shutdown()
    assert all(c.outbox.close_reason is CloseReason.GOING_AWAY for c in conns)


async def test_slow_consumer_is_dropped_without_affecting_others() -> None:
    hub = await make_hub(outbox_max_events=3)
    try:
        fast = await joined(hub, "fast", "r")
        slow = await joined(hub, "slow", "r")
        slow.outbox.push(Event({"type": "filler"}))  # the slow one leaves 1 event unread
        got: list[Any] = []
        for i in range(6):
            await hub.handle(fast, Publish("r", i))
            got += [e.body["data"] for e in only(fast, "message")]
        assert got == list(range(6))
        assert slow.outbox.close_reason is CloseReason.SLOW_CONSUMER
        assert [e.body.get("data") for e in slow.outbox.take()] == [None, 0, 1]
        assert hub.stats.slow_consumers == 1
        assert hub.stats.deliveries == 6 + 2
    finally:
        await hub.shutdown()


async def test_broker_failure_is_unavailable_and_nothing_is_delivered() -> None:
    broker = FlakyBroker()
    hub = await make_hub(broker)
    try:
        alice = await joined(hub, "alice", "r")
        bob = await joined(hub, "bob", "r")
        broker.down = True
        await hub.handle(alice, Publish("r", "lost", ref=1))
        await hub.handle(alice, Direct("bob", "lost", ref=2))
        await hub.handle(alice, PresenceQuery(("bob",), ref=3))
        await hub.handle(alice, Join("r2", ref=4))
        errs = bodies(alice)
        assert [(e["code"], e["ref"]) for e in errs] == [("unavailable", r) for r in (1, 2, 3, 4)]
        assert all("not done" in e["message"] for e in errs)
        assert bob.outbox.take() == []
        assert alice.rooms == {"r"}  # the failed join was not carried out
        assert hub.stats.published == 0
        broker.down = False
        await hub.handle(alice, Publish("r", "ok", ref=5))
        assert [e.body["data"] for e in only(bob, "message")] == ["ok"]
        await hub.handle(alice, Join("r2", ref=6))
        assert bodies(alice)[-1] == ack(6, 0, hub)
        assert alice.rooms == {"r", "r2"}
    finally:
        await hub.shutdown()


async def test_open_fails_when_the_broker_is_down() -> None:
    broker = FlakyBroker()
    hub = await make_hub(broker)
    try:
        broker.down = True
        with pytest.raises(BrokerUnavailable):
            await hub.open("alice")
        assert hub.connection_count == 0 and hub._topics.subs == {}
    finally:
        await hub.shutdown()


async def test_failed_presence_subscription_does_not_half_join() -> None:
    broker = FlakyBroker()
    hub = await make_hub(broker)
    try:
        alice = await opened(hub, "alice")
        broker.down, broker.down_prefix = True, "presence:"
        await hub.handle(alice, Join("r", ref=1, presence=True))
        (err,) = bodies(alice)
        assert (err["code"], err["ref"]) == ("unavailable", 1)
        assert alice.rooms == set() and hub.room_count == 0
        await settle(hub)
        assert "room:r" not in broker._topics
        assert broker._counts.get("members:r", {}) == {}
        broker.down = False
        await hub.handle(alice, Join("r", ref=2, presence=True))
        await settle(hub)
        # ack and the events a command causes are not ordered relative to each other
        assert sorted(b["type"] for b in bodies(alice)) == ["ack", "presence"]
    finally:
        await hub.shutdown()


# ---------------------------------------------------------------- concurrency


async def test_concurrent_joins_subscribe_once() -> None:
    broker = CountingBroker()
    hub = await make_hub(broker)
    try:
        conns = [await opened(hub, f"u{i}") for i in range(50)]
        broker.gate.clear()
        joins = [asyncio.create_task(hub.execute(c, Join("r", ref=i)))
                 for i, c in enumerate(conns)]
        await asyncio.sleep(0)
        assert not any(j.done() for j in joins)  # all wait on the one subscription
        broker.gate.set()
        replies = await asyncio.gather(*joins)
        assert [r.body["ref"] for r in replies] == list(range(50))
        assert broker.subscribes["room:r"] == 1
        await hub.handle(conns[0], Publish("r", "all"))
        assert all(len(only(c, "message")) == 1 for c in conns)
    finally:
        await hub.shutdown()


async def test_close_during_join_leaves_no_trace() -> None:
    broker = CountingBroker()
    hub = await make_hub(broker)
    try:
        # bob is in room r on another replica: the cross-replica count says so
        assert await broker.count_add("members:r", "bob", 1) == 1
        bob = await opened(hub, "bob")
        broker.gate.clear()
        join = asyncio.create_task(hub.execute(bob, Join("r")))
        await asyncio.sleep(0)
        assert not join.done()
        await hub.close(bob)  # e.g. a long-poll session expiring under a pending join
        broker.gate.set()
        await join
        await settle(hub)
        assert broker._topics == set() and hub._topics.subs == {} and hub.room_count == 0
        # the join never counted, so the close must not uncount (nor announce bob left)
        assert broker._counts["members:r"] == {"bob": 1}
        assert [t for t, _ in broker.published if t.startswith("presence:")] == []
    finally:
        await hub.shutdown()


async def test_close_during_join_of_a_room_shared_with_another_connection() -> None:
    broker = CountingBroker()
    hub = await make_hub(broker)
    try:
        bob = await opened(hub, "bob")
        carol = await opened(hub, "carol")
        broker.gate.clear()
        bob_join = asyncio.create_task(hub.execute(bob, Join("r")))
        carol_join = asyncio.create_task(hub.execute(carol, Join("r")))
        await asyncio.sleep(0)
        await hub.close(bob)
        broker.gate.set()
        await asyncio.gather(bob_join, carol_join)
        await settle(hub)
        assert "room:r" in broker._topics  # carol still needs it
        await hub.handle(carol, Publish("r", "x"))
        assert len(only(carol, "message")) == 1
        assert broker._counts["members:r"] == {"carol": 1}
    finally:
        await hub.shutdown()


async def test_concurrent_commands_on_a_pending_join() -> None:
    # HTTP command endpoints run one connection's commands concurrently
    broker = CountingBroker()
    hub = await make_hub(broker)
    try:
        alice = await opened(hub, "alice")
        broker.gate.clear()
        first = asyncio.create_task(hub.execute(alice, Join("r", ref=1)))
        second = asyncio.create_task(hub.execute(alice, Join("r", ref=2)))
        await asyncio.sleep(0)
        # a join is acked only once the membership is effective, the second one too
        assert not first.done() and not second.done()
        # not a member yet: publish and leave are refused, and undo nothing
        for cmd in (Publish("r", "early", ref=3), Leave("r", ref=4)):
            with pytest.raises(ProtocolError) as info:
                await hub.execute(alice, cmd)
            assert info.value.code is ErrorCode.NOT_MEMBER
        broker.gate.set()
        assert (await first).body["ref"] == 1 and (await second).body["ref"] == 2
        assert broker.subscribes["room:r"] == 1 and alice.joining is None
        await hub.handle(alice, Publish("r", "x"))
        assert len(only(alice, "message")) == 1
        await settle(hub)
        assert broker._counts["members:r"] == {"alice": 1}
    finally:
        await hub.shutdown()


async def test_pending_joins_count_towards_the_room_limit() -> None:
    broker = CountingBroker()
    hub = await make_hub(broker, max_rooms=2)
    try:
        alice = await opened(hub, "alice")
        broker.gate.clear()
        joins = [asyncio.create_task(hub.execute(alice, Join(r))) for r in ("a", "b", "c")]
        results = await asyncio.gather(joins[2], return_exceptions=True)
        assert isinstance(results[0], ProtocolError)
        assert results[0].code is ErrorCode.TOO_MANY_ROOMS
        broker.gate.set()
        await asyncio.gather(*joins[:2])
        assert alice.rooms == {"a", "b"}
    finally:
        await hub.shutdown()


async def test_a_concurrent_join_retries_when_the_first_one_fails() -> None:
    broker = FlakyBroker()
    hub = await make_hub(broker)
    try:
        alice = await opened(hub, "alice")
        broker.down = True
        first = asyncio.create_task(hub.execute(alice, Join("r", ref=1)))
        second = asyncio.create_task(hub.execute(alice, Join("r", ref=2)))
        outcome = await asyncio.gather(first, second, return_exceptions=True)
        assert all(isinstance(o, ProtocolError) and o.code is ErrorCode.UNAVAILABLE
                   for o in outcome)
        assert alice.rooms == set() and alice.joining is None and hub._topics.subs.keys() == {
            "user:alice"}
    finally:
        await hub.shutdown()


async def test_cancelled_join_leaves_no_subscription_behind() -> None:
    # e.g. a gRPC stream cancelled by its client while a join is subscribing
    broker = CountingBroker()
    hub = await make_hub(broker)
    try:
        alice = await opened(hub, "alice")
        broker.gate.clear()
        join = asyncio.create_task(hub.execute(alice, Join("r", presence=True)))
        await asyncio.sleep(0)
        subscribing = hub._topics.subs["room:r"].ready
        assert subscribing is not None
        join.cancel()
        await asyncio.gather(join, return_exceptions=True)
        assert join.cancelled()
        broker.gate.set()
        await subscribing  # the subscribe outlives the cancelled join...
        await settle(hub)  # ...and is undone
        assert broker._topics == {"user:alice"} and hub._topics.subs.keys() == {"user:alice"}
        assert alice.rooms == set() and alice.joining is None
    finally:
        await hub.shutdown()


async def test_join_after_a_cancelled_one_reuses_its_subscription() -> None:
    broker = CountingBroker()
    hub = await make_hub(broker)
    try:
        alice = await opened(hub, "alice")
        bob = await opened(hub, "bob")
        broker.gate.clear()
        cancelled = asyncio.create_task(hub.execute(alice, Join("r")))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        join = asyncio.create_task(hub.execute(bob, Join("r", ref=1)))
        broker.gate.set()
        assert (await join).body == ack(1, 0, hub)
        await settle(hub)
        assert broker.subscribes["room:r"] == 1 and "room:r" in broker._topics
        await hub.handle(bob, Publish("r", "x"))
        assert len(only(bob, "message")) == 1
    finally:
        await hub.shutdown()


async def test_close_during_a_failing_join_count_releases_the_room_once() -> None:
    broker = FlakyBroker()
    hub = await make_hub(broker)
    try:
        bob = await joined(hub, "bob", "r")
        alice = await opened(hub, "alice")
        await settle(hub)
        broker.count_gate.clear()
        join = asyncio.create_task(hub.execute(alice, Join("r", ref=1)))
        await asyncio.sleep(0)
        assert not join.done()  # registered, counting the member across replicas
        await hub.close(alice)
        broker.down, broker.down_prefix = True, "members:"
        broker.count_gate.set()
        # a failed member count costs only the presence event: the join itself stands
        assert (await join).body == ack(1, 0, hub)
        broker.down = False
        await settle(hub)
        # the close already undid alice's membership; the join must not undo it a
        # second time and take bob's subscription with it
        assert "room:r" in broker._topics
        await hub.handle(bob, Publish("r", "still here"))
        assert [e.body["data"] for e in only(bob, "message")] == ["still here"]
    finally:
        await hub.shutdown()


async def test_a_join_being_counted_takes_one_room_slot() -> None:
    broker = FlakyBroker()
    hub = await make_hub(broker, max_rooms=2)
    try:
        await joined(hub, "bob", "a")  # room a is subscribed: alice's join goes to counting
        alice = await opened(hub, "alice")
        await settle(hub)
        broker.count_gate.clear()
        first = asyncio.create_task(hub.execute(alice, Join("a")))
        await asyncio.sleep(0)
        assert not first.done()
        second = asyncio.create_task(hub.execute(alice, Join("b", ref=2)))
        await asyncio.sleep(0)
        broker.count_gate.set()
        await first
        assert (await second).body == ack(2, 0, hub)
        assert alice.rooms == {"a", "b"}
    finally:
        await hub.shutdown()
