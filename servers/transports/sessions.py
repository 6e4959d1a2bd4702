"""What the session-style HTTP transports (SSE, long-poll) share, on every stack.

A hub connection there outlives any one request: the stream or the polls carry
events, and commands arrive as separate `POST /<prefix>/{conn}` requests. This
module holds the registry conn id -> session, the owner check (the token's user
must own the id), the one command endpoint, the idle-session reaper and the
drain on shutdown. Command semantics stay in the hub; requests come in as
RequestViews and answers go out as Replies, so no framework is involved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Callable
from typing import Any, Generic, TypeVar

from servers.core.codec import parse_command
from servers.core.connection import Connection
from servers.core.cursor import RESUME_HEADER, RESUME_PARAM, Cursor, decode_cursor
from servers.core.errors import AuthError, BrokerUnavailable, ErrorCode, ProtocolError
from servers.core.hub import Hub
from servers.core.types import CloseReason, Command, Event
from servers.transports.context import Context, RequestView
from servers.transports.replies import (
    Reply,
    auth_failed,
    forbidden,
    internal_error,
    json_reply,
    protocol_failed,
    read_body,
    unknown_session,
)

log = logging.getLogger("rtbench.sessions")


class Session:
    """A hub connection addressed by id from plain HTTP requests.

    `idle_since` is the loop time since which no client holds the session (no SSE
    stream, no waiting poll); None while one does. The reaper closes sessions idle
    for longer than `session_ttl`.
    """

    __slots__ = ("conn", "idle_since")

    def __init__(self, conn: Connection, idle_since: float | None) -> None:
        self.conn = conn
        self.idle_since = idle_since

    def replied(self, cmd: Command, reply: Event) -> bool:
        """`cmd` succeeded with `reply` (a hook for the stream); True if that overflowed
        the outbox (a slow consumer the hook dropped)."""
        return False


S = TypeVar("S", bound=Session)


def close_body(reason: CloseReason) -> dict[str, Any]:
    """`{"code": .., "reason": ..}` of a server-side close (section 6 of the protocol)."""
    return {"code": int(reason), "reason": reason.text}


def requested_cursor(req: RequestView, last_event_id: bool = False) -> str | None:
    """The raw resume cursor of a connect request, if any: `?resume=`, else the
    `X-Rtbench-Resume` header. With `last_event_id` (SSE) a non-empty `Last-Event-ID`
    comes first: a browser's EventSource sends back the last `id:` it saw when it
    reconnects, to the URL it was made with, whose `?resume=` is then stale."""
    if last_event_id:
        raw = req.headers.get("last-event-id")
        if raw:
            return raw
    return req.query.get(RESUME_PARAM) or req.headers.get(RESUME_HEADER) or None


class SessionRegistry(Generic[S]):
    """The sessions of one transport: open, find (auth + owner), close, reap, drain."""

    def __init__(self, ctx: Context, make: Callable[[Connection, float, Cursor | None], S],
                 reap: bool = True) -> None:
        self.ctx = ctx
        self.hub: Hub = ctx.hub
        self._make = make
        self._sessions: dict[str, S] = {}
        self._ttl = ctx.settings.session_ttl if reap else 0.0  # 0: never reap
        self._reaper: asyncio.Task[None] | None = None
        self._draining = False
        ctx.on_exit_signal.append(self.drain)

    async def open(self, req: RequestView, raw_cursor: str | None = None) -> S | Reply:
        """Authenticate and open a hub connection, resumed from `raw_cursor` (the wire form)
        when given; an error reply if that fails (400 `bad_cursor` for a bad cursor)."""
        try:
            user = self.ctx.authenticate(req)
        except AuthError as exc:
            return auth_failed(exc)
        try:
            cursor = decode_cursor(raw_cursor, self.hub.limits) if raw_cursor else None
            conn = await self.hub.open(user, "json", cursor)
        except ProtocolError as exc:  # a bad cursor: refused, nothing opened
            self.hub.stats.errors += 1
            return protocol_failed(exc)
        except BrokerUnavailable as exc:
            return protocol_failed(
                ProtocolError(ErrorCode.UNAVAILABLE, f"fanout layer unavailable: {exc}")
            )
        session = self._make(conn, asyncio.get_running_loop().time(), cursor)
        self._sessions[conn.id] = session
        if self._draining:  # opened between the exit signal and the listener closing
            conn.outbox.close(CloseReason.GOING_AWAY)
        else:
            self._start_reaper()
        return session

    def get(self, conn_id: str) -> S | None:
        return self._sessions.get(conn_id)

    def find(self, req: RequestView, conn_id: str) -> S | Reply:
        """The session `conn_id` (the path's `{conn}`), if the token's user owns it."""
        try:
            user = self.ctx.authenticate(req)
        except AuthError as exc:
            return auth_failed(exc)
        session = self._sessions.get(conn_id)
        if session is None:
            return unknown_session(conn_id)
        if session.conn.user != user:
            return forbidden()
        return session

    async def close(self, session: S) -> None:
        """Forget the session and close its hub connection (idempotent)."""
        if self._sessions.get(session.conn.id) is session:
            del self._sessions[session.conn.id]
        await self.hub.close(session.conn)

    def drain(self, reason: CloseReason = CloseReason.GOING_AWAY) -> None:
        """Close every outbox: streams and polls end with `reason` on their own."""
        self._draining = True  # no more reaping: the process ends them all
        if self._reaper is not None:
            self._reaper.cancel()
        for session in self._sessions.values():
            session.conn.outbox.close(reason)

    async def command(self, req: RequestView, conn_id: str, body: AsyncIterable[bytes]) -> Reply:
        """`POST /<prefix>/{conn}`: one command in `body`, its reply event as the response."""
        found = self.find(req, conn_id)
        if isinstance(found, Reply):
            return found
        hub = self.hub
        try:
            raw = await read_body(req.headers.get("content-length"), body,
                                  hub.limits.max_frame_bytes)
            cmd = parse_command(raw, hub.limits)
            reply = await hub.execute(found.conn, cmd)
            if found.replied(cmd, reply):
                hub.stats.slow_consumers += 1
        except ProtocolError as exc:
            hub.stats.errors += 1
            return protocol_failed(exc)
        except Exception:
            log.exception("command on %s failed", found.conn.id)
            hub.stats.errors += 1
            return internal_error()
        return json_reply(reply.json())

    # -------------------------------------------------------------- reaper

    def _start_reaper(self) -> None:
        ttl = self._ttl
        if ttl > 0 and (self._reaper is None or self._reaper.done()):
            self._reaper = asyncio.create_task(self._reap(ttl), name="session-reaper")

    async def _reap(self, ttl: float) -> None:
        """Close sessions idle for more than `ttl`; one task per registry, gone when it is empty."""
        loop = asyncio.get_running_loop()
        interval = min(max(ttl / 4, 0.05), 5.0)  # reaped between ttl and ttl + interval
        while self._sessions:
            await asyncio.sleep(interval)
            deadline = loop.time() - ttl
            idle = [
                s for s in self._sessions.values()
                if s.idle_since is not None and s.idle_since < deadline
            ]
            for session in idle:
                try:
                    await self.close(session)
                except Exception:
                    log.exception("reaping %s failed", session.conn.id)
