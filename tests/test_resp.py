"""servers/fanout/resp.py, the fanout layer's Redis connection, against real redis-servers."""

from __future__ import annotations

import asyncio
import select
import socket
import time
import uuid

import pytest

from servers.core.errors import BrokerUnavailable
from servers.fanout import resp
from servers.fanout.resp import (
    ConnectionLost,
    NoScriptError,
    ReplyError,
    RespError,
    open_connection,
    pack,
)
from servers.testing import RedisServer, private_redis

pytestmark = pytest.mark.timeout(60)


async def test_pipelined_replies_resolve_in_order(redis_server: RedisServer) -> None:
    conn = await open_connection(redis_server.url, 3.0)
    key = "t" + uuid.uuid4().hex
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(4)]
    conn.send(pack(("SET", key, 41)) + pack(("INCR", key)) + pack(("LPUSH", key, "x"))
              + pack(("GET", key)), futures)
    assert await futures[0] == b"OK"
    assert await futures[1] == 42
    with pytest.raises(ReplyError, match="WRONGTYPE"):  # one command's error is its own
        await futures[2]
    assert await futures[3] == b"42"
    with pytest.raises(NoScriptError):
        await conn.call("EVALSHA", "0" * 40, 0)
    assert isinstance(NoScriptError("x"), BrokerUnavailable)  # what the core catches
    assert await conn.call("PING") == b"PONG"
    conn.close()


async def test_url_password_and_database_are_applied() -> None:
    with private_redis() as server:
        admin = await open_connection(server.url, 3.0)
        await admin.call("CONFIG", "SET", "requirepass", "s3cret")
        await admin.call("AUTH", "s3cret")
        await admin.call("SELECT", 2)
        await admin.call("SET", "where", "db2")
        base = f"127.0.0.1:{server.port}"
        conn = await open_connection(f"redis://:s3cret@{base}/2", 3.0)
        assert await conn.call("GET", "where") == b"db2"
        with pytest.raises(ReplyError):
            await open_connection(f"redis://:wrong@{base}/2", 3.0)
        with pytest.raises(ReplyError, match="NOAUTH"):
            anon = await open_connection(f"redis://{base}/0", 3.0)
            await anon.call("GET", "where")
        with pytest.raises(RespError, match="scheme"):
            await open_connection(f"http://{base}", 3.0)
        conn.close()
        admin.close()


async def test_a_reply_that_never_comes_fails_within_the_timeout() -> None:
    with private_redis() as server:
        admin = await open_connection(server.url, 3.0)
        conn = await open_connection(server.url, 0.4)
        await admin.call("CLIENT", "PAUSE", 3000, "ALL")  # Redis answers nobody for 3 s
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match="no reply"):
            await conn.call("GET", "x")
        # the watchdog looks every timeout/4: the failure comes within 1.25 x timeout
        assert time.monotonic() - started < 0.4 * 1.25 + 0.3
        assert conn.closed and conn.stale()
        with pytest.raises(ConnectionLost):  # a closed connection refuses to send
            await conn.call("PING")
        admin.close()


async def test_a_connection_redis_closed_is_stale_before_the_loop_sees_it() -> None:
    with private_redis() as server:
        conn = await open_connection(server.url, 3.0)
        assert not conn.stale()
        lost = asyncio.Event()
        conn.on_lost = lambda exc: lost.set()
        fd = conn._transport.get_extra_info("socket").fileno()  # type: ignore[union-attr]
        # kill it and wait for its EOF without giving the loop a turn, so that the loop
        # has not read it, as after a Redis restart while the connection was idle
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as admin:
            admin.sendall(pack(("CLIENT", "KILL", "SKIPME", "yes")))
            assert admin.recv(64) == b":1\r\n"  # one client killed: conn
        assert select.select([fd], [], [], 5)[0] == [fd]
        assert not conn.closed and conn.stale()
        await asyncio.wait_for(lost.wait(), 5)  # then the loop sees it
        assert conn.closed and conn.stale()


async def test_subscriber_mode_pushes_every_reply() -> None:
    with private_redis() as server:
        got: asyncio.Queue[list[object]] = asyncio.Queue()
        sub = await open_connection(server.url, 3.0, on_push=got.put_nowait)
        sub.send(pack(("SUBSCRIBE", "a", "b")))
        replies: list[object] = []
        while len(replies) < 2:  # one read or two
            replies += await asyncio.wait_for(got.get(), 5)
        assert replies == [[b"subscribe", b"a", 1], [b"subscribe", b"b", 2]]
        pub = await open_connection(server.url, 3.0)
        # what one read brings is handed over as one list
        pub.send(b"".join(pack(("PUBLISH", "b", f"m{i}")) for i in range(200)),
                 [asyncio.get_running_loop().create_future() for _ in range(200)])
        lists = [await asyncio.wait_for(got.get(), 5)]
        while sum(map(len, lists)) < 200:
            lists.append(await asyncio.wait_for(got.get(), 5))
        assert [m for batch in lists for m in batch] == [
            [b"message", b"b", f"m{i}".encode()] for i in range(200)]
        assert len(lists) < 200  # pipelined publishes arrive in bursts, not one per read
        sub.close()
        pub.close()


async def test_unread_replies_are_read_before_the_next_write(redis_server: RedisServer) -> None:
    conn = await open_connection(redis_server.url, 3.0)
    fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    conn.send(pack(("PING",)), (fut,))
    fd = conn._transport.get_extra_info("socket").fileno()  # type: ignore[union-attr]
    assert select.select([fd], [], [], 5)[0] == [fd]  # the reply is in, the loop has not read it
    # a reply awaited and bytes waiting: they may be the connection's end, so a writer
    # waits for the read (RedisBroker._flush)
    assert conn.unread() and not conn.stale() and not conn.idle
    read = asyncio.Event()
    conn.after_read(read.set)
    await asyncio.wait_for(read.wait(), 5)
    assert fut.done() and fut.result() == b"PONG"  # the callback came after the reply
    assert not conn.unread() and conn.idle
    conn.close()


async def test_tcp_connections_keep_alive(redis_server: RedisServer) -> None:
    conn = await open_connection(redis_server.url, 3.0)
    sock = conn._transport.get_extra_info("socket")  # type: ignore[union-attr]
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == resp.KEEPALIVE_IDLE
    conn.close()
