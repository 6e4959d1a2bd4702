"""Fault injection end to end, on every transport and server stack (tests/cluster.py
TARGETS): real server processes, real Redis.

- A replica is SIGKILLed mid-stream: its subscriber resumes on the other replica
  with its cursor and ends up with every published offset exactly once, in order.
- The replicas' Redis subscriber connections are cut (`CLIENT KILL TYPE pubsub`)
  mid-stream while publishes go on: every acked message still reaches the
  subscriber once, in order (the replica replays what it missed from history);
  with history off, each stream gets a `gap` with reason `disabled` instead.
- The Redis server is restarted mid-stream (a private one, no persistence): publishes
  during the outage fail with `unavailable` (never a silent drop, never a false ack);
  afterwards the same server processes carry publishes again and every acknowledged
  publish reaches the subscriber (docs/protocol.md 4.1 and 5).

  The subscriber's replica lost its Redis subscription too: once it is back, the
  replica replays what its clients missed from history (servers/core/heal.py); Redis
  kept nothing, so they first get a `gap` with reason `epoch` per stream, then the
  new epoch's messages from offset 1. A replica that sent Redis no command during
  the outage serves its next connect at once (no stale pooled connection).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis

from loadgen.aio import Client, CommandError, ServerClosed, connect
from servers.testing import RedisServer, ServerProcess
from tests.cluster import TARGETS, Target, server, start_all, stop_all, token, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

WAIT = 10.0
RATE = 200.0  # publishes per second, scheduled open-loop


@pytest.fixture(params=TARGETS, ids=str)
def target(request: pytest.FixtureRequest) -> Target:
    result: Target = request.param
    return result


@pytest.fixture
def transport(target: Target) -> str:
    return target.transport


def replicas(target: Target, redis_url: str, *extra: str,
             ) -> tuple[ServerProcess, ServerProcess]:
    """Two Redis replicas sharing a fresh namespace, started."""
    args = ["--broker", "redis", "--redis-url", redis_url,
            "--namespace", f"faults-{uuid.uuid4().hex[:8]}", *extra]
    procs = (server(target.transport, args, target.stack),
             server(target.transport, args, target.stack))
    start_all(procs)
    return procs


@pytest.fixture
async def clients(transport: str) -> AsyncIterator[Any]:
    """`await open(proc, user, **opts)` opens a client; all are closed at the end."""
    opened: list[Client] = []

    async def open_client(proc: ServerProcess, user: str, **opts: Any) -> Client:
        client = await connect(transport, proc.url, token(user), **opts)
        opened.append(client)
        return client

    yield open_client
    await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)


@dataclass
class Publisher:
    """Publishes `["n", k]` at a steady rate; keeps each outcome."""

    client: Client
    room: str
    acked: dict[int, int] = field(default_factory=dict)  # k -> offset of its ack
    failed: dict[int, CommandError] = field(default_factory=dict)  # k -> the error

    async def run(self, first: int, count: int, rate: float = RATE) -> None:
        """Publish `first` .. `first + count - 1`, message k due at t0 + (k - first) / rate
        (a slow ack delays the next one, it does not cancel it)."""
        t0 = time.monotonic()
        for k in range(first, first + count):
            delay = t0 + (k - first) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.publish(k)

    async def publish(self, k: int) -> None:
        cmd = {"type": "publish", "room": self.room, "data": ["n", k]}
        try:
            # Client.publish drops the ack; the request returns it, with the offset
            ack = await self.client._request(cmd)
        except CommandError as exc:
            self.failed[k] = exc
        else:
            self.acked[k] = ack["offset"]


class Collector:
    """A subscriber's `message` and `gap` events across its reconnects, in order."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.events: list[dict[str, Any]] = []

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "message"]

    def gaps(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "gap"]

    async def until(self, last: Any, timeout: float = WAIT) -> None:  # noqa: ASYNC109
        """Collect until the message whose data is `last` (ServerClosed if the server
        ends the connection first, TimeoutError if it does not come)."""
        async with asyncio.timeout(timeout):
            while not self.events or self.events[-1].get("data") != last:
                ev = await self.client.next_event(("message", "gap"), WAIT)
                self.events.append(ev.body)

    async def until_closed(self, timeout: float = WAIT) -> None:  # noqa: ASYNC109
        """Collect until the server side goes away."""
        with pytest.raises(ServerClosed):
            await self.until(object(), timeout)

    def data(self) -> list[Any]:
        return [m["data"] for m in self.messages]


@dataclass
class Stream:
    """A subscriber in a fresh room and a publisher sending to it, already running."""

    user: str
    base: int  # the room's offset when the subscriber joined
    sub: Client
    pub: Publisher
    got: Collector
    publishing: asyncio.Task[None]


