"""Fault injection end to end, on every transport: real server processes, real Redis.

- A replica is SIGKILLed mid-stream: its subscriber resumes on the other replica
  with its cursor and ends up with every published offset exactly once, in order.
- The Redis server is restarted mid-stream (a private one, no persistence): publishes
  during the outage fail with `unavailable` (never a silent drop, never a false ack);
  afterwards the same server processes carry publishes again and every acknowledged
  publish reaches the subscriber (docs/protocol.md 4.1 and 5).

Known server bug, pinned down by the Redis test (it xfails on exactly this, and fails
on any other loss): after Redis comes back, the publishing replica's command
connection reconnects at once and acks publishes, while the subscriber's replica
re-subscribes only after its reconnect backoff (up to 2 s). The messages published
in between are in the new epoch's history but never reach that replica's live
clients, and nothing tells them (no gap, no close): the first new-epoch offset they
see is not 1. The fix belongs to servers/fanout/redis.py (signal the re-subscribe)
and servers/core/hub.py (replay each local stream from history after it).

A second, milder one: a replica that sent Redis no command during the outage keeps
a dead pooled connection, and its first command after Redis is back fails
(`unavailable`, a refused connect) although Redis is up; the test allows exactly
that one refusal.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from loadgen.aio import TRANSPORTS, Client, CommandError, ServerClosed, connect
from servers.testing import RedisServer, ServerProcess
from tests.cluster import server, start_all, stop_all, token, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

WAIT = 10.0
RATE = 200.0  # publishes per second, scheduled open-loop


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def replicas(transport: str, redis_url: str) -> tuple[ServerProcess, ServerProcess]:
    """Two Redis replicas sharing a fresh namespace, started."""
    args = ["--broker", "redis", "--redis-url", redis_url,
            "--namespace", f"faults-{uuid.uuid4().hex[:8]}"]
    procs = (server(transport, args), server(transport, args))
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
    """A subscriber's `message` events across its reconnects."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.messages: list[dict[str, Any]] = []

    async def until(self, last: Any, timeout: float = WAIT) -> None:  # noqa: ASYNC109
        """Collect until the message whose data is `last` (ServerClosed if the server
        ends the connection first, TimeoutError if it does not come)."""
        async with asyncio.timeout(timeout):
            while not self.messages or self.messages[-1]["data"] != last:
                self.messages.append((await self.client.next_event("message", WAIT)).body)

    async def until_closed(self, timeout: float = WAIT) -> None:  # noqa: ASYNC109
        """Collect until the server side goes away."""
        with pytest.raises(ServerClosed):
            await self.until(object(), timeout)

    def data(self) -> list[Any]:
        return [m["data"] for m in self.messages]


# ------------------------------------------------------------- replica killed


async def test_killed_replica_its_subscriber_resumes_on_the_other_with_no_loss(
        transport: str, redis_server: RedisServer, clients: Any) -> None:
    a, b = replicas(transport, redis_server.url)
    try:
        room, user = unique("room"), unique("sub")
        sub = await clients(b, user)
        base = (await sub.join(room))["offset"]
        pub_client = await clients(a, unique("pub"))
        await pub_client.join(room)
        pub = Publisher(pub_client, room)
        count = 300
        publishing = asyncio.create_task(pub.run(0, count))
        got = Collector(sub)
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
        assert got.client.take_events("gap") == []
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
        transport: str, own_redis: list[RedisServer], clients: Any) -> None:
    redis = own_redis[0]
    a, b = replicas(transport, redis.url)
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
            if transport in ("sse", "longpoll"):
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
        try:
            await got.until(["n", last])
        except ServerClosed:  # the replica dropped it: resume, as a client would
            got.client = await clients(b, user, resume=got.client.cursor)
            await got.until(["n", last])

        # the same processes serve new rooms too (a fresh SUBSCRIBE on the new connection)
        assert a.proc is not None and b.proc is not None
        assert a.proc.poll() is None and b.proc.poll() is None
        # B has sent Redis no command since the restart: its first one goes out on the
        # dead connection and fails (a second server bug, see the module docstring);
        # the connect is refused with `unavailable`, and the next one works
        refusals: list[ServerClosed] = []
        for _ in range(3):
            try:
                newcomer = await clients(b, unique("new"))
                break
            except ServerClosed as exc:
                refusals.append(exc)
        assert len(refusals) <= 1, refusals
        for refused in refusals:
            assert refused.code == 1011 and "unavailable" in refused.reason, refused
            assert refused.status == {"sse": 503, "longpoll": 503, "grpc": "UNAVAILABLE"}.get(
                transport), refused
        fresh = unique("room")
        await newcomer.join(fresh)
        await pub_client.join(fresh)
        await pub_client.publish(fresh, "fresh")
        assert (await newcomer.next_event("message", WAIT))["data"] == "fresh"

        received = got.data()
        assert len(received) == len(set(map(tuple, received)))  # no duplicate
        assert [d for d in received if d[1] in pub.failed] == []  # refused = not carried out
        assert [d for d in received if d[1] < 20] == [["n", k] for k in range(20)]
        # the room's new life (Redis kept nothing): a new epoch, offsets from 1
        after = sorted((pub.acked[k], k) for k in recovered)
        assert [offset for offset, _ in after] == list(range(1, len(after) + 1))
        new = [m for m in got.messages if m["epoch"] != old_epoch]
        assert new, "nothing published after the restart reached the subscriber"
        assert [m["offset"] for m in new] == list(range(new[0]["offset"], after[-1][0] + 1))
        assert [pub.acked[m["data"][1]] for m in new] == [m["offset"] for m in new]
        missing = [k for _, k in after if ["n", k] not in received]
        if missing:
            # Known server bug (see the module docstring): the offsets the publishing
            # replica acked before the subscriber's replica re-subscribed to Redis are
            # lost to its live clients, silently. Anything else is a new failure.
            assert missing == [k for _, k in after[:len(missing)]], missing
            assert new[0]["offset"] == len(missing) + 1
            pytest.xfail(f"{len(missing)} acknowledged publishes (new-epoch offsets "
                         f"1..{len(missing)}) lost while the replica re-subscribed")
    finally:
        stop_all((a, b))
