"""Redis fanout: pub/sub for delivery, hashes for presence counters (per-replica shares
that expire with their replica: presence.py), streams for history (redis_history.py).

Two connections per replica, whatever the number of clients:
- one subscriber connection, read in its Protocol callback (resp.py): a message goes
  to the hub with no task wake-up in between; SUBSCRIBE / UNSUBSCRIBE commands are
  batched per loop tick and sent in order, and a subscribe returns only once Redis
  has confirmed it (so a join acked to a client can never miss a message published
  after the ack);
- one command connection with automatic pipelining: a command finding it idle is
  written at once; otherwise every command issued during one loop tick goes out in
  one write, in call order (per-publisher order is kept), and each reply resolves
  its caller's future as soon as it is parsed.

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
What is allowed is a reconnect *before* writing: a connection whose end Redis has
closed (EOF read, e.g. after a Redis restart while this replica was idle) is
replaced before the next batch goes out, where Redis cannot have executed any of it.
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
from servers.fanout.resp import NoScriptError, RespConnection, open_connection, pack

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
        self._control = f"{self._prefix}ctl:{uuid.uuid4().hex}".encode()
        self._on_message: OnMessage | None = None
        self._on_resubscribed: OnResubscribed | None = None
        self._closing = False
        # subscriber connection; after a reconnect, the channels whose SUBSCRIBE Redis
        # has not confirmed yet
        self._sub: RespConnection | None = None
        self._sub_reconnect: asyncio.Task[None] | None = None
        self._resubscribing: set[bytes] | None = None
        self._resubscribed_channels: list[bytes] = []
        # subscriptions: what we need, and who waits for a confirmation
        self._wanted: set[bytes] = set()
        self._waiting: dict[bytes, list[asyncio.Future[None]]] = {}
        self._sub_ops: list[tuple[str, bytes]] = []
        self._sub_flush_scheduled = False
        # command connection and its auto-pipeline: commands packed, not yet written
        self._cmd: RespConnection | None = None
        self._cmd_connect: asyncio.Task[None] | None = None
        self._batch: list[bytes] = []
        self._batch_futures: list[asyncio.Future[Any]] = []
        self._flush_scheduled = False
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
            self._cmd = await self._open_command()
            await self._cmd.call("PING")
            await self._connect_subscriber()
        except (BrokerUnavailable, OSError, TimeoutError) as exc:
            self._closing = True
            for conn in (self._cmd, self._sub):
                if conn is not None:
                    conn.abort()
            raise BrokerUnavailable(f"cannot reach Redis at {self.url}: {exc}") from None
        if self.presence_ttl > 0:
            try:
                await self.presence.start()
            except BrokerUnavailable:
                await self.close()
                raise

    async def close(self) -> None:
        self._closing = True
        await self.presence.stop(min(self._timeout, 1.0))
        for task in (self._sub_reconnect, self._cmd_connect):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._sub is not None:
            self._sub.close()
        in_flight = [f for f in self._batch_futures if not f.done()]
        self._flush()
        if self._cmd is not None:
            in_flight += self._cmd.in_flight()
        if in_flight:  # let what was written get its replies
            await asyncio.wait(in_flight, timeout=self._timeout)
        if self._cmd is not None:
            self._cmd.close()

    async def _open_command(self) -> RespConnection:
        conn = await open_connection(self.url, self._timeout)
        conn.when_writable(self._flush)
        return conn

    async def _connect_subscriber(self) -> None:
        conn = await open_connection(self.url, self._timeout, on_push=self._on_push,
                                     on_lost=self._subscriber_lost)
        # no await between reading _wanted and going live: a subscribe queued in
        # between would be dropped (not connected yet) and missing from this SUBSCRIBE
        channels = [self._control, *self._wanted]
        if self._sub is not None:  # a reconnect: tell the hub once all are confirmed
            self._resubscribing = set(channels)
            self._resubscribed_channels = channels
        self._sub = conn
        conn.send(pack(("SUBSCRIBE", *channels)))

    def _subscriber_lost(self, exc: BaseException | None) -> None:
        if self._closing or self._sub_reconnect is not None:
            return
        log.warning("Redis subscriber connection lost (%r); reconnecting", exc)
        self._sub_reconnect = asyncio.get_running_loop().create_task(
            self._reconnect_subscriber(), name="redis-resubscribe")

    async def _reconnect_subscriber(self) -> None:
        backoff = 0.05
        try:
            while not self._closing:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                try:
                    await self._connect_subscriber()
                except (BrokerUnavailable, OSError, TimeoutError) as exc:
                    log.warning("Redis reconnect failed: %r", exc)
                    continue
                self.reconnects += 1
                return
        finally:
            self._sub_reconnect = None

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
        if conn is None or conn.closed:
            return  # the reconnect resubscribes everything in _wanted
        # group consecutive ops of one kind into one command, keeping the order
        commands: list[list[str | bytes]] = []
        for op, ch in ops:
            if commands and commands[-1][0] == op:
                commands[-1].append(ch)
            else:
                commands.append([op, ch])
        conn.send(b"".join(pack(tuple(c)) for c in commands))

    def _confirmed(self, ch: bytes) -> None:
        for fut in self._waiting.pop(ch, ()):
            if not fut.done():
                fut.set_result(None)

    def _on_push(self, replies: list[Any]) -> None:
        """What one read of the subscriber connection brought (in the Protocol's
        data_received): messages go to the hub, confirmations to the subscribers."""
        on_message, prefix_len = self._on_message, len(self._bprefix)
        assert on_message is not None
        for resp in replies:
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

    def _call(self, *args: Any) -> asyncio.Future[Any]:
        """Send one command; its reply (or a BrokerUnavailable) comes in the future.

        On an idle connection (no reply awaited, nothing queued) it is written at once:
        at 1 message/s that saves a trip through the event loop (~55 us, measured on
        the WebSocket publish path). Otherwise it is queued, and every command queued
        during one loop tick goes out in one write, in call order (one round trip
        serves many)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn = self._cmd
        if not self._batch and conn is not None and conn.idle and not conn.stale():
            conn.send(pack(args), (fut,))
            return fut
        self._batch.append(pack(args))
        self._batch_futures.append(fut)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._batch:
            return
        conn = self._cmd
        if conn is None or conn.stale():
            # reconnect before writing (never after: "Retry rule"); Redis may have
            # closed an idle connection (a restart), which is no failure of the batch
            if conn is not None:
                conn.abort()
            if self._closing:
                self._fail_batch(BrokerUnavailable("the broker is closed"))
            elif self._cmd_connect is None:
                self._cmd_connect = asyncio.get_running_loop().create_task(
                    self._reconnect_command(), name="redis-reconnect")
            return
        if not conn.writable:
            return  # Redis reads slower than we write: the rest waits (when_writable)
        if conn.unread():  # maybe its end, which the loop has not read yet
            conn.after_read(self._flush)
            return
        data, futures = b"".join(self._batch), self._batch_futures
        self._batch, self._batch_futures = [], []
        conn.send(data, futures)

    async def _reconnect_command(self) -> None:
        try:
            conn = await self._open_command()
        except (BrokerUnavailable, OSError, TimeoutError) as exc:
            self._fail_batch(BrokerUnavailable(f"cannot reach Redis at {self.url}: {exc!r}"))
        else:
            self._cmd = conn
        finally:
            self._cmd_connect = None
        self._flush()

    def _fail_batch(self, error: BrokerUnavailable) -> None:
        futures, self._batch, self._batch_futures = self._batch_futures, [], []
        for fut in futures:
            if not fut.done():
                fut.set_exception(error)

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