async def start_stream(clients: Any, sub_on: ServerProcess, pub_on: ServerProcess,
                       count: int) -> Stream:
    """Subscriber on `sub_on`, publisher on `pub_on` publishing `count` messages."""
    room, user = unique("room"), unique("sub")
    sub = await clients(sub_on, user)
    base = (await sub.join(room))["offset"]
    pub_client = await clients(pub_on, unique("pub"))
    await pub_client.join(room)
    pub = Publisher(pub_client, room)
    publishing = asyncio.create_task(pub.run(0, count))
    return Stream(user, base, sub, pub, Collector(sub), publishing)


# ------------------------------------------------------------- replica killed


async def test_killed_replica_its_subscriber_resumes_on_the_other_with_no_loss(
        target: Target, redis_server: RedisServer, clients: Any) -> None:
    a, b = replicas(target, redis_server.url)
    try:
        count = 300
        st = await start_stream(clients, b, a, count)
        user, base, sub, pub, got, publishing = (
            st.user, st.base, st.sub, st.pub, st.got, st.publishing)
        await got.until(["n", 40])
        assert b.proc is not None
        b.proc.kill()  # SIGKILL mid-stream: no close frame, no going_away
        await got.until_closed()
        assert not publishing.done(), "raise the count: the stream ended before the kill"

        got.client = await clients(a, user, resume=sub.cursor)
        await publishing
        await got.until(["n", count - 1])
        await pub.publish(count)  # live after the catch-up
        await got.until(["n", count])

        assert pub.failed == {}
        assert list(pub.acked) == list(range(count + 1))
        offsets = [m["offset"] for m in got.messages]
        assert offsets == list(range(base + 1, base + count + 2))  # no hole, no duplicate
        assert [pub.acked[d[1]] for d in got.data()] == offsets
        assert got.data() == [["n", k] for k in range(count + 1)]
        assert len({m["epoch"] for m in got.messages}) == 1
        assert got.gaps() == [] and got.client.take_events("gap") == []
    finally:
        stop_all((a, b))


# ------------------------------------------------------------- Redis restarted


@pytest.fixture
def own_redis() -> Iterator[list[RedisServer]]:
    """A private Redis this test may stop and restart (the list holds the live one)."""
    holder = [RedisServer().start()]
    try:
        yield holder
    finally:
        holder[0].stop()


async def test_redis_restart_fails_publishes_loudly_then_recovers_without_loss(
        target: Target, own_redis: list[RedisServer], clients: Any) -> None:
    redis = own_redis[0]
    a, b = replicas(target, redis.url)
    try:
        room, user = unique("room"), unique("sub")
        sub = await clients(b, user)
        await sub.join(room)
        pub_client = await clients(a, unique("pub"))
        await pub_client.join(room)
        pub = Publisher(pub_client, room)
        got = Collector(sub)
        await pub.run(0, 20)
        await got.until(["n", 19])
        assert pub.failed == {} and len(pub.acked) == 20
        old_epoch = got.messages[-1]["epoch"]

        redis.stop()
        started = time.monotonic()
        await pub.run(20, 10, rate=20)  # ~0.5 s of publishes into the outage
        assert sorted(pub.failed) == list(range(20, 30)), "a publish succeeded while Redis was down"
        for exc in pub.failed.values():
            assert exc.code == "unavailable", exc
            if target.transport in ("sse", "longpoll"):
                assert exc.status == 503
        assert time.monotonic() - started < 2 * 3.0 + 5  # each failed within the op timeout

        own_redis[0] = redis = RedisServer(port=redis.port).start()  # same port, empty
        # the same server processes, not restarted: publish at a steady rate for 2 s
        # while the replicas reconnect; each publish is acked or refused, never dropped
        await pub.run(30, 400)
        recovered = [k for k in pub.acked if k >= 30]
        assert recovered, "no publish succeeded after Redis came back"
        assert all(pub.failed[k].code == "unavailable" for k in pub.failed)

        last = max(pub.acked)
        await got.until(["n", last])  # on the same connection: nothing closed it

        # the same processes serve new rooms too (a fresh SUBSCRIBE on the new connection)
        assert a.proc is not None and b.proc is not None
        assert a.proc.poll() is None and b.proc.poll() is None
        # B has sent Redis no command since the restart: its pooled connection is dead,
        # and is replaced before the connect's first command goes out (no refusal)
        newcomer = await clients(b, unique("new"))
        fresh = unique("room")
        await newcomer.join(fresh)
        await pub_client.join(fresh)
        await pub_client.publish(fresh, "fresh")
        assert (await newcomer.next_event("message", WAIT))["data"] == "fresh"

        received = got.data()
        assert len(received) == len(set(map(tuple, received)))  # no duplicate
        assert [d for d in received if d[1] in pub.failed] == []  # refused = not carried out
        # the room's new life (Redis kept nothing): a new epoch, offsets from 1
        after = sorted((pub.acked[k], k) for k in recovered)
        assert [offset for offset, _ in after] == list(range(1, len(after) + 1))
        new_epoch = got.messages[-1]["epoch"]
        assert new_epoch != old_epoch
        # the room's stream as the subscriber saw it: the old life, the gap saying it
        # ended at offset 20, then every acked message of the new life, once, in order
        stream = [e for e in got.events if e.get("room") == room]
        assert stream[:20] == got.messages[:20]
        assert [m["data"] for m in stream[:20]] == [["n", k] for k in range(20)]
        assert [m["offset"] for m in stream[:20]] == list(range(1, 21))
        assert stream[20] == {"type": "gap", "room": room, "from": 20, "reason": "epoch",
                              "offset": 0, "epoch": new_epoch}
        new = stream[21:]
        assert [m["type"] for m in new] == ["message"] * len(after)
        assert [(m["offset"], m["epoch"]) for m in new] == [(o, new_epoch) for o, _ in after]
        assert [m["data"] for m in new] == [["n", k] for _, k in after]  # nothing acked lost
        # the inbox lost its life too (nothing was in it): one gap to the new epoch's start
        (inbox_gap,) = [g for g in got.gaps() if g.get("inbox")]
        assert inbox_gap["from"] == 0 and inbox_gap["reason"] == "epoch"
        assert inbox_gap["offset"] == 0 and inbox_gap["epoch"] != old_epoch
        assert len(got.gaps()) == 2
        # the client's cursor followed the new epoch
        assert got.client.cursor["rooms"][room] == [after[-1][0], new_epoch]
    finally:
        stop_all((a, b))


