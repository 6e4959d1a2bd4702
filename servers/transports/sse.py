"""Server-Sent Events transport (docs/protocol.md 7.2): framing and the stream, on every stack.

`GET /sse` streams events, `POST /sse/{conn}` carries commands. A stack subclasses
EventStream with the one way to write body bytes and hands it the socket's transport
(to see when a write may block, and to cut a stalled client); everything else is
here. Events are written eagerly from the outbox listener (a task only while a write
has to wait), a timer writes the keepalive comments, and the request's own task
waits for the end.
Each event is SSE-framed once, whatever the number of recipients: the frame is
cached on the shared Event.

Resume: every event that moves the connection's cursor (docs/protocol.md 4.1) is
written after an `id: <cursor>` line, so that a browser's EventSource sends it
back as `Last-Event-ID` when it reconnects and gets what it missed, with no
client code. The `id:` line is the stream's own (one CursorTracker per stream);
the frame after it is the shared one. Joins and leaves, whose acks travel in
command responses, reach the stream as marks in its outbox (in order with the
events) and are written as `id:`-only blocks.

A write that stays blocked (the client stopped reading and the socket buffers are
full) for `heartbeat` seconds drops the stream as a slow consumer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from servers.core.connection import Connection, HubStats
from servers.core.cursor import Cursor, CursorTracker
from servers.core.errors import AuthError
from servers.core.types import CloseReason, Command, Event, Join, Leave
from servers.transports import eager
from servers.transports.context import Context, RequestView
from servers.transports.replies import EVENT_STREAM, Reply, auth_failed
from servers.transports.sessions import Session, SessionRegistry, close_body

log = logging.getLogger("rtbench.sse")

PING = b": ping\n\n"
RETRY_MS = 1000  # the reconnection delay a browser's EventSource is told to use
RETRY = b"retry: %d\n\n" % RETRY_MS
HEADERS = {
    "content-type": EVENT_STREAM,
    "cache-control": "no-cache",
    "x-accel-buffering": "no",  # nginx: do not buffer the stream
}
# events whose offset (welcome: inbox position) CursorTracker follows
_MOVING = frozenset({"welcome", "message", "direct", "gap"})


def frame(event: Event) -> bytes:
    """`event: <type>` and `data: <json>` lines and the blank line ending the event."""
    return b"event: " + event.type.encode() + b"\ndata: " + event.json() + b"\n\n"


def encode(event: Event) -> bytes:
    """The SSE frame of `event`, computed once per event and shared by every stream."""
    return event.encoded("sse", frame)


def id_line(cursor: str) -> bytes:
    """The `id:` line put before a frame (alone, followed by a blank line, it is an
    `id:`-only block: a browser takes the id without dispatching an event)."""
    return b"id: " + cursor.encode() + b"\n"


def close_frame(reason: CloseReason) -> bytes:
    """The last event of a stream the server ends: `close` with the section 6 code."""
    body = {"type": "close", **close_body(reason)}
    return b"event: close\ndata: " + orjson.dumps(body) + b"\n\n"


class CursorMark(Event):
    """Not for the client: a join or leave of the stream's connection, queued in its
    outbox so that the stream's cursor takes it in order with the events."""

    __slots__ = ()


class SseSession(Session):
    """A session plus the cursor its stream writes in `id:` lines."""

    __slots__ = ("tracker",)

    def __init__(self, conn: Connection, cursor: Cursor | None) -> None:
        super().__init__(conn, None)
        self.tracker = CursorTracker.from_cursor(cursor)

    def replied(self, cmd: Command, reply: Event) -> bool:
        if isinstance(cmd, Join):
            body: dict[str, Any] = {"type": "joined", "room": cmd.room,
                                    "presence": cmd.presence, "ack": reply.body}
        elif isinstance(cmd, Leave):
            body = {"type": "left", "room": cmd.room}
        else:
            return False
        outbox = self.conn.outbox
        was_open = outbox.close_reason is None
        return not outbox.push(CursorMark(body)) and was_open

    def chunk(self, events: list[Event]) -> bytes:
        """The bytes of `events`, each that moves the cursor after its `id:` line."""
        tracker = self.tracker
        parts: list[bytes] = []
        for ev in events:
            if type(ev) is CursorMark:
                body = ev.body
                if body["type"] == "joined":
                    tracker.joined(body["room"], body["ack"], body["presence"])
                else:
                    tracker.left(body["room"])
                parts.append(id_line(tracker.encode()) + b"\n")
            elif ev.body["type"] in _MOVING and tracker.observe(ev.body):
                parts.append(id_line(tracker.encode()) + encode(ev))
            else:
                parts.append(encode(ev))
        return parts[0] if len(parts) == 1 else b"".join(parts)


def make_sessions(ctx: Context) -> SessionRegistry[SseSession]:
    # a stream holds its session for its whole life: nothing to reap
    return SessionRegistry(ctx, lambda conn, now, cursor: SseSession(conn, cursor), reap=False)


def probe(ctx: Context, req: RequestView) -> Reply:
    """`HEAD /sse`: the stream's auth and headers, and no connection."""
    try:
        ctx.authenticate(req)
    except AuthError as exc:
        return auth_failed(exc)
    return Reply(200, content_type=EVENT_STREAM, headers={"cache-control": "no-cache"})


def may_block(transport: asyncio.WriteTransport | None) -> bool:
    """Whether a write may wait for the client: the server pauses writing above the
    transport's high-water mark and resumes below its low-water mark, so a buffer
    above low water may mean paused. Unknown transport: assume it may."""
    if transport is None:
        return True
    return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[0]


