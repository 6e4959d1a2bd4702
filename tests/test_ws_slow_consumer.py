"""A WebSocket client that stops reading (docs/protocol.md 6, 6.1): the others keep
getting every message, the stalled one is dropped as a slow consumer (counted in
/metrics) and reaped, and the server's memory stays bounded by the outbox limits.

The stalled client is a raw socket speaking WebSocket through wsproto: it joins a room,
then never reads again (a tiny receive buffer, so the server's socket fills fast).
On both server stacks.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

import orjson
import psutil
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from loadgen.aio import connect
from servers.settings import STACKS
from servers.testing import ServerProcess, free_port
from tests.cluster import start_all, stop_all, token, unique
from tests.httpclient import Http

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

WAIT = 10.0
SIZE = 60_000  # bytes of padding per message
OUTBOX_BYTES = 4 << 20


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float) -> None:
    """Wait (bounded) for a server-side state change that has no event of its own."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def metric(http: Http, name: str) -> float:
    for line in (await http.get("/metrics")).text().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} missing from /metrics")


async def stalled_client(port: int, user: str, room: str) -> socket.socket:
    """Handshake, `join`, then nothing more is ever read from the socket."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    ws = WSConnection(ConnectionType.CLIENT)
    hello = Request(host="127.0.0.1", target=f"/ws?token={token(user)}")
    await loop.sock_sendall(sock, ws.send(hello))
    accepted = welcomed = False
    while not (accepted and welcomed):
        data = await asyncio.wait_for(loop.sock_recv(sock, 65536), WAIT)
        assert data, "the server closed the handshake"
        ws.receive_data(data)
        for event in ws.events():
            accepted |= isinstance(event, AcceptConnection)
            welcomed |= isinstance(event, TextMessage) and '"welcome"' in event.data
    join = orjson.dumps({"type": "join", "room": room, "id": 1}).decode()
    await loop.sock_sendall(sock, ws.send(TextMessage(data=join)))
    return sock


@pytest.mark.parametrize("stack", STACKS)
async def test_a_stalled_reader_is_dropped_and_nobody_else_notices(stack: str) -> None:
    n = 3 * (OUTBOX_BYTES + (8 << 20)) // SIZE  # well past its outbox and socket buffers
    proc = ServerProcess("ws", free_port(), stack=stack, args=[
        # history off: the memory broker's history would hold 1000 of these messages
        "--broker", "memory", "--history-size", "0", "--heartbeat", "1",
        "--max-frame-bytes", "65536", "--tcp-user-timeout", "2",
        "--outbox-max-events", "10000", "--outbox-max-bytes", str(OUTBOX_BYTES)])
    start_all([proc])
    assert proc.proc is not None
    rss = psutil.Process(proc.proc.pid).memory_info
    room = unique("room")
    sock = None
    try:
        async with Http(proc.url, timeout=WAIT) as http:
            reader = await connect("ws", proc.url, token(unique("reader")))
            publisher = await connect("ws", proc.url, token(unique("pub")))
            try:
                await reader.join(room)
                await publisher.join(room)
                sock = await stalled_client(proc.port, unique("stalled"), room)
                await eventually(lambda: _is(metric(http, "rtbench_connections"), 3),
                                 "the stalled client to join", WAIT)
                await reader.publish(room, "ready")  # the stalled join was handled first
                assert (await reader.next_event("message", WAIT))["data"] == "ready"
                rss_before = rss().rss
                peak = rss_before
                got: list[int] = []
                for i in range(n):
                    await publisher.publish(room, {"i": i, "pad": "x" * SIZE})
                    got.append((await reader.next_event("message", WAIT))["data"]["i"])
                    if i % 50 == 0:
                        peak = max(peak, rss().rss)
                assert got == list(range(n))  # the reader missed nothing and kept up
                await eventually(lambda: _is(metric(http, "rtbench_slow_consumers_total"), 1),
                                 "the stalled client to be dropped", WAIT)
                # its socket is reaped too: the close frame cannot get through a full
                # window, so the kernel gives up after tcp_user_timeout (6.1)
                await eventually(lambda: _is(metric(http, "rtbench_connections"), 2),
                                 "the stalled connection to be reaped", 4 * WAIT)
                await publisher.publish(room, "after")  # the room works on
                assert (await reader.next_event("message", WAIT))["data"] == "after"
            finally:
                await asyncio.gather(reader.close(), publisher.close())
        # it held about its outbox (plus socket buffers and allocator slack), not the
        # whole flood, which a stalled reader would pin if nothing bounded it
        assert peak - rss_before < 3 * OUTBOX_BYTES < n * SIZE, (peak - rss_before, n * SIZE)
    finally:
        if sock is not None:
            sock.close()
        stop_all([proc])


async def _is(value: Awaitable[float], expected: float) -> bool:
    return await value == expected
