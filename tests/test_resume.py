"""Resume end to end on all four transports and both server stacks (tests/cluster.py
TARGETS): real server processes, a private Redis, the loadgen.aio clients and their
cursors (docs/protocol.md, "Offsets and resume").

Per target, five servers started once: two Redis replicas sharing a namespace,
one Redis server with a 10-message history, one on the memory broker, and one with
history off.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis

from loadgen.aio import Client, ServerClosed, connect
from servers.fanout.redis_history import stream_keys
from servers.testing import RedisServer, ServerProcess
from tests.cluster import (
    MAX_ROOMS,
    TARGETS,
    Target,
    server,
    start_all,
    stop_all,
    token,
    unique,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

WAIT = 5.0
SMALL_HISTORY = 10


@dataclass
class Servers:
    transport: str
    redis_url: str
    namespace: str
    replicas: tuple[ServerProcess, ServerProcess]  # Redis, default history, one namespace
    small: ServerProcess  # Redis, --history-size 10
    memory: ServerProcess  # memory broker
    off: ServerProcess  # memory broker, --history-size 0


@pytest.fixture(scope="module", params=TARGETS, ids=str)
def servers(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Servers]:
    target: Target = request.param
    transport, stack = target.transport, target.stack
    ns = f"resume-{transport}-{uuid.uuid4().hex[:8]}"
    redis_args = ["--broker", "redis", "--redis-url", redis_server.url]
    procs = (
        server(transport, [*redis_args, "--namespace", ns], stack),
        server(transport, [*redis_args, "--namespace", ns], stack),
        server(transport, [*redis_args, "--namespace", ns + "-small",
                           "--history-size", str(SMALL_HISTORY)], stack),
        server(transport, ["--broker", "memory"], stack),
        server(transport, ["--broker", "memory", "--history-size", "0"], stack),
    )
    start_all(procs)
    try:
        yield Servers(transport, redis_server.url, ns, (procs[0], procs[1]), *procs[2:])
    finally:
        stop_all(procs)


@pytest.fixture
async def clients(servers: Servers) -> AsyncIterator[Any]:
    """`await open(proc, user, **opts)` opens a client; all are closed at the end."""
    opened: list[Client] = []

    async def open_client(proc: ServerProcess, user: str, **opts: Any) -> Client:
        client = await connect(servers.transport, proc.url, token(user), **opts)
        opened.append(client)
        return client

    yield open_client
    await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)


async def messages_until(client: Client, last: Any) -> list[dict[str, Any]]:
    """`message` bodies up to and including the one whose data is `last`."""
    out: list[dict[str, Any]] = []
    while not out or out[-1]["data"] != last:
        out.append((await client.next_event("message", WAIT)).body)
    return out


async def test_resume_gets_the_100_missed_then_live_with_no_hole_at_the_seam(
        servers: Servers, clients: Any) -> None:
    room = unique("room")
    first, second = servers.replicas
    sub = await clients(first, unique("sub"))
    await sub.join(room)
    pub = await clients(second, unique("pub"))
    await pub.join(room)
    await pub.publish(room, "seen")
    assert (await sub.next_event("message", WAIT))["data"] == "seen"
    cursor = sub.cursor
    since = cursor["rooms"][room][0]
    await sub.close()

    for i in range(100):
        await pub.publish(room, ["missed", i])

    # a second publisher keeps publishing while the subscriber resumes on the other replica
    live = await clients(second, unique("pub"))
    await live.join(room)
    started, resumed_ok = asyncio.Event(), asyncio.Event()

    async def publish_live() -> int:
        """From before the resume until 20 publishes after it (bounded); how many."""
        after = 0
        for i in range(2000):
            await live.publish(room, ["live", i])
            started.set()
            after += resumed_ok.is_set()
            if after == 20:
                return i + 1
        raise AssertionError("the resume did not complete within 2000 publishes")

    publishing = asyncio.create_task(publish_live())
    await started.wait()
    resumed = await clients(first, sub.welcome["user"], resume=cursor)
    resumed_ok.set()
    n_live = await publishing
    await pub.publish(room, "end")
    got = await messages_until(resumed, "end")

    offsets = [m["offset"] for m in got]
    assert offsets == list(range(since + 1, since + 1 + len(got)))  # no hole, no duplicate
    assert {m["epoch"] for m in got} == {cursor["rooms"][room][1]}
    data = [m["data"] for m in got]
    assert data[:100] == [["missed", i] for i in range(100)]
    assert [d for d in data if d[0] == "live"] == [["live", i] for i in range(n_live)]
    assert len(got) == 100 + n_live + 1
    assert resumed.cursor["rooms"][room][0] == offsets[-1]


async def test_direct_messages_survive_a_reconnect(servers: Servers, clients: Any) -> None:
    first, second = servers.replicas
    bob_name = unique("bob")
    bob = await clients(first, bob_name)
    alice = await clients(second, unique("alice"))
    await alice.direct(bob_name, "before")
    assert (await bob.next_event("direct", WAIT))["data"] == "before"
    cursor = bob.cursor
    await bob.close()
    for i in range(5):
        await alice.direct(bob_name, i)
    bob = await clients(second, bob_name, resume=cursor)
    await alice.direct(bob_name, "live")
    got = [(await bob.next_event("direct", WAIT)).body for _ in range(6)]
    assert [d["data"] for d in got] == [0, 1, 2, 3, 4, "live"]
    assert [d["offset"] for d in got] == [cursor["inbox"][0] + i for i in range(1, 7)]
    assert bob.take_events("gap") == []


async def test_trimmed_history_gives_a_gap_then_the_live_stream(
        servers: Servers, clients: Any) -> None:
    room = unique("room")
    sub = await clients(servers.small, unique("sub"))
    await sub.join(room)
    cursor = sub.cursor
    await sub.close()
    pub = await clients(servers.small, unique("pub"))
    await pub.join(room)
    for i in range(SMALL_HISTORY + 5):
        await pub.publish(room, i)
    resumed = await clients(servers.small, sub.welcome["user"], resume=cursor)
    gap = (await resumed.next_event("gap", WAIT)).body
    assert gap == {"type": "gap", "room": room, "from": cursor["rooms"][room][0],
                   "reason": "trimmed", "offset": SMALL_HISTORY + 5,
                   "epoch": cursor["rooms"][room][1]}
    assert resumed.take_events("message") == []
    await pub.publish(room, "live")
    assert (await resumed.next_event("message", WAIT))["offset"] == SMALL_HISTORY + 6


async def test_a_lost_redis_epoch_gives_a_gap(servers: Servers, clients: Any) -> None:
    room = unique("room")
    first, second = servers.replicas
    sub = await clients(first, unique("sub"))
    await sub.join(room)
    pub = await clients(second, unique("pub"))
    await pub.join(room)
    await pub.publish(room, "old")
    await sub.next_event("message", WAIT)
    cursor = sub.cursor
    await sub.close()
    redis = aioredis.Redis.from_url(servers.redis_url)
    try:  # as if Redis had lost the stream
        assert await redis.delete(stream_keys(servers.namespace + ":", "room:" + room)[0]) == 1
    finally:
        await redis.aclose()
    await pub.publish(room, "new life")
    resumed = await clients(first, sub.welcome["user"], resume=cursor)
    gap = (await resumed.next_event("gap", WAIT)).body
    assert (gap["room"], gap["from"], gap["reason"], gap["offset"]) == (room, 1, "epoch", 1)
    assert gap["epoch"] != cursor["rooms"][room][1]
    assert resumed.cursor["rooms"][room] == [1, gap["epoch"]]


async def test_a_restarted_memory_broker_is_a_new_epoch(servers: Servers, clients: Any) -> None:
    room = unique("room")
    sub = await clients(servers.memory, unique("sub"))
    await sub.join(room)
    cursor = sub.cursor
    assert set(cursor) == {"inbox", "rooms"}
    await sub.close()
    servers.memory.stop()
    servers.memory.start()
    resumed = await clients(servers.memory, sub.welcome["user"], resume=cursor)
    gaps = [(await resumed.next_event("gap", WAIT)).body for _ in range(2)]
    assert sorted((g.get("room", "inbox"), g["reason"]) for g in gaps) == [
        ("inbox", "epoch"), (room, "epoch")]


async def test_history_off_has_no_offsets_and_resume_gives_gaps(
        servers: Servers, clients: Any) -> None:
    room = unique("room")
    sub = await clients(servers.off, unique("sub"))
    assert "inbox" not in sub.welcome
    ack = await sub.join(room)
    assert "offset" not in ack
    await sub.publish(room, 1)
    message = (await sub.next_event("message", WAIT)).body
    assert "offset" not in message and "epoch" not in message
    cursor = sub.cursor
    assert cursor == {"rooms": {room: [0, ""]}}
    await sub.close()
    resumed = await clients(servers.off, sub.welcome["user"], resume=cursor)
    gap = (await resumed.next_event("gap", WAIT)).body
    assert gap == {"type": "gap", "room": room, "from": 0, "reason": "disabled"}
    await resumed.publish(room, "rejoined")  # publishing needs membership: it was restored
    assert (await resumed.next_event("message", WAIT))["data"] == "rejoined"


@pytest.mark.parametrize("cursor, fragment", [
    ({"rooms": {"bad room": [0, ""]}}, "must match"),
    ({"rooms": {f"r{i}": [0, ""] for i in range(MAX_ROOMS + 1)}}, f"at most {MAX_ROOMS}"),
    ({"inbox": [-1, ""]}, "'inbox'"),
])
async def test_a_bad_cursor_is_refused(servers: Servers, clients: Any,
                                       cursor: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ServerClosed) as info:
        await clients(servers.replicas[0], unique("u"), resume=cursor)
    assert info.value.code == 4400
    assert info.value.reason.startswith("bad_cursor: ") and fragment in info.value.reason
    if servers.transport == "grpc":
        assert info.value.status == "INVALID_ARGUMENT"
    elif servers.transport in ("sse", "longpoll"):
        assert info.value.status == 400