class EventStream:
    """The `text/event-stream` body of one session, for as long as the client stays.

    Events are written eagerly (servers/transports/eager.py), like WebSocket frames:
    when they land in the outbox, in the delivering callback itself; only a write that
    has to wait goes on as a task. `run` just waits for the end; a timer writes a
    `: ping` comment after `heartbeat` seconds without a write. A stack subclasses it
    with `write` (no callback objects held per stream), sends the response head, then
    awaits `run`; it calls `client_left` when the client goes away (or cancels `run`,
    which is the same).
    """

    __slots__ = ("beat", "disconnected", "ended", "first", "heartbeat", "last_write", "ping",
                 "runner", "session", "sessions", "stats", "transport")

    def __init__(self, sessions: SessionRegistry[SseSession], session: SseSession,
                 heartbeat: float, transport: asyncio.WriteTransport | None) -> None:
        self.sessions = sessions
        self.session = session
        self.heartbeat = heartbeat  # also the bound on a blocked write (0: none)
        self.stats: HubStats = sessions.hub.stats
        self.disconnected = False
        self.transport = transport
        # True once the stream ended with its close event (or the client left), False
        # if the client stopped taking data
        self.ended: asyncio.Future[bool] | None = None
        self.runner = eager.Runner()  # the drains
        self.first = RETRY  # goes out with the first write
        self.ping = False
        self.last_write = 0.0
        self.beat: asyncio.TimerHandle | None = None  # the next ping check

    async def write(self, chunk: bytes, more: bool) -> None:
        """Write one chunk of the response body; `more` False: the last, the response ends."""
        raise NotImplementedError

    async def run(self) -> bool:
        """Write the stream until it ends; True if the client stalled and its TCP
        connection was cut. The session is closed when this returns (or is cancelled)."""
        loop = asyncio.get_running_loop()
        self.ended = loop.create_future()
        self.last_write = loop.time()
        outbox = self.session.conn.outbox
        try:
            outbox.listen(self._ready)  # writes what is queued (the welcome) right away
            if self.heartbeat:
                self.beat = loop.call_later(self.heartbeat, self._beat)
            return not await self.ended and self._stalled()
        finally:
            outbox.listen(None)
            if self.beat is not None:
                self.beat.cancel()
            self.runner.cancel()
            await self.sessions.close(self.session)

    async def client_left(self) -> None:
        """The client went away: close the session (the stream then ends)."""
        self.disconnected = True
        await self.sessions.close(self.session)

    def _beat(self) -> None:
        """Timer: a ping after `heartbeat` seconds without a write; then again."""
        loop = asyncio.get_running_loop()
        delay = self.last_write + self.heartbeat - loop.time()
        if delay <= 0:
            self.ping = True
            self._ready()
            delay = self.heartbeat
        self.beat = loop.call_later(delay, self._beat)

    def _ready(self) -> None:
        """Outbox listener: events arrived, the outbox closed, or a ping is due.

        Each write goes out at once, not at the end of the broker read that brought
        it: deferring them to it (one chunk per read) measured ~7% more server CPU
        per delivery and twice the p99 in a 1000-stream room (bench.fanout), where a
        read brings one message; a backlog is written as one chunk anyway, once a
        write had to wait."""
        if self.ended is not None and not self.ended.done():
            self.runner.run(self._drain)

    def _end(self, normally: bool) -> None:
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(normally)

    async def _send(self, chunk: bytes, more: bool = True) -> bool:
        """`write(chunk, more)`; False if it stayed blocked for `heartbeat` seconds.

        The timer is armed only when the write may block: a timer per write measured
        about 12 us more server CPU per delivered event under uvloop (one run on a
        loaded 2-core machine), half the cost of the rest of the delivery."""
        if not self.heartbeat or not may_block(self.transport):
            await self.write(chunk, more)
            return True
        if self.runner.inline:  # in the caller's stack: the timeout needs a task of ours
            await asyncio.sleep(0)
        try:
            async with asyncio.timeout(self.heartbeat):
                await self.write(chunk, more)
        except TimeoutError:
            return False
        return True

    async def _drain(self) -> None:
        """Write what the outbox holds; at its close, the close event, and the end."""
        session = self.session
        outbox = session.conn.outbox
        loop = asyncio.get_running_loop()
        try:
            while True:
                events = outbox.take()
                if events:
                    chunk = session.chunk(events)
                elif self.ping:
                    chunk = PING
                elif outbox.closed:
                    ok = True
                    if not self.disconnected:
                        last = close_frame(outbox.close_reason or CloseReason.NORMAL)
                        ok = await self._send(last, more=False)
                    self._end(ok)
                    return
                else:
                    return
                del events  # a stream must not pin its last batch while it waits
                self.ping = False
                if self.first:
                    chunk, self.first = self.first + chunk, b""
                self.last_write = loop.time()
                if not await self._send(chunk):
                    self._end(False)
                    return
                del chunk
        except Exception as exc:  # the server could not write: the client is gone
            log.debug("sse stream %s: write failed: %r", session.conn.id, exc)
            self._end(True)

    def _stalled(self) -> bool:
        """The client took nothing for `heartbeat` seconds: drop it as a slow consumer.

        The TCP connection is cut (abort): ending the response would close the transport
        gracefully, waiting for the unsent data that this client does not take. Without
        a transport of our own the server closes it as it does for an unfinished response.
        True if it was aborted.
        """
        outbox = self.session.conn.outbox
        if outbox.close_reason is None:  # not already counted by an outbox overflow
            outbox.close(CloseReason.SLOW_CONSUMER)
            self.stats.slow_consumers += 1
        log.info("sse stream %s: no data taken for %.1f s, dropped as a slow consumer",
                 self.session.conn.id, self.heartbeat)
        if self.transport is None:
            return False
        self.transport.abort()
        return True
