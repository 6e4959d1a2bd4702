"""A lean Redis connection: an asyncio Protocol speaking RESP2 through hiredis (C).

Why not redis-py's asyncio client: per command batch its Pipeline, the pool check-out,
the StreamReader and the reader task cost about 150 us of Python on an idle server
(1 message/s, cold caches) and several task wake-ups per round trip, on the one path
every message takes. Here a reply is parsed in the Protocol's `data_received`, with
no task in between: a command's future is resolved there, and on a subscriber
connection the pushed message goes to its callback right away.

What this module does, and nothing more:
- `open_connection(url)`: TCP (`redis://`, `rediss://`) or Unix socket (`unix://`),
  AUTH and SELECT from the URL, within a timeout;
- `RespConnection.send(data, futures)`: write pre-packed commands (`pack`), one future
  per command, resolved in order with the reply, a `ReplyError` (`NoScriptError` for
  NOSCRIPT), or `ConnectionLost` when the connection ends first;
- subscriber mode (`on_push`): the replies go to the callback instead, a list of
  all those one read completed (a burst of pub/sub messages is handled as one);
- a watchdog per connection: a reply that has not come `timeout` seconds after its
  command was written aborts the connection (what is in flight fails).

No reconnect and no retry here: the broker decides (servers/fanout/redis.py, "Retry
rule": a written batch is never sent again).
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from servers.core.errors import BrokerUnavailable

# (args tuple) -> RESP bytes; str, bytes, int and float args (its stub says one arg)
pack = cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command)


class RespError(BrokerUnavailable):
    """Base of this module's errors: to the core, Redis failed the request."""


class ReplyError(RespError):
    """Redis answered a command with an error reply."""


class NoScriptError(ReplyError):
    """NOSCRIPT: the script is not in Redis's cache (EVAL it instead)."""


class ConnectionLost(RespError):
    """The connection ended (or timed out) before the reply came."""


def _reply_error(message: str) -> ReplyError:
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ReplyError(message)


