"""Presence heals when a replica dies (docs/protocol.md 6.1): its counts expire, exactly
one surviving replica reaps them and announces the users who left; a replica taken
for dead while alive, or facing an emptied Redis, writes its counts back.

Broker-level tests drive RedisBroker objects against the session Redis; the last
tests run real server processes and SIGKILL one.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from loadgen.aio import Client, Received, connect
from servers.core.types import CountChange
from servers.fanout.redis import RedisBroker
from servers.testing import RedisServer
from tests.cluster import server, start_all, stop_all, token, unique
from tests.httpclient import get

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0  # generous deadline for what should happen within about 1.5 s


class Seen:
    """A broker's count-change callback: what it was told, and a wake-up."""

    def __init__(self) -> None:
        self.changes: list[CountChange] = []
        self._changed = asyncio.Event()

    def __call__(self, changes: list[CountChange]) -> None:
        self.changes.extend(changes)
        self._changed.set()

    async def until(self, *wanted: CountChange, within: float = WAIT) -> None:
        async with asyncio.timeout(within):
            while not set(wanted) <= set(self.changes):
                self._changed.clear()
                await self._changed.wait()


def ignore(topic: str, payload: bytes) -> None:
    """on_message for brokers whose deliveries these tests do not look at."""


@contextlib.asynccontextmanager
async def replica(url: str, ns: str, ttl: float) -> AsyncIterator[tuple[RedisBroker, Seen]]:
    broker = RedisBroker(url, namespace=ns, presence_ttl=ttl)
    seen = Seen()
    broker.watch_counts(seen)
    await broker.start(ignore)
    try:
        yield broker, seen
    finally:
        await broker.close()


async def freeze(broker: RedisBroker) -> None:
    """Stop refreshing (a crash, or a replica cut from Redis): no graceful goodbye."""
    task = broker.presence._task
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    broker.presence._task = None  # close() must not expire it either


async def until_expired(url: str, broker: RedisBroker) -> None:
    """Wait until `broker`'s entry in the replica set is past its expiry (Redis clock)."""
    raw = aioredis.Redis.from_url(url)
    try:
        async with asyncio.timeout(WAIT):
            while True:
                entry = broker.presence
                expiry = await raw.zscore(entry.keys.replicas, entry.replica)
                secs, micros = await raw.time()
                if expiry is not None and expiry < secs * 1000 + micros // 1000:
                    return
                await asyncio.sleep(0.05)
    finally:
        await raw.aclose()


def ns() -> str:
    return "heal" + uuid.uuid4().hex[:10]


# ------------------------------------------------------------------- broker


async def test_one_of_two_reapers_takes_a_dead_replica(redis_server: RedisServer) -> None:
    url, space = redis_server.url, ns()
    # the survivors' own rounds run at start and then every 10 s: the reaps below are
    # the two concurrent ones of the test
    async with replica(url, space, 30) as (a, seen_a), replica(url, space, 30) as (b, seen_b), \
            replica(url, space, 0.3) as (dead, _):
        await a.count_add("online", "u", 1)
        for key in ("online", "members:r"):
            await dead.count_add(key, "u", 1)
            await dead.count_add(key, "v", 2)
        assert await a.count_get("online", ["u", "v"]) == [2, 2]
        await freeze(dead)
        await until_expired(url, dead)
        await asyncio.gather(*(r.presence.reap() for r in (a, b, a, b)))
        assert (a.presence.reaped, b.presence.reaped) in ((1, 0), (0, 1))
        # u is still online through a; v is gone everywhere, announced once in all
        assert await b.count_get("online", ["u", "v"]) == [1, 0]
        assert await b.count_get("members:r", ["u", "v"]) == [0, 0]
        assert sorted(seen_a.changes + seen_b.changes) == [
            CountChange("members:r", "u", False),
            CountChange("members:r", "v", False),
            CountChange("online", "v", False),
        ]
        raw = aioredis.Redis.from_url(url)
        try:
            assert await raw.exists(dead.presence.keys.shares(dead.presence.replica)) == 0
            assert await raw.zscore(a.presence.keys.replicas, dead.presence.replica) is None
        finally:
            await raw.aclose()


