"""The gRPC transport end to end: real `rtbench serve --transport grpc` processes, real
channels, a private redis-server for the two-replica test."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from servers.core.auth import DEV_SECRET, make_token
from servers.proto import rtbench_pb2 as pb
from servers.testing import RedisServer, ServerProcess, free_port
from servers.transports.grpc_codec import event_from_frame
from tests.httpclient import Http, get

pytestmark = pytest.mark.e2e

MAX_FRAME = 4096
TIMEOUT = 5.0


class Server:
    def __init__(self, *args: str) -> None:
        self.metrics_port = free_port()
        self.proc = ServerProcess(
            "grpc", free_port(), args=[*args, "--metrics-port", str(self.metrics_port)]
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.proc.port}"

    def __enter__(self) -> Server:
        self.proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stop()

    async def metric(self, name: str) -> float:
        text = (await get(f"http://127.0.0.1:{self.metrics_port}/metrics")).text()
        found = re.search(rf'^rtbench_{name}{{transport="grpc"}} (\S+)$', text, re.M)
        assert found, f"no rtbench_{name} in /metrics"
        return float(found.group(1))

    async def wait_metric(self, name: str, value: float) -> None:
        """Until the server reports `value` (state the client cannot observe otherwise)."""
        for _ in range(100):
            if await self.metric(name) == value:
                return
            await asyncio.sleep(0.05)
        assert await self.metric(name) == value


def token(user: str, **kw: Any) -> str:
    return make_token(user, DEV_SECRET, **kw)


def auth(tok: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {tok}"),)


def _bytes(msg: pb.ClientFrame | pb.SendRequest | bytes) -> bytes:
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


class Stream:
    """A client end of `Connect` (or `Subscribe`) speaking in JSON-shaped event dicts."""

    def __init__(self, call: Any) -> None:
        self.call = call

    @classmethod
    def connect(cls, channel: aio.Channel, tok: str | None) -> Stream:
        method = channel.stream_stream("/rtbench.v1.Chat/Connect", request_serializer=_bytes,
                                       response_deserializer=pb.ServerFrame.FromString)
        return cls(method(metadata=auth(tok) if tok else None))

    @classmethod
    def subscribe(cls, channel: aio.Channel, tok: str | None) -> Stream:
        method = channel.unary_stream("/rtbench.v1.Chat/Subscribe", request_serializer=_bytes,
                                      response_deserializer=pb.ServerFrame.FromString)
        return cls(method(pb.SubscribeRequest(), metadata=auth(tok) if tok else None))

    async def send(self, msg: pb.ClientFrame | bytes) -> None:
        await self.call.write(msg)

    async def recv(self) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.call.read(), TIMEOUT)
        assert frame is not aio.EOF, "stream ended"
        return event_from_frame(frame)

    async def recv_n(self, n: int) -> list[dict[str, Any]]:
        return [await self.recv() for _ in range(n)]

    async def end(self) -> tuple[grpc.StatusCode, str]:
        """Read to the end of the stream; the final status and details."""
        try:
            while await asyncio.wait_for(self.call.read(), TIMEOUT) is not aio.EOF:
                pass
        except aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return await self.call.code(), await self.call.details()


async def send_cmd(channel: aio.Channel, tok: str | None, conn: str,
                   msg: pb.ClientFrame | bytes) -> dict[str, Any]:
    method = channel.unary_unary("/rtbench.v1.Chat/Send", request_serializer=_bytes,
                                 response_deserializer=pb.ServerFrame.FromString)
    request = msg if isinstance(msg, bytes) else pb.SendRequest(conn=conn, frame=msg)
    reply = await method(request, metadata=auth(tok) if tok else None, timeout=TIMEOUT)
    return event_from_frame(reply)


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def mem() -> Iterator[Server]:
    with Server("--broker", "memory", "--max-frame-bytes", str(MAX_FRAME)) as server:
        yield server


@pytest.fixture
async def channel(mem: Server) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(mem.target) as ch:
        yield ch


async def welcomed(channel: aio.Channel, user: str) -> tuple[Stream, dict[str, Any]]:
    stream = Stream.connect(channel, token(user))
    welcome = await stream.recv()
    assert welcome["type"] == "welcome"
    return stream, welcome


# ------------------------------------------------------------------ Connect


async def test_welcome_join_publish_ack(channel: aio.Channel) -> None:
    alice, welcome = await welcomed(channel, "alice")
    assert welcome["user"] == "alice"
    assert welcome["conn"].startswith(welcome["server"] + "-")
    assert welcome["limits"]["max_frame_bytes"] == MAX_FRAME
    epoch = welcome["inbox"]["epoch"]  # the memory broker's: one for every stream
    room = uniq("room")
    await alice.send(pb.ClientFrame(id="1", join=pb.Join(room=room, presence=True)))
    assert sorted(map(str, await alice.recv_n(2))) == sorted(map(str, [
        {"type": "ack", "ref": "1", "offset": 0, "epoch": epoch},
        {"type": "presence", "room": room, "user": "alice", "status": "joined"}]))
    await alice.send(pb.ClientFrame(id="2", publish=pb.Publish(room=room, data=b'{"t": "hi"}')))
    events = {e["type"]: e for e in await alice.recv_n(2)}
    assert events["ack"] == {"type": "ack", "ref": "2", "offset": 1, "epoch": epoch}
    message = events["message"]
    assert (message["room"], message["from"], message["data"]) == (room, "alice", {"t": "hi"})
    assert (message["offset"], message["epoch"]) == (1, epoch)
    assert message["ts"] > 1_600_000_000_000_000
    alice.call.cancel()


async def test_ack_only_for_commands_with_an_id(channel: aio.Channel) -> None:
    bob, _ = await welcomed(channel, "bob")
    await bob.send(pb.ClientFrame(join=pb.Join(room=uniq("room"))))
    await bob.send(pb.ClientFrame(ping=pb.Ping()))
    pong = await bob.recv()  # no ack before it
    assert pong["type"] == "pong" and "ref" not in pong
    await bob.send(pb.ClientFrame(id="q", presence=pb.PresenceQuery(users=["bob", "nobody"])))
    assert await bob.recv() == {"type": "presence_state", "ref": "q",
                                "users": {"bob": True, "nobody": False}}
    bob.call.cancel()


async def test_bad_frames_get_errors_and_the_stream_keeps_working(
    channel: aio.Channel,
) -> None:
    carol, _ = await welcomed(channel, "carol")
    other, _ = await welcomed(channel, "dave")
    await carol.send(b"\xff\xff\xff")
    error = await carol.recv()
    assert (error["type"], error["code"]) == ("error", "bad_json")
    assert "ref" not in error
    await carol.send(pb.ClientFrame(id="3", publish=pb.Publish(room="nope", data=b"1")))
    assert (await carol.recv())["code"] == "not_member"
    await carol.send(pb.ClientFrame(id="4", publish=pb.Publish(room="r", data=b"{bad")))
    error = await carol.recv()
    assert (error["code"], error["ref"]) == ("bad_json", "4")
    assert "field 'data' is not valid UTF-8 JSON" in error["message"]
    await carol.send(pb.ClientFrame(id="5", join=pb.Join(room="bad room")))
    assert (await carol.recv())["code"] == "bad_room"
    await carol.send(pb.ClientFrame(id="6", ping=pb.Ping()).SerializeToString() + b"\x4a\x00")
    assert (await carol.recv())["ref"] == "6"  # unknown trailing field ignored: a pong
    big = pb.ClientFrame(publish=pb.Publish(room="r", data=b'"' + b"x" * MAX_FRAME + b'"'))
    await carol.send(big)
    assert (await carol.recv())["code"] == "too_large"
    await carol.send(pb.ClientFrame(id="7", ping=pb.Ping()))
    assert (await carol.recv())["type"] == "pong"
    # frames over the hard limit (4 x max_frame_bytes, at least 1 MiB) end that stream only
    await carol.send(b"\x00" * ((1 << 20) + 1))
    code, _ = await carol.end()
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    await other.send(pb.ClientFrame(id="8", ping=pb.Ping()))
    assert (await other.recv())["ref"] == "8"
    other.call.cancel()


async def test_half_close_flushes_replies_then_ends_ok(channel: aio.Channel) -> None:
    erin, _ = await welcomed(channel, "erin")
    await erin.send(pb.ClientFrame(id="last", ping=pb.Ping()))
    await erin.call.done_writing()
    assert (await erin.recv())["ref"] == "last"
    assert await erin.end() == (grpc.StatusCode.OK, "")


EXPIRED = token("alice", ttl=-60)
FORGED = make_token("alice", "not-the-server-secret")


@pytest.mark.parametrize(("tok", "message"), [
    (None, "missing token"),
    ("garbage", "malformed token: expected '<payload>.<signature>'"),
    (FORGED, "invalid token signature"),
    (EXPIRED, "token expired"),
], ids=["missing", "malformed", "forged", "expired"])
async def test_refused_tokens_are_unauthenticated(
    channel: aio.Channel, tok: str | None, message: str
) -> None:
    for stream in (Stream.connect(channel, tok), Stream.subscribe(channel, tok)):
        assert await stream.end() == (grpc.StatusCode.UNAUTHENTICATED, message)
    with pytest.raises(aio.AioRpcError) as info:
        await send_cmd(channel, tok, "any", pb.ClientFrame(ping=pb.Ping()))
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, message)


# --------------------------------------------------------- Subscribe + Send


async def test_subscribe_and_send(channel: aio.Channel) -> None:
    tok = token("frank")
    stream = Stream.subscribe(channel, tok)
    welcome = await stream.recv()
    conn, room, epoch = welcome["conn"], uniq("room"), welcome["inbox"]["epoch"]
    # the reply is the response: an ack even without an id
    assert await send_cmd(channel, tok, conn, pb.ClientFrame(join=pb.Join(room=room))) == {
        "type": "ack", "offset": 0, "epoch": epoch}
    reply = await send_cmd(channel, tok, conn, pb.ClientFrame(
        id="9", publish=pb.Publish(room=room, data=b"[1]")))
    assert reply == {"type": "ack", "ref": "9", "offset": 1, "epoch": epoch}
    message = await stream.recv()
    assert (message["type"], message["data"]) == ("message", [1])
    assert (await send_cmd(channel, tok, conn, pb.ClientFrame(id="p", ping=pb.Ping())))["type"] \
        == "pong"
    bad = await send_cmd(channel, tok, conn, pb.ClientFrame(id="b", join=pb.Join(room="a b")))
    assert (bad["code"], bad["ref"]) == ("bad_room", "b")
    other = await send_cmd(channel, token("mallory"), conn, pb.ClientFrame(ping=pb.Ping()))
    assert (other["type"], other["code"]) == ("error", "forbidden")
    gone = await send_cmd(channel, tok, "no-such-conn", pb.ClientFrame(ping=pb.Ping()))
    assert gone["code"] == "unknown_session"
    assert (await send_cmd(channel, tok, conn, b"\xff\xff"))["code"] == "bad_json"
    stream.call.cancel()


# -------------------------------------------------------------- operations


async def test_health_serving(channel: aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "rtbench.v1.Chat"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service),
                                   timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(aio.AioRpcError) as info:
        await health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_metrics_and_healthz(mem: Server, channel: aio.Channel) -> None:
    opened = await mem.metric("connections_opened_total")
    gina, _ = await welcomed(channel, "gina")
    assert await mem.metric("connections_opened_total") == opened + 1
    assert await mem.metric("connections") >= 1
    async with Http(f"http://127.0.0.1:{mem.metrics_port}") as http:
        health = (await http.get("/healthz")).json()
        missing = await http.get("/nope")
    assert (health["status"], health["transport"], health["broker"]) == ("ok", "grpc", "memory")
    assert missing.status == 404
    gina.call.cancel()


def test_port_taken_exits_2(mem: Server) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "servers.serve", "--transport", "grpc", "--broker", "memory",
         "--port", str(mem.proc.port), "--metrics-port", str(free_port())],
        capture_output=True, text=True, timeout=30)
    assert run.returncode == 2  # a start-up failure the user can fix (tests/test_serve_cli.py)
    assert "cannot listen" in run.stderr


def test_broker_unreachable_exits_2() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    run = subprocess.run(
        [sys.executable, "-m", "servers.serve", "--transport", "grpc", "--broker", "redis",
         "--redis-url", url, "--port", str(free_port()), "--metrics-port", str(free_port())],
        capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert f"cannot reach Redis at {url}" in run.stderr


# ---------------------------------------------------------- server closes


async def test_slow_consumer_gets_resource_exhausted() -> None:
    with Server("--broker", "memory", "--outbox-max-events", "20") as server:
        # no BDP probing: the HTTP/2 window stays at 64 KiB, so it fills quickly
        slow_ch = aio.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)])
        async with slow_ch, aio.insecure_channel(server.target) as pub_ch:
            slow, _ = await welcomed(slow_ch, "slow")  # then reads nothing
            pub, _ = await welcomed(pub_ch, "pub")
            data = b'"' + b"x" * 16000 + b'"'
            sent = 100  # 1.6 MB: far more than the window plus 20 queued events
            for _ in range(sent):
                await pub.send(pb.ClientFrame(direct=pb.Direct(to="slow", data=data)))
            await pub.send(pb.ClientFrame(id="sync", ping=pb.Ping()))
            assert (await pub.recv())["ref"] == "sync"  # every direct went through the hub
            assert await server.metric("slow_consumers_total") == 1
            # the server drops the connection though its pump is stuck in a write
            await server.wait_metric("connections", 1)
            got = 0
            try:
                while await asyncio.wait_for(slow.call.read(), TIMEOUT) is not aio.EOF:
                    got += 1
            except aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert exc.details().startswith("slow_consumer")
            else:
                raise AssertionError("the stream ended without an error status")
            assert got < sent
            await pub.send(pb.ClientFrame(id="alive", ping=pb.Ping()))
            assert (await pub.recv())["ref"] == "alive"
            pub.call.cancel()


async def test_sigterm_tells_clients_to_go_away_and_exits_0() -> None:
    server = Server("--broker", "memory")
    with server:
        async with aio.insecure_channel(server.target) as ch:
            connected, _ = await welcomed(ch, "henry")
            await connected.send(pb.ClientFrame(id="1", join=pb.Join(room="r")))
            assert (await connected.recv())["type"] == "ack"
            subscribed = Stream.subscribe(ch, token("ida"))
            assert (await subscribed.recv())["type"] == "welcome"
            assert server.proc.proc is not None
            server.proc.proc.send_signal(signal.SIGTERM)
            for stream in (connected, subscribed):
                code, details = await stream.end()
                assert code == grpc.StatusCode.UNAVAILABLE
                assert details.startswith("going_away")
            assert await asyncio.to_thread(server.proc.proc.wait, 10) == 0


# ------------------------------------------------------------- two replicas


async def test_two_replicas_deliver_across_redis(redis_server: RedisServer) -> None:
    args = ("--broker", "redis", "--redis-url", redis_server.url, "--namespace", uniq("grpc"))
    with Server(*args) as a, Server(*args) as b:
        async with aio.insecure_channel(a.target) as ch_a, aio.insecure_channel(b.target) as ch_b:
            alice, welcome_a = await welcomed(ch_a, "alice")
            bob, welcome_b = await welcomed(ch_b, "bob")
            assert welcome_a["server"] != welcome_b["server"]
            room = uniq("room")
            acks = []
            for stream in (alice, bob):
                await stream.send(pb.ClientFrame(id="j", join=pb.Join(room=room)))
                acks.append(await stream.recv())
            # one stream in Redis, whichever replica reads its position
            assert acks[0] == acks[1] == {"type": "ack", "ref": "j", "offset": 0,
                                          "epoch": acks[0]["epoch"]}
            await alice.send(pb.ClientFrame(publish=pb.Publish(room=room, data=b'"hello"')))
            got = await bob.recv()
            assert (got["type"], got["from"], got["data"]) == ("message", "alice", "hello")
            assert (await alice.recv())["data"] == "hello"  # the sender's own copy
            await bob.send(pb.ClientFrame(id="d", direct=pb.Direct(to="alice", data=b"{}")))
            assert await bob.recv() == {"type": "ack", "ref": "d", "offset": 1,
                                        "epoch": welcome_a["inbox"]["epoch"]}
            direct = await alice.recv()
            assert (direct["type"], direct["from"], direct["to"]) == ("direct", "bob", "alice")
            await alice.send(pb.ClientFrame(id="q", presence=pb.PresenceQuery(users=["bob"])))
            assert (await alice.recv())["users"] == {"bob": True}
            alice.call.cancel()
            bob.call.cancel()
