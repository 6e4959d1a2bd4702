"""RedisBroker against a real private redis-server: two brokers are two replicas.

Every test uses its own namespace on the shared session Redis; the fault tests
start (and kill) a Redis of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from servers.core.connection import Connection
from servers.core.errors import BrokerUnavailable
from servers.core.hub import Hub
from servers.core.types import Direct, Event, Join, Limits, PresenceQuery, Publish
from servers.fanout.redis import RedisBroker
from servers.testing import RedisServer, free_port

pytestmark = pytest.mark.timeout(60)


class Inbox:
    """The broker callback: records (topic, payload) and wakes whoever waits on it."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self._changed = asyncio.Event()

    def __call__(self, topic: str, payload: bytes) -> None:
        self.items.append((topic, payload))
        self._changed.set()

    def payloads(self, topic: str) -> list[bytes]:
        return [p for t, p in self.items if t == topic]

    async def until(self, done: Callable[[], bool], within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while not done():
                self._changed.clear()
                await self._changed.wait()

    async def until_got(self, topic: str, payload: bytes, within: float = 5.0) -> None:
        await self.until(lambda: payload in self.payloads(topic), within)


def namespace() -> str:
    return "t" + uuid.uuid4().hex[:10]


@contextlib.asynccontextmanager
async def started(url: str, ns: str, op_timeout: float = 3.0,
                  ) -> AsyncIterator[tuple[RedisBroker, Inbox]]:
    broker = RedisBroker(url, namespace=ns, op_timeout=op_timeout)
    inbox = Inbox()
    await broker.start(inbox)
    try:
        yield broker, inbox
    finally:
        await broker.close()


@pytest.fixture
async def pair(redis_server: RedisServer,
               ) -> AsyncIterator[tuple[tuple[RedisBroker, Inbox], tuple[RedisBroker, Inbox]]]:
    """Two replicas sharing one namespace."""
    ns = namespace()
    async with started(redis_server.url, ns) as a, started(redis_server.url, ns) as b:
        yield a, b


Pair = tuple[tuple[RedisBroker, Inbox], tuple[RedisBroker, Inbox]]


# -------------------------------------------------------------------- delivery


async def test_publish_after_subscribe_arrives_exactly_once(pair: Pair) -> None:
    (a, inbox_a), (b, inbox_b) = pair
    await a.subscribe("room:x")
    await b.publish("room:x", b'{"n":1}')
    await b.publish("room:x", b"end")  # per-publisher order: once it is here, so is n=1
    await inbox_a.until_got("room:x", b"end")
    assert inbox_a.payloads("room:x") == [b'{"n":1}', b"end"]
    assert inbox_b.items == []  # b never subscribed


async def test_own_publish_comes_back_to_a_subscribed_replica(pair: Pair) -> None:
    (a, inbox_a), (b, inbox_b) = pair
    await asyncio.gather(a.subscribe("user:u"), b.subscribe("user:u"))
    await a.publish("user:u", b"m")
    await inbox_a.until_got("user:u", b"m")
    await inbox_b.until_got("user:u", b"m")
    assert inbox_a.items == inbox_b.items == [("user:u", b"m")]


async def test_unsubscribe_stops_delivery(pair: Pair) -> None:
    (a, inbox_a), (b, _) = pair
    await a.subscribe("room:x")
    await a.unsubscribe("room:x")
    # subscription commands go out in order: once this one is confirmed, the
    # unsubscribe before it has taken effect
    await a.subscribe("room:mark")
    await b.publish("room:x", b"gone")
    await b.publish("room:mark", b"end")
    await inbox_a.until_got("room:mark", b"end")
    assert inbox_a.payloads("room:x") == []


async def test_resubscribe_after_unsubscribe(pair: Pair) -> None:
    (a, inbox_a), (b, _) = pair
    await a.subscribe("room:x")
    await a.unsubscribe("room:x")
    await a.subscribe("room:x")
    await b.publish("room:x", b"back")
    await b.publish("room:x", b"end")
    await inbox_a.until_got("room:x", b"end")
    assert inbox_a.payloads("room:x") == [b"back", b"end"]


async def test_publish_order_kept_through_the_auto_pipeline(pair: Pair) -> None:
    (a, inbox_a), (b, _) = pair
    await a.subscribe("room:seq")
    n = 2000
    payloads = [str(i).encode() for i in range(n)]
    start = time.monotonic()
    await asyncio.gather(*(b.publish("room:seq", p) for p in payloads))
    await inbox_a.until(lambda: len(inbox_a.items) >= n, within=10)
    assert time.monotonic() - start < 5  # pipelined, not 2000 sequential round trips
    assert inbox_a.payloads("room:seq") == payloads


async def test_two_publishers_interleave_but_each_keeps_its_order(pair: Pair) -> None:
    (a, inbox_a), (b, _) = pair
    await a.subscribe("room:mix")
    n = 500
    await asyncio.gather(
        *(a.publish("room:mix", f"a{i}".encode()) for i in range(n)),
        *(b.publish("room:mix", f"b{i}".encode()) for i in range(n)),
    )
    await inbox_a.until(lambda: len(inbox_a.items) >= 2 * n, within=10)
    got = inbox_a.payloads("room:mix")
    assert [p for p in got if p.startswith(b"a")] == [f"a{i}".encode() for i in range(n)]
    assert [p for p in got if p.startswith(b"b")] == [f"b{i}".encode() for i in range(n)]


async def test_many_concurrent_subscribes_are_batched(pair: Pair) -> None:
    (a, inbox_a), (b, _) = pair
    topics = [f"room:r{i}" for i in range(2000)]
    start = time.monotonic()
    await asyncio.gather(*(a.subscribe(t) for t in topics))
    assert time.monotonic() - start < 5
    probes = topics[::97]
    for t in probes:
        await b.publish(t, t.encode())
    await inbox_a.until(lambda: len(inbox_a.items) >= len(probes))
    assert [t for t, _ in inbox_a.items] == probes
    assert [p for _, p in inbox_a.items] == [t.encode() for t in probes]


# -------------------------------------------------------------------- counters


async def test_count_add_is_atomic_across_replicas_and_deletes_at_zero(
        pair: Pair, redis_server: RedisServer) -> None:
    (a, _), (b, _) = pair
    n = 300
    results = await asyncio.gather(
        *(a.count_add("online", "u", 1) for _ in range(n)),
        *(b.count_add("online", "u", 1) for _ in range(n)),
    )
    assert sorted(results) == list(range(1, 2 * n + 1))  # every increment seen once
    assert await a.count_get("online", ["u"]) == [2 * n]
    downs = await asyncio.gather(
        *(a.count_add("online", "u", -1) for _ in range(n)),
        *(b.count_add("online", "u", -1) for _ in range(n)),
    )
    assert sorted(downs) == list(range(2 * n))
    assert await b.count_get("online", ["u"]) == [0]
    # a replica's share never goes below zero: nothing to take away says -1, and
    # no field is left behind (in the totals nor in the replica's shares)
    assert await a.count_add("online", "u", -1) == -1
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        keys = a.presence.keys
        assert await raw.hexists(keys.total("online"), "u") == 0
        assert await raw.exists(keys.shares(a.presence.replica),
                                keys.shares(b.presence.replica)) == 0
    finally:
        await raw.aclose()


async def test_a_replica_cannot_take_away_what_another_counted(pair: Pair) -> None:
    (a, _), (b, _) = pair
    assert await a.count_add("online", "u", 1) == 1
    assert await b.count_add("online", "u", -1) == -1  # b holds no share of u
    assert await a.count_get("online", ["u"]) == [1]
    assert await b.count_add("online", "u", 1) == 2
    assert await b.count_add("online", "u", -2) == 1
    assert await a.count_get("online", ["u"]) == [1]


async def test_presence_ttl_zero_keeps_plain_counters(redis_server: RedisServer) -> None:
    broker = RedisBroker(redis_server.url, namespace=namespace(), presence_ttl=0)
    await broker.start(Inbox())
    try:
        assert broker.presence._task is None  # no liveness entry, no reaper
        assert await broker.count_add("online", "u", 2) == 2
        assert await broker.count_add("online", "u", -3) == 0
        assert await broker.count_get("online", ["u"]) == [0]
        raw = aioredis.Redis.from_url(redis_server.url)
        try:
            keys = broker.presence.keys
            assert await raw.exists(keys.replicas, keys.shares(broker.presence.replica)) == 0
        finally:
            await raw.aclose()
    finally:
        await broker.close()


async def test_count_get(pair: Pair) -> None:
    (a, _), (b, _) = pair
    assert await a.count_get("k", []) == []
    assert await a.count_get("k", ["x", "y"]) == [0, 0]
    await a.count_add("k", "x", 2)
    await b.count_add("k", "y", 1)
    await b.count_add("other", "x", 5)
    assert await b.count_get("k", ["y", "x", "z"]) == [1, 2, 0]


async def test_namespaces_are_isolated(redis_server: RedisServer) -> None:
    async with started(redis_server.url, namespace()) as (a, inbox_a), \
            started(redis_server.url, namespace()) as (b, _):
        await a.subscribe("room:x")
        await a.count_add("k", "u", 1)
        await b.publish("room:x", b"other namespace")
        assert await b.count_get("k", ["u"]) == [0]
        await a.publish("room:x", b"end")
        await inbox_a.until_got("room:x", b"end")
        assert inbox_a.payloads("room:x") == [b"end"]


# ---------------------------------------------------------------------- faults


async def test_start_against_a_dead_url_is_unavailable() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    broker = RedisBroker(url, op_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="cannot reach Redis at " + url):
        await broker.start(Inbox())
    assert time.monotonic() - start < 2.5


async def test_redis_down_then_back() -> None:
    server = RedisServer().start()
    try:
        ns = namespace()
        async with started(server.url, ns, op_timeout=1.0) as (a, inbox_a), \
                started(server.url, ns, op_timeout=1.0) as (b, _):
            await a.subscribe("room:x")
            await b.publish("room:x", b"before")
            await inbox_a.until_got("room:x", b"before")

            server.stop()
            start = time.monotonic()
            with pytest.raises(BrokerUnavailable):
                await b.publish("room:x", b"lost")
            with pytest.raises(BrokerUnavailable):
                await b.count_add("online", "u", 1)
            assert time.monotonic() - start < 2 * 1.0 + 1.0

            server = RedisServer(port=server.port).start()  # same port, empty Redis
            # a's reader reconnects and resubscribes by itself; b's pool reconnects
            # on its next command
            await until_delivered(b, inbox_a, "room:x")
            assert a.reconnects >= 1
            # deliveries are exactly-once again
            inbox_a.items.clear()
            await b.publish("room:x", b"after")
            await b.publish("room:x", b"end")
            await inbox_a.until_got("room:x", b"end")
            assert [p for p in inbox_a.payloads("room:x") if not p.startswith(b"probe")] == [
                b"after", b"end"]
            # and new subscriptions work on the new connection
            await a.subscribe("room:y")
            await b.publish("room:y", b"new")
            await inbox_a.until_got("room:y", b"new")
    finally:
        server.stop()


async def until_delivered(publisher: RedisBroker, inbox: Inbox, topic: str,
                          within: float = 15) -> None:
    """Probe `topic` until a probe comes through (the subscriber has reconnected)."""
    async with asyncio.timeout(within):
        for probe in itertools.count():
            payload = b"probe%d" % probe
            with contextlib.suppress(BrokerUnavailable):
                await publisher.publish(topic, payload)
            with contextlib.suppress(TimeoutError):
                await inbox.until(lambda: any(p.startswith(b"probe") for p in
                                              inbox.payloads(topic)), within=0.2)
                return


async def test_subscribe_while_redis_is_down_fails_and_is_forgotten() -> None:
    server = RedisServer().start()
    try:
        ns = namespace()
        async with started(server.url, ns, op_timeout=0.5) as (a, inbox_a), \
                started(server.url, ns, op_timeout=0.5) as (b, _):
            await a.subscribe("room:p")
            server.stop()
            start = time.monotonic()
            with pytest.raises(BrokerUnavailable, match="did not confirm SUBSCRIBE"):
                await a.subscribe("room:z")
            assert time.monotonic() - start < 1.5
            server = RedisServer(port=server.port).start()
            await until_delivered(b, inbox_a, "room:p")
            # the failed subscribe must not come back with the reconnect: the hub
            # forgot it, so nothing would ever unsubscribe it
            await b.publish("room:z", b"unwanted")
            await b.publish("room:p", b"end")
            await inbox_a.until_got("room:p", b"end")
            assert inbox_a.payloads("room:z") == []
            assert a._waiting == {}
    finally:
        server.stop()


async def test_subscribe_during_an_outage_completes_when_redis_is_back() -> None:
    server = RedisServer().start()
    try:
        ns = namespace()
        async with started(server.url, ns, op_timeout=5.0) as (a, inbox_a):
            server.stop()
            pending = [asyncio.create_task(a.subscribe(f"room:s{i}")) for i in range(50)]
            server = RedisServer(port=server.port).start()
            await asyncio.gather(*pending)
            assert a.reconnects >= 1
            async with started(server.url, ns) as (b, _):
                await b.publish("room:s7", b"hello")
                await inbox_a.until_got("room:s7", b"hello")
    finally:
        server.stop()


async def test_a_cut_subscription_is_announced_once_every_channel_is_back() -> None:
    server = RedisServer().start()
    try:
        ns = namespace()
        async with started(server.url, ns) as (a, inbox_a), started(server.url, ns) as (b, _):
            calls: list[list[str]] = []
            announced = asyncio.Event()

            def resubscribed(topics: list[str]) -> None:
                calls.append(sorted(topics))
                announced.set()

            a.watch_resubscribe(resubscribed)
            for topic in ("room:x", "user:u", "presence:x"):
                await a.subscribe(topic)
            await a.unsubscribe("presence:x")
            await b.publish("room:x", b"before")
            await inbox_a.until_got("room:x", b"before")
            assert calls == []  # subscribing is not a resubscribe
            admin = aioredis.Redis.from_url(server.url)
            try:
                assert await admin.client_kill_filter(_type="pubsub") == 2
            finally:
                await admin.aclose()
            await asyncio.wait_for(announced.wait(), 10)
            assert calls == [["room:x", "user:u"]]  # what it needs, not the control channel
            # announced only once Redis confirmed them: a publish now is delivered
            await b.publish("room:x", b"after")
            await inbox_a.until_got("room:x", b"after")
            assert a.reconnects == 1 and len(calls) == 1
    finally:
        server.stop()


async def test_first_command_after_a_restart_works_on_a_broker_idle_meanwhile() -> None:
    server = RedisServer().start()
    try:
        async with started(server.url, namespace()) as (a, _):
            first = await a.position("room:r")  # the pooled command connection is open
            server.stop()
            server = RedisServer(port=server.port).start()  # a sent nothing meanwhile
            # its pooled connection is dead: replaced before anything is sent on it
            second = await a.position("room:r")
            assert second.offset == 0 and second.epoch != first.epoch  # Redis lost it
            assert await a.publish_recorded("room:r", b'{"type":"message"}') == (1, second.epoch)
    finally:
        server.stop()


# ----------------------------------------------------------- hubs over Redis


async def next_events(conn: Connection, n: int, within: float = 5.0) -> list[Event]:
    got: list[Event] = []
    async with asyncio.timeout(within):
        while len(got) < n:
            got += await conn.outbox.get(limit=n - len(got))
    return got


async def settle(*hubs: Hub) -> None:
    for hub in hubs:
        while hub._background:
            await asyncio.gather(*list(hub._background), return_exceptions=True)


async def test_two_hubs_deliver_each_message_once_to_each_member(
        redis_server: RedisServer) -> None:
    ns = namespace()
    hub1 = Hub(RedisBroker(redis_server.url, namespace=ns), Limits(), server_id="h1")
    hub2 = Hub(RedisBroker(redis_server.url, namespace=ns), Limits(), server_id="h2")
    await hub1.start()
    await hub2.start()
    try:
        alice = await hub1.open("alice")
        bob_1 = await hub1.open("bob")
        bob_2 = await hub2.open("bob")
        carol = await hub2.open("carol")
        members = [alice, bob_1, bob_2, carol]
        hubs = {alice: hub1, bob_1: hub1, bob_2: hub2, carol: hub2}
        for conn in members:
            reply = await hubs[conn].execute(conn, Join("r"))
            assert reply.type == "ack"  # from here on every publish reaches conn
            assert [e.type for e in conn.outbox.take()] == ["welcome"]
        await hub1.handle(alice, Publish("r", "one"))
        await hub2.handle(carol, Publish("r", "two"))
        for conn in members:
            got = [e.body for e in await next_events(conn, 2)]
            assert sorted(b["data"] for b in got) == ["one", "two"]
            assert all(b["type"] == "message" and b["room"] == "r" for b in got)
        # one room order for everybody
        # (and nothing else queued: a third message arrives right behind)
        await hub2.handle(bob_2, Publish("r", "three"))
        for conn in members:
            assert [e.body["data"] for e in await next_events(conn, 1)] == ["three"]
        # one Event per replica, shared by its local recipients
        await hub1.handle(alice, Publish("r", "four"))
        (e1,) = await next_events(alice, 1)
        (e2,) = await next_events(bob_1, 1)
        assert e1 is e2
        for conn in (bob_2, carol):
            await next_events(conn, 1)

        # a direct message reaches both of bob's connections, one per replica
        await hub2.handle(carol, Direct("bob", "psst"))
        for conn in (bob_1, bob_2):
            (ev,) = await next_events(conn, 1)
            assert (ev.type, ev.body["data"], ev.body["from"]) == ("direct", "psst", "carol")

        # presence counts span replicas
        await settle(hub1, hub2)
        state = await hub1.execute(alice, PresenceQuery(("carol", "bob", "zed")))
        assert state.body["users"] == {"carol": True, "bob": True, "zed": False}
        await hub2.close(carol)
        await settle(hub2)
        state = await hub1.execute(alice, PresenceQuery(("carol",)))
        assert state.body["users"] == {"carol": False}
        assert hub1.stats.deliveries + hub2.stats.deliveries == 4 * 4 + 2
    finally:
        await hub1.shutdown()
        await hub2.shutdown()


async def test_presence_is_counted_across_replicas(redis_server: RedisServer) -> None:
    ns = namespace()
    hub1 = Hub(RedisBroker(redis_server.url, namespace=ns), Limits(), server_id="h1")
    hub2 = Hub(RedisBroker(redis_server.url, namespace=ns), Limits(), server_id="h2")
    await hub1.start()
    await hub2.start()

    async def presence_until(conn: Connection, user: str, status: str) -> list[tuple[str, str]]:
        """Presence events up to a sentinel; every publish before it has reached Redis."""
        seen: list[tuple[str, str]] = []
        while (user, status) not in seen:
            seen += [(e.body["user"], e.body["status"]) for e in await next_events(conn, 1)
                     if e.type == "presence"]
        return seen

    try:
        watcher = await hub1.open("w")
        await hub1.execute(watcher, Join("r", presence=True))
        bob_1 = await hub1.open("bob")
        bob_2 = await hub2.open("bob")
        await hub1.execute(bob_1, Join("r"))
        await hub2.execute(bob_2, Join("r"))
        await settle(hub1, hub2)
        sentinel = await hub2.open("s1")
        await hub2.execute(sentinel, Join("r"))
        assert await presence_until(watcher, "s1", "joined") == [
            ("w", "joined"), ("bob", "joined"), ("s1", "joined")]

        await hub1.close(bob_1)  # bob is still in the room on the other replica
        await settle(hub1, hub2)
        await hub2.close(sentinel)
        assert await presence_until(watcher, "s1", "left") == [("s1", "left")]
        await hub2.close(bob_2)  # bob's last connection anywhere
        assert await presence_until(watcher, "bob", "left") == [("bob", "left")]
    finally:
        await hub1.shutdown()
        await hub2.shutdown()