class RespConnection(asyncio.Protocol):
    """One Redis connection. Replies are matched to `send`'s futures in order, or,
    with `on_push`, handed to it a read's worth at a time (a subscriber connection)."""

    def __init__(self, timeout: float, on_push: Callable[[list[Any]], None] | None = None,
                 on_lost: Callable[[BaseException | None], None] | None = None) -> None:
        self._timeout = timeout
        self._on_push = on_push
        self.on_lost = on_lost
        self._reader = hiredis.Reader(replyError=_reply_error)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[asyncio.Future[Any]] = deque()
        # (first future of a batch, time it was written): what the watchdog checks
        self._sent: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._writable = True
        self._on_writable: Callable[[], None] | None = None
        self._after_read: Callable[[], None] | None = None
        self.closed = False
        self.error: BaseException | None = None

    # ------------------------------------------------------------ protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            _keepalive(sock)
        self._watchdog = asyncio.get_running_loop().call_later(self._timeout / 4, self._watch)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            on_push = self._on_push
            if on_push is not None:
                replies = []
                while (reply := reader.gets()) is not False:
                    replies.append(reply)
                if replies:
                    on_push(replies)
                return
            pending = self._pending
            while (reply := reader.gets()) is not False:
                if not pending:  # a reply nobody asked for: the stream is out of step
                    raise RespError(f"unexpected reply from Redis: {reply!r:.80}")
                fut = pending.popleft()
                if fut.done():
                    continue
                if isinstance(reply, ReplyError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        except hiredis.ProtocolError as exc:
            self.abort(RespError(f"Redis protocol error: {exc}"))
        except RespError as exc:
            self.abort(exc)
        if self._after_read is not None:
            self._read_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        error = self.error or exc
        lost = ConnectionLost(f"connection to Redis lost: {error!r}" if error else
                              "connection closed by Redis")
        pending, self._pending = self._pending, deque()
        self._sent.clear()
        for fut in pending:
            if not fut.done():
                fut.set_exception(lost)
        if self.on_lost is not None:
            self.on_lost(error)
        self._read_done()

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        callback = self._on_writable
        if callback is not None:
            callback()

    # ------------------------------------------------------------- commands

    @property
    def writable(self) -> bool:
        """False while the kernel and the transport's buffer are full: hold new batches
        (the `on_writable` callback says when to go on)."""
        return self._writable and not self.closed

    @property
    def idle(self) -> bool:
        """Open and writable, and no reply awaited."""
        return not self._pending and self._writable and not self.closed

    def when_writable(self, callback: Callable[[], None] | None) -> None:
        self._on_writable = callback

    def send(self, data: bytes, futures: Sequence[asyncio.Future[Any]] = ()) -> None:
        """Write packed commands; `futures`, one per command, get the replies in order
        (none on a subscriber connection)."""
        if self.closed or self._transport is None:
            raise ConnectionLost("connection to Redis is closed")
        if futures:
            self._pending.extend(futures)
            self._sent.append((futures[0], time.monotonic()))
        self._transport.write(data)

    async def call(self, *args: Any) -> Any:
        """One command, one reply (set-up and tests; the broker batches its own)."""
        fut = asyncio.get_running_loop().create_future()
        self.send(pack(args), (fut,))
        return await fut

    def stale(self) -> bool:
        """Closed, or, with no reply awaited, something to read: then Redis has closed
        the connection (or broken the protocol) and the loop has not seen it yet (it
        had no turn since: a Redis restart while this connection was idle). A command
        written now would be lost, and nothing of it executed: reconnect first."""
        if self.closed:
            return True
        return not self._pending and bool(self._poll.poll(0))

    def unread(self) -> bool:
        """Replies are awaited and there is something to read that the loop has not read
        yet: it may be their end (EOF). Write only after it is read (`after_read`)."""
        return bool(self._pending) and not self.closed and bool(self._poll.poll(0))

    def after_read(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, after the next read (or the end of the connection)."""
        self._after_read = callback

    def _read_done(self) -> None:
        callback, self._after_read = self._after_read, None
        if callback is not None:
            callback()

    def in_flight(self) -> list[asyncio.Future[Any]]:
        """The futures of commands written and not answered yet."""
        return [f for f in self._pending if not f.done()]

    def _watch(self) -> None:
        sent = self._sent
        while sent and sent[0][0].done():
            sent.popleft()
        if sent and time.monotonic() - sent[0][1] > self._timeout:
            self.abort(ConnectionLost(f"no reply from Redis in {self._timeout:g} s"))
            return
        self._watchdog = asyncio.get_running_loop().call_later(self._timeout / 4, self._watch)

    def abort(self, error: BaseException | None = None) -> None:
        """Drop the connection now; what is in flight fails with `error`."""
        if error is not None and self.error is None:
            self.error = error
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


# TCP keepalive on both connections: a subscriber connection only ever reads, so
# without it a Redis that vanished (host down, network cut: no FIN, no RST) would
# never be noticed and never re-subscribed. Dead after about 15 + 3 x 5 s of silence.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 15, 5, 3


def _keepalive(sock: Any) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                        ("TCP_KEEPCNT", KEEPALIVE_COUNT)):
        if hasattr(socket, name):  # Linux names; other systems keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


async def open_connection(url: str, op_timeout: float,
                          on_push: Callable[[list[Any]], None] | None = None,
                          on_lost: Callable[[BaseException | None], None] | None = None,
                          ) -> RespConnection:
    """Connect to the Redis of `url` (redis://[user:password@]host[:port][/db],
    rediss://..., unix:///path[?db=N]), authenticate and select its database, all
    within `op_timeout` seconds, which is also the connection's reply timeout."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    query = parse_qs(parts.query)
    db = int(parts.path.lstrip("/") or 0) if parts.scheme != "unix" else int(
        query.get("db", ["0"])[0])

    def factory() -> RespConnection:
        return RespConnection(op_timeout, None)  # set-up first; subscriber mode after

    async def connect() -> RespConnection:
        if parts.scheme == "unix":
            _, proto = await loop.create_unix_connection(factory, parts.path)
        elif parts.scheme in ("redis", "rediss"):
            context = ssl.create_default_context() if parts.scheme == "rediss" else None
            _, proto = await loop.create_connection(
                factory, parts.hostname or "localhost", parts.port or 6379, ssl=context)
        else:
            raise RespError(f"unsupported Redis URL scheme {parts.scheme!r}: {url}")
        try:
            if parts.password is not None:
                auth = [unquote(parts.password)]
                if parts.username:
                    auth.insert(0, unquote(parts.username))
                await proto.call("AUTH", *auth)
            if db:
                await proto.call("SELECT", db)
        except BaseException:
            proto.abort()
            raise
        return proto

    proto = await asyncio.wait_for(connect(), op_timeout)
    proto._on_push = on_push
    proto.on_lost = on_lost
    return proto
