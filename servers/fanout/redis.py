"""Redis fanout: pub/sub for delivery, hashes for presence counters (per-replica shares
that expire with their replica: presence.py), streams for history (redis_history.py).

Two connections per replica, whatever the number of clients:
- one subscriber connection, driven by a reader task that owns it; SUBSCRIBE /
  UNSUBSCRIBE commands are batched per loop tick and sent in order, and a
  subscribe returns only once Redis has confirmed it (so a join acked to a
  client can never miss a message published after the ack);
- one command connection with automatic pipelining: every PUBLISH and counter
  update issued while a round trip is in flight goes out in the next pipeline,
  in call order (per-publisher order is kept; one round trip serves many).

The seed's listener ended at start-up because nothing was subscribed yet; here
the reader is subscribed to a per-process control channel from the start. Its
connects went through a default pool of 100 and failed at 100 concurrent
connects; here connects share the two connections. On a lost connection the
reader reconnects with backoff and resubscribes every channel it needs; once Redis
has confirmed them all it tells the hub (`watch_resubscribe`), which replays from
history what was published meanwhile (servers/core/heal.py).

Retry rule (docs/protocol.md 4.2): a command batch is never sent twice. Once written,
it may have been executed even if the connection then fails, and a recorded
publish executed twice would be two messages: its callers get BrokerUnavailable.
redis-py's own retries are off for that reason. What is allowed is a reconnect
*before* writing: the pool replaces a connection whose end Redis has closed (EOF
already read, e.g. after a Redis restart while this replica was idle), where Redis
cannot have executed anything of the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import uuid
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection as RedisConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.maint_notifications import MaintNotificationsConfig

from servers.core.errors import BrokerUnavailable
from servers.core.types import (
    DEFAULT_RETENTION,
    History,
    OnCountChange,
    OnMessage,
    OnResubscribed,
    Position,
    Retention,
)
from servers.fanout.presence import ReplicaPresence
from servers.fanout.redis_history import META_TTL, SCRIPTS, Script, stream_keys

log = logging.getLogger("rtbench.redis")

# presence_ttl 0 (no expiry): HINCRBY that deletes the field when it reaches zero,
# atomically (two replicas may race).
_COUNT_ADD = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) n = 0 end
return n
"""


