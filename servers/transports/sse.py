"""Server-Sent Events transport (docs/protocol.md 7.2).

`GET /sse` streams events, `POST /sse/{conn}` carries commands. The stream is a
raw ASGI response rather than sse-starlette's EventSourceResponse: that one runs
four tasks per connection (stream, ping, disconnect listener, shutdown watcher)
and measured 46 KiB of server RSS per idle stream against 17-19 KiB for this one.
Here events are written eagerly from the outbox listener (a task only while a
send has to wait), a timer writes the keepalive comments, the request's own task
waits for the end, and one small task waits for the client to go away. Each event
is SSE-framed once, whatever the number of recipients: the frame is cached on the
shared Event.

Resume: every event that moves the connection's cursor (docs/protocol.md 4.1) is
written after an `id: <cursor>` line, so that a browser's EventSource sends it
back as `Last-Event-ID` when it reconnects and gets what it missed, with no
client code. The `id:` line is the stream's own (one CursorTracker per stream);
the frame after it is the shared one. Joins and leaves, whose acks travel in
command responses, reach the stream as marks in its outbox (in order with the
events) and are written as `id:`-only blocks.

A send that stays blocked (the client stopped reading and the socket buffers are
full) for `heartbeat` seconds drops the stream as a slow consumer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servers.core.connection import Connection, HubStats
from servers.core.cursor import Cursor, CursorTracker
from servers.core.errors import AuthError
from servers.core.types import CloseReason, Command, Event, Join, Leave
from servers.transports import eager
from servers.transports.http import Context, auth_failed
from servers.transports.sessions import (
    Held,
    Session,
    SessionRegistry,
    close_body,
    requested_cursor,
)

log = logging.getLogger("rtbench.sse")

PING = b": ping\n\n"
RETRY_MS = 1000  # the reconnection delay a browser's EventSource is told to use
RETRY = b"retry: %d\n\n" % RETRY_MS
_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
]
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


def _transport(receive: Receive) -> asyncio.WriteTransport | None:
    """The transport under an ASGI request, if the server lets us see it.

    uvicorn (httptools and h11 alike) passes the bound `receive` of its request cycle,
    which holds the transport; Starlette's middleware passes `receive` through as is.
    """
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    needed = ("abort", "get_write_buffer_size", "get_write_buffer_limits")
    return transport if all(callable(getattr(transport, n, None)) for n in needed) else None


def _may_block(transport: asyncio.WriteTransport | None) -> bool:
    """Whether a `send` may wait for the client: the server pauses writing above the
    transport's high-water mark and resumes below its low-water mark, so a buffer
    above low water may mean paused. Unknown transport: assume it may."""
    if transport is None:
        return True
    return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[0]


class EventStream:
    """The `text/event-stream` body of one session, for as long as the client stays.

    Events are written eagerly (servers/transports/eager.py), like WebSocket frames:
    when they land in the outbox, in the delivering callback itself; only a send that
    has to wait goes on as a task. The request's own task just waits for the end; a
    timer writes a `: ping` comment after `heartbeat` seconds without a write.
    """

    __slots__ = ("beat", "disconnected", "ended", "first", "heartbeat", "last_write", "ping",
                 "runner", "send", "session", "sessions", "stats", "transport")

    def __init__(self, sessions: SessionRegistry[SseSession], session: SseSession,
                 heartbeat: float) -> None:
        self.sessions = sessions
        self.session = session
        self.heartbeat = heartbeat  # also the bound on a blocked send (0: none)
        self.stats: HubStats = sessions.hub.stats
        self.disconnected = False
        self.transport: asyncio.WriteTransport | None = None
        self.send: Send | None = None
        # True once the stream ended with its close event (or the client left), False
        # if the client stopped taking data
        self.ended: asyncio.Future[bool] | None = None
        self.runner = eager.Runner()  # the drains
        self.first = RETRY  # goes out with the first write
        self.ping = False
        self.last_write = 0.0
        self.beat: asyncio.TimerHandle | None = None  # the next ping check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.transport = _transport(receive)
        self.send = send
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        loop = asyncio.get_running_loop()
        self.ended = loop.create_future()
        self.last_write = loop.time()
        outbox = self.session.conn.outbox
        watch = asyncio.create_task(self._watch(receive))
        outbox.listen(self._ready)  # writes what is queued (the welcome) right away
        if self.heartbeat:
            self.beat = loop.call_later(self.heartbeat, self._beat)
        try:
            if not await self.ended and self._stalled():
                # the server learns of the abort a moment later: returning before it has
                # would have it log (and close) an unfinished response
                await asyncio.wait({watch}, timeout=1.0)
        finally:
            outbox.listen(None)
            if self.beat is not None:
                self.beat.cancel()
            self.runner.cancel()
            watch.cancel()
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

    async def _watch(self, receive: Receive) -> None:
        """Close the session as soon as the client goes away (the stream then ends)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        await self.sessions.close(self.session)

    def _ready(self) -> None:
        """Outbox listener: events arrived, the outbox closed, or a ping is due.

        Each write goes out at once, not at the end of the broker read that brought
        it: deferring them to it (one chunk per read) measured ~7% more server CPU
        per delivery and twice the p99 in a 1000-stream room (bench.fanout), where a
        read brings one message; a backlog is written as one chunk anyway, once a
        send had to wait."""
        if self.ended is not None and not self.ended.done():
            self.runner.run(self._drain)

    def _end(self, normally: bool) -> None:
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(normally)

    async def _send(self, message: Message) -> bool:
        """`send(message)`; False if it stayed blocked for `heartbeat` seconds.

        The timer is armed only when the send may block: a timer per send measured
        about 12 us more server CPU per delivered event under uvloop (one run on a
        loaded 2-core machine), half the cost of the rest of the delivery."""
        send = self.send
        assert send is not None
        if not self.heartbeat or not _may_block(self.transport):
            await send(message)
            return True
        if self.runner.inline:  # in the caller's stack: the timeout needs a task of ours
            await asyncio.sleep(0)
        try:
            async with asyncio.timeout(self.heartbeat):
                await send(message)
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
                        ok = await self._send({"type": "http.response.body", "body": last,
                                               "more_body": False})
                    self._end(ok)
                    return
                else:
                    return
                del events  # a stream must not pin its last batch while it waits
                self.ping = False
                if self.first:
                    chunk, self.first = self.first + chunk, b""
                self.last_write = loop.time()
                if not await self._send({"type": "http.response.body", "body": chunk,
                                         "more_body": True}):
                    self._end(False)
                    return
                del chunk
        except Exception as exc:  # the server could not write: the client is gone
            log.debug("sse stream %s: send failed: %r", session.conn.id, exc)
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


def routes(ctx: Context) -> list[BaseRoute]:
    # a stream holds its session for its whole life: nothing to reap
    sessions: SessionRegistry[SseSession] = SessionRegistry(
        ctx, lambda conn, now, cursor: SseSession(conn, cursor), reap=False
    )

    async def stream(request: Request) -> ASGIApp:
        if request.method == "HEAD":  # a probe: same auth and headers, no connection
            try:
                ctx.authenticate(request)
            except AuthError as exc:
                return auth_failed(exc)
            return Response(headers={"cache-control": "no-cache"}, media_type="text/event-stream")
        opened = await sessions.open(request, requested_cursor(request, last_event_id=True))
        if isinstance(opened, Response):
            return opened
        return EventStream(sessions, opened, ctx.settings.heartbeat)

    return [
        Route("/sse", Held(stream), methods=["GET"]),
        Route("/sse/{conn}", sessions.command, methods=["POST"]),
    ]
