"""Offsets, history and catch-up: the position suffix, the cursor, both brokers' history
semantics (Redis against the private redis-server), and the hub's catch-up at the seam."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import orjson
import pytest
import redis.asyncio as aioredis

from servers.core.codec import parse_command
from servers.core.connection import Connection
from servers.core.cursor import (
    Cursor,
    CursorTracker,
    RoomCursor,
    decode_cursor,
    encode_cursor,
)
from servers.core.errors import BrokerUnavailable, ErrorCode, ProtocolError
from servers.core.hub import Hub
from servers.core.streams import position_of, splice
from servers.core.types import (
    Broker,
    Direct,
    History,
    Join,
    Limits,
    Position,
    Publish,
    Retention,
)
from servers.fanout.memory import MemoryBroker
from servers.fanout.redis import RedisBroker
from servers.fanout.redis_history import stream_keys
from servers.testing import RedisServer

pytestmark = pytest.mark.timeout(60)

LIMITS = Limits()

# ------------------------------------------------------------ position suffix


def test_splice_and_read_back() -> None:
    raw = splice(b'{"type":"message","data":{"offset":1,"epoch":"x"}}', Position(42, "ab12"))
    assert orjson.loads(raw) == {"type": "message", "data": {"offset": 1, "epoch": "x"},
                                 "offset": 42, "epoch": "ab12"}
    assert position_of(raw) == Position(42, "ab12")
    # an unrecorded event whose data merely looks like a position has none
    assert position_of(b'{"type":"message","data":{"offset":1,"epoch":"x"},"ts":5}') is None
    assert position_of(b"{}") is None


# --------------------------------------------------------------------- cursor


def test_cursor_round_trip() -> None:
    obj = {"inbox": [3, "e1"], "rooms": {"a": [5, "e2"], "b.c": [0, "", True]}}
    raw = encode_cursor(obj)
    assert "=" not in raw and "+" not in raw and "/" not in raw
    assert decode_cursor(raw, LIMITS) == Cursor(
        Position(3, "e1"), (RoomCursor("a", Position(5, "e2")),
                            RoomCursor("b.c", Position(0, ""), presence=True)))
    assert decode_cursor(encode_cursor({}), LIMITS) == Cursor()


@pytest.mark.parametrize("raw, fragment", [
    ("%%%", "base64url"),
    (base64.urlsafe_b64encode(b"not json").decode(), "base64url"),
    (encode_cursor([1]), "JSON object"),  # type: ignore[arg-type]
    (encode_cursor({"inbox": [-1, "e"]}), "'inbox'"),
    (encode_cursor({"inbox": [True, "e"]}), "'inbox'"),
    (encode_cursor({"inbox": [1, 2]}), "'inbox'"),
    (encode_cursor({"inbox": [1, "e" * 65]}), "'inbox'"),
    (encode_cursor({"rooms": [1]}), "'rooms'"),
    (encode_cursor({"rooms": {"a": {"offset": 1}}}), "room 'a'"),
    (encode_cursor({"rooms": {"bad room": [1, "e"]}}), "must match"),
    (encode_cursor({"rooms": {f"r{i}": [0, ""] for i in range(3)}}), "at most 2"),
    ("x" * 300, "exceeds"),
])
def test_bad_cursors_are_refused_with_bad_cursor(raw: str, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_cursor(raw, Limits(max_rooms=2, max_frame_bytes=256))
    assert info.value.code is ErrorCode.BAD_CURSOR
    assert fragment in info.value.message


def test_tracker_follows_streams() -> None:
    t = CursorTracker()
    assert t.observe({"type": "welcome", "inbox": {"offset": 4, "epoch": "u"}})
    # a join's missed and live events arrive before its ack: tracked from the first one
    assert t.observe({"type": "message", "room": "r", "offset": 7, "epoch": "e"})
    t.joined("r", {"type": "ack", "offset": 6, "epoch": "e"})
    assert t.cursor() == {"inbox": [4, "u"], "rooms": {"r": [7, "e"]}}
    assert not t.observe({"type": "message", "room": "r", "offset": 5, "epoch": "e"})
    assert t.observe({"type": "message", "room": "r", "offset": 1, "epoch": "f"})  # new epoch
    assert t.observe({"type": "direct", "offset": 5, "epoch": "u"})
    assert t.observe({"type": "gap", "inbox": True, "from": 5, "offset": 9, "epoch": "v"})
    assert not t.observe({"type": "gap", "room": "r", "from": 1, "reason": "disabled"})
    assert not t.observe({"type": "message", "room": "q"})  # no offset: history off
    t.joined("q", {"type": "ack"}, presence=True)
    assert t.cursor() == {"inbox": [9, "v"], "rooms": {"r": [1, "f"], "q": [0, "", True]}}
    assert t.cursor(rooms={"q", "gone"}) == {"inbox": [9, "v"], "rooms": {"q": [0, "", True]}}
    t.left("q")
    resumed = CursorTracker(orjson.loads(base64.urlsafe_b64decode(t.encode() + "==")))
    assert resumed.cursor() == {"inbox": [9, "v"], "rooms": {"r": [1, "f"]}}
    # resumed: the welcome's inbox position does not replace the cursor's
    assert not resumed.observe({"type": "welcome", "inbox": {"offset": 20, "epoch": "v"}})
    decoded = CursorTracker.from_cursor(decode_cursor(t.encode(), LIMITS))
    assert decoded.cursor() == resumed.cursor()
    assert CursorTracker.from_cursor(None).cursor() == {"rooms": {}}


def test_join_since_is_validated() -> None:
    cmd = parse_command(b'{"type":"join","room":"r","since":{"offset":5,"epoch":"ab"}}', LIMITS)
    assert cmd == Join("r", since=Position(5, "ab"))
    for since in ('{"offset":-1,"epoch":"a"}', '{"offset":1}', '[1,"a"]', '{"offset":true,'
                  '"epoch":"a"}', '{"offset":1,"epoch":3}'):
        with pytest.raises(ProtocolError) as info:
            parse_command(f'{{"type":"join","room":"r","id":1,"since":{since}}}', LIMITS)
        assert (info.value.code, info.value.ref) == (ErrorCode.BAD_FIELD, 1)


# ------------------------------------------------------------ broker history


class Received:
    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self.changed = asyncio.Event()

    def __call__(self, topic: str, payload: bytes) -> None:
        self.items.append((topic, payload))
        self.changed.set()

    async def until(self, n: int) -> None:
        async with asyncio.timeout(5):
            while len(self.items) < n:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture(params=["memory", "redis"])
async def make_broker(request: pytest.FixtureRequest, redis_server: RedisServer,
                      ) -> AsyncIterator[Callable[[Retention], Any]]:
    started: list[Broker] = []

    async def make(retention: Retention) -> tuple[Broker, Received]:
        broker: Broker
        if request.param == "memory":
            broker = MemoryBroker()
        else:
            broker = RedisBroker(redis_server.url, namespace="h" + uuid.uuid4().hex[:10])
        got = Received()
        await broker.start(got, retention)
        started.append(broker)
        return broker, got

    yield make
    for broker in started:
        await broker.close()


def event(i: int) -> bytes:
    return orjson.dumps({"type": "message", "room": "r", "data": i})


async def test_publish_recorded_assigns_offsets_records_and_delivers(
        make_broker: Callable[[Retention], Any]) -> None:
    broker, got = await make_broker(Retention(100, 60))
    start = await broker.position("room:r")
    assert start.offset == 0 and start.epoch
    assert await broker.position("room:r") == start  # the epoch stays
    await broker.subscribe("room:r")
    positions = [await broker.publish_recorded("room:r", event(i)) for i in range(5)]
    assert positions == [Position(i, start.epoch) for i in range(1, 6)]
    await got.until(5)
    delivered = [p for _, p in got.items]
    assert [orjson.loads(p) for p in delivered] == [
        {"type": "message", "room": "r", "data": i, "offset": i + 1, "epoch": start.epoch}
        for i in range(5)]
    assert await broker.position("room:r") == Position(5, start.epoch)
    other = await broker.publish_recorded("room:other", event(0))  # streams are apart
    assert other.offset == 1
    hist = await broker.history("room:r", 2, start.epoch, 100)
    assert hist == History(delivered[2:], Position(5, start.epoch))  # recorded == published
    assert await broker.history("room:r", 5, start.epoch, 100) == History(
        [], Position(5, start.epoch))


async def test_history_gaps(make_broker: Callable[[Retention], Any]) -> None:
    broker, _ = await make_broker(Retention(4, 60))
    for i in range(10):
        pos = await broker.publish_recorded("room:r", event(i))
    assert pos.offset == 10
    hist = await broker.history("room:r", 6, pos.epoch, 100)
    assert [orjson.loads(e)["data"] for e in hist.entries] == [6, 7, 8, 9] and hist.gap is None
    # more than the retention size behind: trimmed, whatever Redis's approximate trim kept
    assert await broker.history("room:r", 5, pos.epoch, 100) == History([], pos, "trimmed")
    # more than the caller's limit behind: trimmed too
    assert await broker.history("room:r", 7, pos.epoch, 2) == History([], pos, "trimmed")
    # another epoch, or a position ahead of the stream: not this life of the stream
    assert await broker.history("room:r", 9, "other", 100) == History([], pos, "epoch")
    assert await broker.history("room:r", 11, pos.epoch, 100) == History([], pos, "epoch")
    # a stream never published to: its own epoch, offset 0
    fresh = await broker.history("room:new", 3, pos.epoch, 100)
    assert fresh.gap == "epoch" and fresh.position.offset == 0


async def test_history_expires_by_age(make_broker: Callable[[Retention], Any]) -> None:
    broker, _ = await make_broker(Retention(100, 0.2))
    pos = await broker.publish_recorded("room:r", event(0))
    assert (await broker.history("room:r", 0, pos.epoch, 100)).gap is None
    await asyncio.sleep(0.35)  # the retention age itself is what is tested
    pos = await broker.publish_recorded("room:r", event(1))
    assert (await broker.history("room:r", 0, pos.epoch, 100)).gap == "trimmed"
    assert len((await broker.history("room:r", 1, pos.epoch, 100)).entries) == 1


# ------------------------------------------------------------- Redis specifics


@pytest.fixture
async def redis_pair(redis_server: RedisServer,
                     ) -> AsyncIterator[tuple[RedisBroker, aioredis.Redis, str]]:
    ns = "h" + uuid.uuid4().hex[:10]
    broker = RedisBroker(redis_server.url, namespace=ns)
    await broker.start(Received(), Retention(100, 60))
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        yield broker, client, ns
    finally:
        await broker.close()
        await client.aclose()


async def test_redis_keys_share_a_hash_tag_and_expire(
        redis_pair: tuple[RedisBroker, aioredis.Redis, str]) -> None:
    broker, client, ns = redis_pair
    first = await broker.publish_recorded("room:r", event(0))
    pos, hist = stream_keys(ns + ":", "room:r")
    assert (pos, hist) == (f"{ns}:{{room:r}}:pos", f"{ns}:{{room:r}}:hist")
    assert await client.get(pos) == f"{first.epoch}:1".encode()
    assert await client.xlen(hist) == 1
    assert 0 < await client.pttl(hist) <= 60_000
    assert await client.ttl(pos) > 60


async def test_redis_lost_epoch_restarts_the_stream(
        redis_pair: tuple[RedisBroker, aioredis.Redis, str]) -> None:
    broker, client, ns = redis_pair
    for i in range(3):
        old = await broker.publish_recorded("room:r", event(i))
    await client.delete(stream_keys(ns + ":", "room:r")[0])  # as if Redis lost it
    new = await broker.publish_recorded("room:r", event(9))
    assert new.offset == 1 and new.epoch != old.epoch  # old seq and history are dropped
    assert (await broker.history("room:r", 2, old.epoch, 100)).gap == "epoch"
    assert len((await broker.history("room:r", 0, new.epoch, 100)).entries) == 1


async def test_redis_scripts_survive_a_script_cache_flush(
        redis_pair: tuple[RedisBroker, aioredis.Redis, str]) -> None:
    broker, client, _ = redis_pair
    first = await broker.publish_recorded("room:r", event(0))
    await client.script_flush()  # what a Redis restart does to EVALSHA
    assert await broker.publish_recorded("room:r", event(1)) == Position(2, first.epoch)
    assert len((await broker.history("room:r", 0, first.epoch, 100)).entries) == 2


async def test_redis_failed_publish_changes_nothing(
        redis_pair: tuple[RedisBroker, aioredis.Redis, str]) -> None:
    broker, client, ns = redis_pair
    first = await broker.publish_recorded("room:r", event(0))
    pos, hist = stream_keys(ns + ":", "room:r")
    await client.delete(hist)
    await client.set(hist, "not a stream")  # XADD fails: WRONGTYPE
    with pytest.raises(BrokerUnavailable):
        await broker.publish_recorded("room:r", event(1))
    assert await client.get(pos) == f"{first.epoch}:1".encode()  # no offset was spent
    assert await broker.position("room:r") == first


async def test_redis_history_detects_a_hole(
        redis_pair: tuple[RedisBroker, aioredis.Redis, str]) -> None:
    broker, client, ns = redis_pair
    for i in range(3):
        pos = await broker.publish_recorded("room:r", event(i))
    await client.set(stream_keys(ns + ":", "room:r")[0], f"{pos.epoch}:5")  # 4, 5: no history
    hist = await broker.history("room:r", 2, pos.epoch, 100)
    assert hist.gap == "trimmed" and hist.position == Position(5, pos.epoch)


# ------------------------------------------------------------------ hub catch-up


class GatedBroker(MemoryBroker):
    """history() waits for `gate`, before or after taking its snapshot."""

    def __init__(self, snapshot_first: bool) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.reading = asyncio.Event()
        self.snapshot_first = snapshot_first
        self.fail = False

    async def history(self, topic: str, after: int, epoch: str, limit: int) -> History:
        self.reading.set()
        if self.snapshot_first:
            hist = await super().history(topic, after, epoch, limit)
            await self.gate.wait()
            return hist
        await self.gate.wait()
        if self.fail:
            raise BrokerUnavailable("down (test)")
        return await super().history(topic, after, epoch, limit)


async def hub_with(broker: MemoryBroker | None = None, **limits: Any) -> Hub:
    hub = Hub(broker or MemoryBroker(), Limits(**limits), server_id="t")
    await hub.start()
    return hub


def events(conn: Connection, *kinds: str) -> list[dict[str, Any]]:
    return [e.body for e in conn.outbox.take() if not kinds or e.type in kinds]


async def member(hub: Hub, user: str, room: str) -> Connection:
    conn = await hub.open(user)
    await hub.handle(conn, Join(room))
    conn.outbox.take()
    return conn


@pytest.mark.parametrize("snapshot_first", [True, False])
async def test_resume_seam_has_no_hole_and_no_duplicate(snapshot_first: bool) -> None:
    broker = GatedBroker(snapshot_first)
    hub = await hub_with(broker)
    try:
        alice = await member(hub, "alice", "r")
        for i in range(5):
            await hub.handle(alice, Publish("r", i))
        epoch = broker.epoch
        bob = await hub.open("bob")
        join = asyncio.create_task(hub.execute(bob, Join("r", since=Position(2, epoch))))
        await broker.reading.wait()
        for i in range(5, 8):  # published while bob's history is being read
            await hub.handle(alice, Publish("r", i))
        broker.gate.set()
        reply = await join
        # the ack says where the history read stopped; the rest came live
        assert reply.body == {"type": "ack", "offset": 5 if snapshot_first else 8, "epoch": epoch}
        await hub.handle(alice, Publish("r", 8))
        got = events(bob, "message")
        assert [m["offset"] for m in got] == [3, 4, 5, 6, 7, 8, 9]
        assert [m["data"] for m in got] == [2, 3, 4, 5, 6, 7, 8]
    finally:
        await hub.shutdown()


async def test_join_without_since_acks_the_position_and_gets_what_follows() -> None:
    hub = await hub_with()
    try:
        alice = await member(hub, "alice", "r")
        await hub.handle(alice, Publish("r", "before"))
        bob = await hub.open("bob")
        assert (await hub.execute(bob, Join("r"))).body["offset"] == 1
        await hub.handle(alice, Publish("r", "after"))
        assert [m["data"] for m in events(bob, "message")] == ["after"]
        # joining again is a no-op whose ack still says where the room is
        assert (await hub.execute(bob, Join("r", since=Position(0, "x")))).body["offset"] == 2
        assert events(bob) == []
    finally:
        await hub.shutdown()


async def test_join_gaps_trimmed_and_epoch() -> None:
    hub = await hub_with(history_size=3)
    try:
        alice = await member(hub, "alice", "r")
        for i in range(6):
            await hub.handle(alice, Publish("r", i))
        epoch = cast(MemoryBroker, hub.broker).epoch
        bob = await hub.open("bob")
        await hub.handle(bob, Join("r", since=Position(1, epoch)))
        gap = {"type": "gap", "room": "r", "from": 1, "reason": "trimmed", "offset": 6,
               "epoch": epoch}
        assert events(bob, "gap", "message") == [gap]
        carol = await hub.open("carol")
        await hub.handle(carol, Join("r", since=Position(4, "gone")))
        assert events(carol, "gap", "message") == [{**gap, "from": 4, "reason": "epoch"}]
        await hub.handle(alice, Publish("r", "live"))
        assert [m["data"] for m in events(bob)] == ["live"]  # a gap, then the live stream
    finally:
        await hub.shutdown()


async def test_open_with_a_cursor_recovers_the_inbox_and_rooms() -> None:
    hub = await hub_with(max_rooms=3)
    try:
        alice = await member(hub, "alice", "r")
        bob = await member(hub, "bob", "r")
        epoch = cast(MemoryBroker, hub.broker).epoch
        await hub.close(bob)
        for i in range(3):
            await hub.handle(alice, Publish("r", i))
            await hub.handle(alice, Direct("bob", f"d{i}"))
        cursor = Cursor(Position(1, epoch), (RoomCursor("r", Position(1, epoch)),
                                              RoomCursor("s", Position(0, epoch))))
        bob = await hub.open("bob", cursor=cursor)
        got = events(bob)
        assert got[0]["type"] == "welcome" and got[0]["inbox"] == {"offset": 3, "epoch": epoch}
        assert [(e["type"], e["data"]) for e in got[1:]] == [
            ("direct", "d1"), ("direct", "d2"), ("message", 1), ("message", 2)]
        assert bob.rooms == {"r", "s"}
        too_many = Cursor(None, tuple(RoomCursor(f"r{i}", Position(0, "")) for i in range(4)))
        with pytest.raises(ProtocolError) as info:
            await hub.open("bob", cursor=too_many)
        assert info.value.code is ErrorCode.BAD_CURSOR
        assert hub.connection_count == 2
    finally:
        await hub.shutdown()


async def test_history_off_means_no_offsets_and_gaps_on_resume() -> None:
    hub = await hub_with(history_size=0)
    try:
        alice = await hub.open("alice")
        (welcome,) = events(alice)
        assert "inbox" not in welcome
        assert (await hub.execute(alice, Join("r"))).body == {"type": "ack"}
        assert (await hub.execute(alice, Publish("r", 1))).body == {"type": "ack"}
        assert "offset" not in events(alice, "message")[0]
        bob = await hub.open("bob", cursor=Cursor(Position(3, "e"),
                                                  (RoomCursor("r", Position(5, "e")),)))
        assert events(bob)[1:] == [
            {"type": "gap", "inbox": True, "from": 3, "reason": "disabled"},
            {"type": "gap", "room": "r", "from": 5, "reason": "disabled"}]
        await hub.handle(alice, Publish("r", 2))
        assert [m["data"] for m in events(bob, "message")] == [2]  # the room was joined again
    finally:
        await hub.shutdown()


async def test_a_failed_or_abandoned_catch_up_leaves_nothing_behind() -> None:
    broker = GatedBroker(snapshot_first=False)
    hub = await hub_with(broker)
    try:
        alice = await hub.open("alice")
        broker.fail = True
        join = asyncio.create_task(hub.execute(alice, Join("r", since=Position(0, "e"))))
        await broker.reading.wait()
        broker.gate.set()
        with pytest.raises(ProtocolError) as info:
            await join
        assert info.value.code is ErrorCode.UNAVAILABLE and alice.rooms == set()
        assert "room:r" not in hub._topics.subs and not hub._catchup.holding
        broker.fail, broker.reading = False, asyncio.Event()
        broker.gate.clear()
        join = asyncio.create_task(hub.execute(alice, Join("r", since=Position(0, "e"))))
        await broker.reading.wait()
        await hub.close(alice)  # closed while catching up
        broker.gate.set()
        await join
        assert "room:r" not in hub._topics.subs and not hub._catchup.holding
    finally:
        await hub.shutdown()


async def test_live_events_held_beyond_the_outbox_limit_drop_the_catching_up_client() -> None:
    broker = GatedBroker(snapshot_first=False)
    hub = await hub_with(broker, outbox_max_events=3)
    try:
        alice = await member(hub, "alice", "r")
        bob = await hub.open("bob")
        join = asyncio.create_task(hub.execute(bob, Join("r", since=Position(0, broker.epoch))))
        await broker.reading.wait()
        for i in range(4):
            await hub.handle(alice, Publish("r", i))
            alice.outbox.take()
        broker.gate.set()
        await join
        assert bob.outbox.close_reason is not None and bob.outbox.close_reason.name == (
            "SLOW_CONSUMER")
        assert hub.stats.slow_consumers == 1
    finally:
        await hub.shutdown()