class RedisBroker:
    name = "redis"

    def __init__(self, url: str, namespace: str = "rtb", op_timeout: float = 3.0,
                 presence_ttl: float = 30.0) -> None:
        """`presence_ttl`: seconds after which a replica that stopped refreshing its
        presence shares (it died) is taken for dead and its shares are reaped; 0: never."""
        self.url = url
        self._prefix = namespace + ":"
        self._bprefix = self._prefix.encode()
        self._timeout = op_timeout
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=op_timeout, socket_connect_timeout=op_timeout, max_connections=4,
            # never re-send a batch (module docstring: "Retry rule")
            retry=Retry(NoBackoff(), 0),
            # with maintenance notifications on ("auto"), the pool skips its check for a
            # connection Redis has closed and hands it out: the first batch after a Redis
            # restart then failed on it
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
        self._control = f"{self._prefix}ctl:{uuid.uuid4().hex}".encode()
        self._on_message: OnMessage | None = None
        self._on_resubscribed: OnResubscribed | None = None
        # after a reconnect: channels whose SUBSCRIBE Redis has not confirmed yet
        self._resubscribing: set[bytes] | None = None
        self._resubscribed_channels: list[bytes] = []
        self._sub: RedisConnection | None = None
        self._connected = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        # subscriptions: what we need, and who waits for a confirmation
        self._wanted: set[bytes] = set()
        self._waiting: dict[bytes, list[asyncio.Future[None]]] = {}
        self._sub_ops: list[tuple[str, bytes]] = []
        self._sub_flush_scheduled = False
        # command auto-pipeline
        self._batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.reconnects = 0
        self._retention(DEFAULT_RETENTION)
        self.presence_ttl = presence_ttl
        self.presence = ReplicaPresence(self._call, self._prefix, presence_ttl)

    def _retention(self, retention: Retention) -> None:
        self._size = str(retention.size)
        self._ttl_ms = str(max(1, int(retention.ttl * 1000)))
        self._meta_ttl = str(max(META_TTL, int(retention.ttl) + 1))

    # ------------------------------------------------------------ lifecycle

    async def start(
        self, on_message: OnMessage, retention: Retention = DEFAULT_RETENTION
    ) -> None:
        self._on_message = on_message
        self._retention(retention)
        try:
            await asyncio.wait_for(self._client.ping(), self._timeout)
            await self._connect_subscriber()
        except (RedisError, OSError, TimeoutError) as exc:
            await self._client.aclose()
            raise BrokerUnavailable(f"cannot reach Redis at {self.url}: {exc}") from None
        self._reader = asyncio.create_task(self._read_loop(), name="redis-reader")
        if self.presence_ttl > 0:
            try:
                await self.presence.start()
            except BrokerUnavailable:
                await self.close()
                raise

    async def close(self) -> None:
        self._closing = True
        await self.presence.stop(min(self._timeout, 1.0))
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._sub is not None:
            await self._sub.disconnect()
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flusher, self._timeout)
        await self._client.aclose()

    async def _connect_subscriber(self) -> None:
        kwargs = dict(self._client.connection_pool.connection_kwargs)
        kwargs["socket_timeout"] = None  # the reader blocks until a message comes
        conn = RedisConnection(**kwargs)
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            # no await between reading _wanted and going live: a subscribe queued in
            # between would be dropped (not connected yet) and missing from this SUBSCRIBE
            channels = [self._control, *self._wanted]
            packed = conn.pack_command("SUBSCRIBE", *channels)
            if self._reader is not None:  # a reconnect: tell the hub once all are confirmed
                self._resubscribing = set(channels)
                self._resubscribed_channels = channels
            self._sub = conn
            self._connected.set()
            await conn.send_packed_command(packed, check_health=False)
        except BaseException:
            self._connected.clear()
            await conn.disconnect()
            raise

    # -------------------------------------------------------- subscriptions

    def _channel(self, topic: str) -> bytes:
        return (self._prefix + topic).encode()

    async def subscribe(self, topic: str) -> None:
        ch = self._channel(topic)
        self._wanted.add(ch)
        fut = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(ch, []).append(fut)
        self._queue_sub_op("SUBSCRIBE", ch)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self._timeout)
        except TimeoutError:
            # the caller takes the failure as "not subscribed" and will never unsubscribe:
            # drop the channel, or the next reconnect would subscribe it for good
            waiters = self._waiting.get(ch, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._waiting.pop(ch, None)
                await self.unsubscribe(topic)
            raise BrokerUnavailable(f"Redis did not confirm SUBSCRIBE {topic!r}") from None

    async def unsubscribe(self, topic: str) -> None:
        ch = self._channel(topic)
        self._wanted.discard(ch)
        self._queue_sub_op("UNSUBSCRIBE", ch)

    def _queue_sub_op(self, op: str, ch: bytes) -> None:
        self._sub_ops.append((op, ch))
        if not self._sub_flush_scheduled:
            self._sub_flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_sub_ops)

    def _flush_sub_ops(self) -> None:
        self._sub_flush_scheduled = False
        ops, self._sub_ops = self._sub_ops, []
        conn = self._sub
        if conn is None or not self._connected.is_set() or not conn.is_connected:
            return  # the reconnect resubscribes everything in _wanted
        # group consecutive ops of one kind into one command, keeping the order
        commands: list[list[Any]] = []
        for op, ch in ops:
            if commands and commands[-1][0] == op:
                commands[-1].append(ch)
            else:
                commands.append([op, ch])
        task = asyncio.ensure_future(self._send_sub(conn, conn.pack_commands(commands)))
        task.add_done_callback(_log_failure)

    async def _send_sub(self, conn: RedisConnection, packed: list[bytes]) -> None:
        # redis-py reconnects a disconnected connection on send: a connection the
        # reader has lost (its read failed since the check above) must not come back
        # behind its back, subscribed to a few channels and never read or closed
        if conn is self._sub and conn.is_connected:
            await conn.send_packed_command(packed, check_health=False)

    def _confirmed(self, ch: bytes) -> None:
        for fut in self._waiting.pop(ch, ()):
            if not fut.done():
                fut.set_result(None)

    async def _read_loop(self) -> None:
        on_message = self._on_message
        assert on_message is not None
        prefix_len = len(self._bprefix)
        backoff = 0.05
        while not self._closing:
            conn = self._sub
            try:
                assert conn is not None
                # push_request: redis-py >= 5 routes pub/sub replies to a push handler otherwise
                resp = await conn.read_response(push_request=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closing:
                    return
                self._connected.clear()
                log.warning("Redis subscriber connection lost (%r); reconnecting", exc)
                with contextlib.suppress(Exception):
                    await conn.disconnect()  # type: ignore[union-attr]
                while not self._closing:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    try:
                        await self._connect_subscriber()
                        self.reconnects += 1
                        backoff = 0.05
                        break
                    except (RedisError, OSError) as exc2:
                        log.warning("Redis reconnect failed: %r", exc2)
                continue
            kind = resp[0]
            if kind == b"message":
                try:
                    on_message(resp[1][prefix_len:].decode(), resp[2])
                except Exception:
                    log.exception("delivery callback failed")
            elif kind == b"subscribe":
                self._confirmed(resp[1])
                if self._resubscribing is not None:
                    self._resubscribing.discard(resp[1])
                    if not self._resubscribing:
                        self._resubscribing = None
                        self._resubscribed()

    def _resubscribed(self) -> None:
        """A new subscriber connection has every channel back: what was published
        while it was down reached none of them; the hub replays it from history."""
        callback = self._on_resubscribed
        if callback is None:
            return
        prefix_len = len(self._bprefix)
        channels, self._resubscribed_channels = self._resubscribed_channels, []
        topics = [ch[prefix_len:].decode() for ch in channels if ch in self._wanted]
        try:
            callback(topics)
        except Exception:
            log.exception("resubscribe callback failed")

    def watch_resubscribe(self, callback: OnResubscribed) -> None:
        self._on_resubscribed = callback

    # ------------------------------------------------------ command pipeline

    async def _call(self, *args: Any) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((args, fut))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        try:
            while self._batch:
                batch, self._batch = self._batch, []
                pipe = self._client.pipeline(transaction=False)
                for args, _ in batch:
                    pipe.execute_command(*args)
                try:
                    results = await asyncio.wait_for(
                        pipe.execute(raise_on_error=False), self._timeout
                    )
                except (RedisError, OSError, TimeoutError) as exc:
                    err = BrokerUnavailable(f"Redis request failed: {exc!r}")
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(err)
                    continue
                for (_, fut), res in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if isinstance(res, NoScriptError):
                        fut.set_exception(res)  # _script loads it and retries
                    elif isinstance(res, Exception):
                        fut.set_exception(BrokerUnavailable(f"Redis error: {res}"))
                    else:
                        fut.set_result(res)
        finally:
            self._flusher = None

    async def publish(self, topic: str, payload: bytes) -> None:
        await self._call("PUBLISH", self._channel(topic), payload)

    async def count_add(self, key: str, member: str, delta: int) -> int:
        if self.presence_ttl > 0:
            return await self.presence.count_add(key, member, delta)
        total = self.presence.keys.total(key)
        return int(await self._call("EVAL", _COUNT_ADD, 1, total, member, delta))

    async def count_get(self, key: str, members: Iterable[str]) -> list[int]:
        names = list(members)
        if not names:
            return []
        values = await self._call("HMGET", self.presence.keys.total(key), *names)
        return [int(v) if v is not None else 0 for v in values]

    def watch_counts(self, callback: OnCountChange) -> None:
        self.presence.on_counts = callback

    # ------------------------------------------------------------- history

    async def _script(self, script: Script, topic: str, *args: str | bytes | int) -> Any:
        keys = stream_keys(self._prefix, topic)
        # the epoch a script creates if the stream has none (Redis lost it)
        fresh = secrets.token_hex(4)
        try:
            return await self._call("EVALSHA", script.sha, 2, *keys, fresh, self._meta_ttl, *args)
        except NoScriptError:  # a restarted Redis: EVAL caches it again
            return await self._call("EVAL", script.text, 2, *keys, fresh, self._meta_ttl, *args)

    async def publish_recorded(self, topic: str, body: bytes) -> Position:
        offset, epoch = await self._script(
            SCRIPTS["publish"], topic, self._channel(topic), body, self._size, self._ttl_ms
        )
        return Position(int(offset), epoch.decode())

    async def position(self, topic: str) -> Position:
        offset, epoch = await self._script(SCRIPTS["position"], topic)
        return Position(int(offset), epoch.decode())

    async def history(self, topic: str, after: int, epoch: str, limit: int) -> History:
        # what an approximate trim (MAXLEN ~) kept beyond `size` does not count
        limit = min(limit, int(self._size))
        top, current, gap, *entries = await self._script(
            SCRIPTS["history"], topic, after, epoch, limit, self._ttl_ms
        )
        return History(entries, Position(int(top), current.decode()), gap.decode() or None)


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("Redis subscriber command failed: %r", task.exception())


def redis_available() -> bool:
    """True when a `redis-server` binary is on PATH (used by the harness and tests)."""
    import shutil

    return shutil.which(os.environ.get("RTBENCH_REDIS_SERVER", "redis-server")) is not None