# ------------------------------------------------------- subscriptions cut


async def kill_subscribers(redis_url: str) -> int:
    """Cut every pub/sub connection of this Redis (both replicas'); how many."""
    admin = aioredis.Redis.from_url(redis_url)
    try:
        return await admin.client_kill_filter(_type="pubsub")
    finally:
        await admin.aclose()


async def test_cut_subscriptions_are_healed_from_history_without_loss(
        target: Target, own_redis: list[RedisServer], clients: Any) -> None:
    redis = own_redis[0]
    a, b = replicas(target, redis.url)
    try:
        count = 400
        st = await start_stream(clients, b, a, count)
        base, pub, got, publishing = st.base, st.pub, st.got, st.publishing
        for k in (30, 130, 230):  # three cuts, each while publishes go on
            await got.until(["n", k])
            assert await kill_subscribers(redis.url) == 2  # one per replica
        assert not publishing.done(), "raise the count: the stream ended before the cuts"
        await publishing
        await got.until(["n", count - 1])

        assert pub.failed == {}  # the command connections were not touched
        offsets = [m["offset"] for m in got.messages]
        assert offsets == list(range(base + 1, base + count + 1))  # no hole, no duplicate
        assert got.data() == [["n", k] for k in range(count)]
        assert [pub.acked[d[1]] for d in got.data()] == offsets
        assert got.gaps() == [] and got.client.take_events("gap") == []
    finally:
        stop_all((a, b))


async def test_cut_subscriptions_with_history_off_give_disabled_gaps(
        target: Target, own_redis: list[RedisServer], clients: Any) -> None:
    redis = own_redis[0]
    a, b = replicas(target, redis.url, "--history-size", "0")
    try:
        room = unique("room")
        sub = await clients(b, unique("sub"))
        await sub.join(room)
        pub_client = await clients(a, unique("pub"))
        await pub_client.join(room)
        assert await kill_subscribers(redis.url) == 2
        # nothing can be replayed: each stream of the member says so, once
        gaps = [(await sub.next_event("gap", WAIT)).body for _ in range(2)]
        assert sorted(gaps, key=lambda g: "room" in g) == [
            {"type": "gap", "inbox": True, "from": 0, "reason": "disabled"},
            {"type": "gap", "room": room, "from": 0, "reason": "disabled"},
        ]
        # the gaps came once the replica had every channel back: live again
        await pub_client.publish(room, "after")
        assert (await sub.next_event("message", WAIT))["data"] == "after"
        assert sub.take_events("gap") == []
    finally:
        stop_all((a, b))