async def test_a_lagging_replica_does_not_reap_itself(redis_server: RedisServer) -> None:
    url, space = redis_server.url, ns()
    async with replica(url, space, 30) as (a, _), replica(url, space, 0.3) as (b, _):
        await b.count_add("online", "u", 1)
        await freeze(b)  # its refreshes stuck behind a backlog, say
        await until_expired(url, b)
        await b.presence.reap()
        assert b.presence.reaped == 0
        assert await b.count_get("online", ["u"]) == [1]
        await b.presence.round()  # its refresh finds its entry: nothing to write back
        assert b.presence.resyncs == 0
        await a.presence.reap()
        assert a.presence.reaped == 0  # b is alive again
        assert await a.count_get("online", ["u"]) == [1]


async def test_counts_survive_a_script_flush(redis_server: RedisServer) -> None:
    async with replica(redis_server.url, ns(), 30) as (a, _):
        assert await a.count_add("online", "u", 1) == 1
        raw = aioredis.Redis.from_url(redis_server.url)
        try:
            await raw.script_flush()
        finally:
            await raw.aclose()
        assert await a.count_add("online", "u", 1) == 2  # EVALSHA failed, EVAL did it
        assert a.presence._resync  # the retry might have passed a later count: SYNC
        await a.presence.round()
        assert await a.count_get("online", ["u"]) == [2]


async def test_background_reaper_expires_a_dead_replica(redis_server: RedisServer) -> None:
    url, space = redis_server.url, ns()
    async with replica(url, space, 0.6) as (a, seen), replica(url, space, 0.6) as (dead, _):
        await dead.count_add("members:r", "u", 1)
        await freeze(dead)
        await seen.until(CountChange("members:r", "u", False))
        assert await a.count_get("members:r", ["u"]) == [0]
        assert a.presence.reaped == 1


async def test_a_replica_reaped_while_alive_writes_its_counts_back(
        redis_server: RedisServer) -> None:
    url, space = redis_server.url, ns()
    async with replica(url, space, 30) as (a, seen_a), replica(url, space, 0.3) as (b, seen_b):
        await b.count_add("members:r", "u", 1)
        await b.count_add("online", "u", 2)
        await a.count_add("online", "w", 1)
        await freeze(b)  # cut from Redis for longer than its ttl
        await until_expired(url, b)
        await a.presence.reap()
        assert await a.count_get("online", ["u", "w"]) == [0, 1]
        assert CountChange("members:r", "u", False) in seen_a.changes
        # back: its next count finds it unregistered; it counts the new user at once
        # and writes the rest back in its next round (here run by hand), nothing twice
        assert await b.count_add("online", "x", 1) == 1
        assert b.presence._resync
        await b.presence.round()
        assert await a.count_get("online", ["u", "w", "x"]) == [2, 1, 1]
        assert await a.count_get("members:r", ["u"]) == [1]
        assert sorted(seen_b.changes) == [CountChange("members:r", "u", True),
                                          CountChange("online", "u", True)]
        # and its shares are its own again: a later reap takes exactly them
        await freeze_and_reap(url, a, b)
        assert await a.count_get("online", ["u", "w", "x"]) == [0, 1, 0]


async def freeze_and_reap(url: str, survivor: RedisBroker, broker: RedisBroker) -> None:
    await until_expired(url, broker)
    await survivor.presence.reap()


async def test_a_refresh_that_finds_itself_reaped_writes_back(redis_server: RedisServer) -> None:
    url, space = redis_server.url, ns()
    async with replica(url, space, 30) as (a, _), replica(url, space, 0.3) as (b, seen_b):
        await b.count_add("online", "u", 1)
        await freeze(b)
        await until_expired(url, b)
        await a.presence.reap()
        assert await a.count_get("online", ["u"]) == [0]
        await b.presence.round()  # its refresh finds its entry gone
        assert await a.count_get("online", ["u"]) == [1]
        assert seen_b.changes == [CountChange("online", "u", True)]
        assert b.presence.resyncs == 1


async def test_counts_come_back_after_redis_lost_them() -> None:
    redis = RedisServer().start()
    try:
        async with replica(redis.url, ns(), 30) as (a, seen):
            await a.count_add("members:r", "u", 1)
            port = redis.port
            redis.stop()
            redis = RedisServer(port=port).start()  # same port, empty
            async with asyncio.timeout(WAIT):  # the command pool reconnects on use
                while True:
                    with contextlib.suppress(Exception):
                        await a.presence.round()
                        break
                    await asyncio.sleep(0.1)
            assert await a.count_get("members:r", ["u"]) == [1]
            assert seen.changes == [CountChange("members:r", "u", True)]
    finally:
        redis.stop()


