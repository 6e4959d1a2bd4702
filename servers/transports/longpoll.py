"""Long-polling transport (docs/protocol.md 7.3).

`POST /lp/connect` opens a session, `GET /lp/{conn}/poll` drains its outbox,
`POST /lp/{conn}` carries a command, `DELETE /lp/{conn}` closes it. A poll body
is the events' cached JSON joined as bytes, never re-encoded per recipient. A
held poll costs no task of its own: it waits inside the request's task.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from servers.core.connection import Connection
from servers.core.errors import ErrorCode, ProtocolError
from servers.core.types import CloseReason, Event
from servers.transports.http import Context, protocol_failed
from servers.transports.sessions import (
    JSON,
    Held,
    Session,
    SessionRegistry,
    close_body,
    requested_cursor,
    unknown_session,
)

EMPTY = b'{"events":[]}'


class PollSession(Session):
    """A session plus the poll waiting on it, so that a newer poll can supersede it.

    `poller` is set only while its task waits in `outbox.get`, so cancelling it
    never interrupts a poll that has already taken events. `handoff` is what the
    superseding poll waits on until the old one has left `outbox.get`: two
    concurrent waiters on one outbox would steal each other's wake-up.
    """

    __slots__ = ("handoff", "poller")

    def __init__(self, conn: Connection, idle_since: float | None) -> None:
        super().__init__(conn, idle_since)
        self.poller: asyncio.Task[object] | None = None
        self.handoff: asyncio.Future[None] | None = None


def _join(events: Sequence[Event]) -> bytes:
    return b"[" + b",".join([ev.json() for ev in events]) + b"]"


def events_body(events: Sequence[Event], closed: CloseReason | None = None) -> bytes:
    """`{"events":[...]}`, plus `"closed":{code, reason}` when the server ended the session."""
    body = b'{"events":' + _join(events)
    if closed is not None:
        body += b',"closed":' + orjson.dumps(close_body(closed))
    return body + b"}"


def connect_body(conn_id: str, events: Sequence[Event]) -> bytes:
    return b'{"conn":' + orjson.dumps(conn_id) + b',"events":' + _join(events) + b"}"


def poll_timeout(raw: str | None, limit: float) -> float:
    """The `timeout` query value in seconds: default and maximum `limit`."""
    if raw is None:
        return limit
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isnan(value) or value < 0:
        raise ProtocolError(
            ErrorCode.BAD_FIELD, f"timeout {raw[:40]!r} must be a number of seconds >= 0"
        )
    return min(value, limit)


def routes(ctx: Context) -> list[BaseRoute]:
    sessions: SessionRegistry[PollSession] = SessionRegistry(
        ctx, lambda conn, now, cursor: PollSession(conn, now))

    async def connect(request: Request) -> Response:
        """The session's first events (`welcome`, then what a resumed one missed)."""
        opened = await sessions.open(request, requested_cursor(request))
        if isinstance(opened, Response):
            return opened
        body = connect_body(opened.conn.id, opened.conn.outbox.take())
        return Response(body, media_type=JSON)

    async def poll(request: Request) -> Response:
        if request.method != "GET":  # a HEAD poll would take events nobody receives
            return Response(status_code=405, headers={"allow": "GET"})
        found = sessions.find(request)
        if isinstance(found, Response):
            return found
        try:
            timeout = poll_timeout(request.query_params.get("timeout"), ctx.settings.poll_timeout)
        except ProtocolError as exc:
            return protocol_failed(exc)
        # Reads the (empty) request message now, so that the check after the
        # wait sees only a disconnect.
        await request.is_disconnected()
        return await _poll(request, found, timeout)

    async def _poll(request: Request, session: PollSession, wait: float) -> Response:
        loop = asyncio.get_running_loop()
        while session.poller is not None:  # supersede the waiting poll
            handoff = session.handoff
            if handoff is None:
                handoff = session.handoff = loop.create_future()
                session.poller.cancel()
            await handoff
        conn = session.conn
        if sessions.get(conn.id) is not session:  # closed while we waited for the handoff
            return unknown_session(conn.id)
        outbox = conn.outbox
        me = asyncio.current_task()
        session.poller = me
        session.idle_since = None
        try:
            await outbox.get(limit=0, max_wait=wait)  # wait only: events stay queued
        except asyncio.CancelledError:
            if session.handoff is None:
                raise  # not superseded: the server is cancelling us
            return Response(EMPTY, media_type=JSON)
        finally:
            session.poller = None
            session.idle_since = loop.time()
            handoff = session.handoff
            if handoff is not None:
                session.handoff = None
                if me is not None and me.cancelling():
                    me.uncancel()  # the cancel was ours, not the server's
                handoff.set_result(None)
        if await request.is_disconnected():
            return Response(EMPTY, media_type=JSON)  # nobody to read it; keep the events
        events = outbox.take()
        reason = outbox.close_reason
        if reason is None:
            return Response(events_body(events), media_type=JSON)
        await sessions.close(session)
        return Response(events_body(events, reason), media_type=JSON)

    async def delete(request: Request) -> Response:
        found = sessions.find(request)
        if isinstance(found, Response):
            return found
        await sessions.close(found)
        return Response(status_code=204)

    return [
        Route("/lp/connect", connect, methods=["POST"]),
        Route("/lp/{conn}/poll", Held(poll), methods=["GET"]),
        Route("/lp/{conn}", sessions.command, methods=["POST"]),
        Route("/lp/{conn}", delete, methods=["DELETE"]),
    ]