# ------------------------------------------------------- real server processes


async def presence_of(client: Client, user: str) -> Received:
    """The next `presence` event about `user` (others, such as the client's own, skipped)."""
    async with asyncio.timeout(WAIT):
        for _ in range(100):
            ev = await client.next_event("presence", WAIT)
            if ev["user"] == user:
                return ev
    raise AssertionError(f"no presence event about {user}")


@pytest.mark.e2e
async def test_users_of_a_killed_replica_go_offline(redis_server: RedisServer) -> None:
    args = ["--broker", "redis", "--redis-url", redis_server.url, "--namespace", ns(),
            "--presence-ttl", "1"]
    procs = (server("ws", args), server("ws", args))
    start_all(procs)
    room, watcher_name, victim_name = unique("room"), unique("w"), unique("v")
    watcher = await connect("ws", procs[0].url, token(watcher_name))
    try:
        victim = await connect("ws", procs[1].url, token(victim_name))
        await watcher.join(room, presence=True)
        await victim.join(room)
        ev = await presence_of(watcher, victim_name)
        assert ev["status"] == "joined"
        assert await watcher.presence([victim_name]) == {victim_name: True}

        assert procs[1].proc is not None
        loop = asyncio.get_running_loop()
        start = loop.time()
        procs[1].proc.kill()  # SIGKILL: no goodbye, its counts stay in Redis
        procs[1].proc.wait(5)
        ev = await presence_of(watcher, victim_name)  # within about 1.33 s
        assert (ev["room"], ev["status"]) == (room, "left")
        print(f"left {loop.time() - start:.2f} s after the kill (presence_ttl 1 s)")
        users = await watcher.presence([victim_name, watcher_name])
        assert users == {victim_name: False, watcher_name: True}
        text = (await get(procs[0].url + "/metrics")).text()
        assert re.search(r"^rtbench_presence_replicas_reaped_total\{[^}]*\} 1\.0$", text, re.M)
        assert re.search(r"^rtbench_presence_resyncs_total\{[^}]*\} 0\.0$", text, re.M)
        with contextlib.suppress(Exception):
            await victim.close()
    finally:
        await watcher.close()
        stop_all(procs)


@pytest.mark.e2e
async def test_a_frozen_replica_comes_back_and_its_users_with_it(
        redis_server: RedisServer) -> None:
    args = ["--broker", "redis", "--redis-url", redis_server.url, "--namespace", ns(),
            "--presence-ttl", "1", "--heartbeat", "30"]  # no ping timeout while frozen
    procs = (server("ws", args), server("ws", args))
    start_all(procs)
    room, watcher_name, frozen_name = unique("room"), unique("w"), unique("f")
    watcher = await connect("ws", procs[0].url, token(watcher_name))
    frozen = await connect("ws", procs[1].url, token(frozen_name))
    try:
        await watcher.join(room, presence=True)
        await frozen.join(room)
        assert (await presence_of(watcher, frozen_name))["status"] == "joined"
        assert procs[1].proc is not None
        procs[1].proc.send_signal(signal.SIGSTOP)  # alive, silent: taken for dead
        try:
            assert (await presence_of(watcher, frozen_name))["status"] == "left"
            assert await watcher.presence([frozen_name]) == {frozen_name: False}
        finally:
            procs[1].proc.send_signal(signal.SIGCONT)
        # its connection never closed: once it runs again it writes its counts back
        assert (await presence_of(watcher, frozen_name))["status"] == "joined"
        assert await watcher.presence([frozen_name]) == {frozen_name: True}
        await frozen.ping()  # and the connection itself works
        text = (await get(procs[1].url + "/metrics")).text()
        found = re.search(r"^rtbench_presence_resyncs_total\{[^}]*\} ([0-9.]+)$", text, re.M)
        assert found and float(found.group(1)) >= 1, text[-500:]
    finally:
        await asyncio.gather(watcher.close(), frozen.close(), return_exceptions=True)
        stop_all(procs)
