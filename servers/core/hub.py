"""The hub: registry of connections, users and rooms, and the command handler.

Every delivery takes one path: publish to the broker, receive on the topic
subscription, push to local members' outboxes. The originating replica gets its
own publish back only if it has local members, so each recipient sees a message
exactly once (the seed delivered it twice on the origin: local send plus its
own Redis echo) and all recipients see one order per room.

Each replica subscribes to `room:<r>` only while it has a local member of r,
and to `user:<u>` only while u has a local connection.

With history on (Limits.history_size > 0) room and direct messages are recorded
(`publish_recorded`): each carries its offset and epoch in its stream, and a
joining (or resuming) connection catches up before it goes live (catchup.py).
The hub keeps the last position it delivered per room and inbox, so that when the
broker's subscription broke and is back, what the members missed meanwhile is
replayed from history (heal.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Awaitable
from typing import Any

import orjson

from servers.core.catchup import CatchUp, Read
from servers.core.codec import parse_command
from servers.core.connection import Connection, HubStats
from servers.core.cursor import Cursor, RoomCursor
from servers.core.errors import BrokerUnavailable, ErrorCode, ProtocolError
from servers.core.heal import Healer, LastSeen
from servers.core.outbox import Outbox
from servers.core.presence import Presence, presence_topic
from servers.core.subscriptions import Subscriptions
from servers.core.types import (
    Broker,
    CloseReason,
    Command,
    Direct,
    Event,
    Join,
    Leave,
    Limits,
    Ping,
    Position,
    PresenceQuery,
    Publish,
    Retention,
    now_us,
    room_topic,
    user_topic,
)

log = logging.getLogger("rtbench.hub")

class Hub:
    """Transport-agnostic core; adapters call `open`, `handle`/`execute` and `close`."""

    def __init__(self, broker: Broker, limits: Limits | None = None, server_id: str = "") -> None:
        self.broker = broker
        self.limits = limits or Limits()
        self.server_id = server_id or f"{os.uname().nodename}-{os.getpid()}"
        self.stats = HubStats()
        self._conns: dict[str, Connection] = {}
        self._users: dict[str, set[Connection]] = {}
        self._rooms: dict[str, set[Connection]] = {}
        self._watchers: dict[str, set[Connection]] = {}
        self._topics = Subscriptions(broker, self._spawn)
        self._presence = Presence(broker, self._spawn)
        self._catchup = CatchUp(broker, self.limits)
        # room/user topic -> the last event delivered here, or the first member's join position
        self._last: LastSeen = {}
        self._healer = Healer(self._catchup, self._last, self._outboxes, self._spawn,
                              self.stats)
        self._ids = itertools.count(1)
        self._background: set[asyncio.Task[Any]] = set()
        self.draining: CloseReason | None = None  # set by drain(): the process is stopping

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        lim = self.limits
        self.broker.watch_resubscribe(self._healer.resubscribed)
        await self.broker.start(self._on_message, Retention(lim.history_size, lim.history_ttl))

    def drain(self, reason: CloseReason = CloseReason.GOING_AWAY) -> None:
        """Tell every connection, and any opened from now on, to go away (adapters close
        them with `reason`); the broker keeps running for what is in flight."""
        self.draining = reason
        for conn in list(self._conns.values()):
            conn.outbox.close(reason)

    async def shutdown(self, reason: CloseReason = CloseReason.GOING_AWAY) -> None:
        """Tell every connection to go away (adapters close them), then stop the broker."""
        self.drain(reason)
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        await self.broker.close()

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    def queued_events(self) -> int:
        return sum(len(c.outbox) for c in self._conns.values())

    # ---------------------------------------------------------- connections

    async def open(self, user: str, fmt: str = "json", cursor: Cursor | None = None,
                   ) -> Connection:
        """Register a connection for an authenticated `user`; its outbox starts with `welcome`.

        With a resume `cursor`, the inbox catches up from the cursor's position and the
        cursor's rooms are joined again from theirs before this returns.
        Raises BrokerUnavailable if the user's topic cannot be subscribed, ProtocolError
        (BAD_CURSOR) for a cursor listing more than `max_rooms` rooms.
        """
        lim = self.limits
        if cursor is not None and len(cursor.rooms) > lim.max_rooms:
            raise ProtocolError(ErrorCode.BAD_CURSOR, f"the cursor lists {len(cursor.rooms)} "
                                f"rooms; a connection may join at most {lim.max_rooms}")
        conn_id = f"{self.server_id}-{next(self._ids)}"
        conn = Connection(conn_id, user, fmt, Outbox(lim.outbox_max_events, lim.outbox_max_bytes))
        topic = user_topic(user)
        await self._topics.acquire(topic)
        since = cursor.inbox if cursor is not None else None
        try:
            read = await self._catchup.read(conn.outbox, topic, since)
        except BaseException:
            self._topics.release(topic)
            raise
        conn.outbox.push(self._welcome(conn_id, user, read.position))
        self.stats.deliveries += self._catchup.replay(conn.outbox, read, since, {"inbox": True})
        self._conns[conn_id] = conn
        self._track(topic, conn, read, user not in self._users)
        self._users.setdefault(user, set()).add(conn)
        self.stats.connections_opened += 1
        self._spawn(self._presence.connection_delta(user, 1))
        if self.draining is not None:
            conn.outbox.close(self.draining)  # welcome, then goodbye
        elif cursor is not None and cursor.rooms:
            try:
                await self._rejoin(conn, cursor.rooms)
            except BaseException:
                await self.close(conn)
                raise
        return conn

    async def _rejoin(self, conn: Connection, rooms: tuple[RoomCursor, ...]) -> None:
        """Join a resumed connection's rooms again, each from its position, concurrently."""
        results = await asyncio.gather(
            *(self._join(conn, Join(r.room, presence=r.presence, since=r.since)) for r in rooms),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _welcome(self, conn_id: str, user: str, inbox: Position | None) -> Event:
        lim = self.limits
        body: dict[str, Any] = {
            "type": "welcome",
            "conn": conn_id,
            "user": user,
            "server": self.server_id,
            "limits": {
                "max_frame_bytes": lim.max_frame_bytes,
                "max_rooms": lim.max_rooms,
                "outbox_max_events": lim.outbox_max_events,
                "outbox_max_bytes": lim.outbox_max_bytes,
            },
        }
        if inbox is not None:
            body["inbox"] = _position_fields(inbox)
        return Event(body)

    async def close(self, conn: Connection) -> None:
        """Unregister `conn`: leave its rooms, drop subscriptions nobody local needs."""
        if self._conns.pop(conn.id, None) is None:
            return
        self.stats.connections_closed += 1
        if conn.outbox.close_reason is None:
            conn.outbox.close(CloseReason.NORMAL)
        for room in list(conn.rooms):
            self._leave_local(conn, room)
            self._spawn(self._presence.member_delta(room, conn.user, -1))
        users = self._users.get(conn.user)
        if users is not None:
            users.discard(conn)
            if not users:
                del self._users[conn.user]
                self._last.pop(user_topic(conn.user), None)
        self._catchup.unfence(user_topic(conn.user), conn.outbox)
        self._topics.release(user_topic(conn.user))
        self._spawn(self._presence.connection_delta(conn.user, -1))

    def get(self, conn_id: str) -> Connection | None:
        return self._conns.get(conn_id)

    # ------------------------------------------------------------- commands

    async def handle_raw(self, conn: Connection, raw: bytes | str) -> None:
        """Stream transports: decode a JSON frame and handle it; errors become events."""
        try:
            cmd = parse_command(raw, self.limits)
        except ProtocolError as exc:
            self.reply_error(conn, exc)
            return
        await self.handle(conn, cmd)

    async def handle(self, conn: Connection, cmd: Command) -> None:
        """Stream transports: run `cmd`; replies go to the outbox.

        `ack` is sent only for commands that carry an `id`; `pong` and
        `presence_state` always; failures always as `error`.
        """
        try:
            reply = await self.execute(conn, cmd)
        except ProtocolError as exc:
            self.reply_error(conn, exc)
            return
        if cmd.ref is not None or reply.body["type"] != "ack":
            conn.outbox.push(reply)

    def reply_error(self, conn: Connection, exc: ProtocolError) -> None:
        """Stream transports: report a frame the adapter itself could not decode."""
        self.stats.errors += 1
        conn.outbox.push(Event(exc.body()))

    async def execute(self, conn: Connection, cmd: Command) -> Event:
        """Run `cmd` for `conn` and return the reply event; raises ProtocolError."""
        self.stats.commands += 1
        try:
            if isinstance(cmd, Publish):
                if cmd.room not in conn.rooms:
                    raise ProtocolError(
                        ErrorCode.NOT_MEMBER, f"join room {cmd.room!r} before publishing", cmd.ref
                    )
                body = {
                    "type": "message",
                    "room": cmd.room,
                    "from": conn.user,
                    "data": cmd.data,
                    "ts": now_us(),
                }
                return await self._publish(room_topic(cmd.room), body, cmd.ref)
            elif isinstance(cmd, Direct):
                body = {
                    "type": "direct",
                    "from": conn.user,
                    "to": cmd.to,
                    "data": cmd.data,
                    "ts": now_us(),
                }
                return await self._publish(user_topic(cmd.to), body, cmd.ref)
            elif isinstance(cmd, Join):
                return _reply("ack", cmd.ref, **_position_fields(await self._join(conn, cmd)))
            elif isinstance(cmd, Leave):
                if cmd.room not in conn.rooms:
                    raise ProtocolError(
                        ErrorCode.NOT_MEMBER, f"not a member of room {cmd.room!r}", cmd.ref
                    )
                self._leave_local(conn, cmd.room)
                # awaited (not spawned) so that a user's join/leave edges reach the
                # counters in command order, even across replicas
                await self._presence.member_delta(cmd.room, conn.user, -1)
            elif isinstance(cmd, Ping):
                return _reply("pong", cmd.ref, ts=now_us())
            elif isinstance(cmd, PresenceQuery):
                online = await self._presence.online(cmd.users)
                return _reply("presence_state", cmd.ref, users=online)
        except BrokerUnavailable as exc:
            raise ProtocolError(
                ErrorCode.UNAVAILABLE, f"fanout layer unavailable, command not done: {exc}", cmd.ref
            ) from None
        return _reply("ack", cmd.ref)

    async def _publish(self, topic: str, body: dict[str, Any], ref: Any) -> Event:
        """Publish (recorded when history is on: the ack then says where it landed)."""
        if self.limits.history:
            pos = await self.broker.publish_recorded(topic, orjson.dumps(body))
            self.stats.published += 1
            return _reply("ack", ref, offset=pos.offset, epoch=pos.epoch)
        await self.broker.publish(topic, Event(body).json())
        self.stats.published += 1
        return _reply("ack", ref)

    async def _join(self, conn: Connection, cmd: Join) -> Position | None:
        """Join (a no-op for a member); the room's position for the ack (None: history off)."""
        room = cmd.room
        while room not in conn.rooms:  # already a member: a no-op
            pending = conn.joining.get(room) if conn.joining else None
            if pending is None:
                return await self._join_new(conn, cmd)
            # the same room is being joined by a concurrent command of this connection
            # (HTTP transports run them concurrently): ack only once that join took
            # effect; if it failed, try again (and fail) on our own
            await asyncio.shield(pending)
        return await self.broker.position(room_topic(room)) if self.limits.history else None

    async def _join_new(self, conn: Connection, cmd: Join) -> Position | None:
        room = cmd.room
        joining = conn.joining
        # a join still counting its member is in both rooms and joining: count it once
        taken = len(conn.rooms.union(joining)) if joining else len(conn.rooms)
        if taken >= self.limits.max_rooms:
            raise ProtocolError(
                ErrorCode.TOO_MANY_ROOMS,
                f"a connection may join at most {self.limits.max_rooms} rooms",
                cmd.ref,
            )
        # pending joins stay out of conn.rooms: a close or leave meanwhile must not undo
        # (uncount, announce, release) a membership that never took effect
        if joining is None:
            joining = conn.joining = {}
        done = joining[room] = asyncio.get_running_loop().create_future()
        try:
            return await self._subscribe_room(conn, cmd)
        finally:
            del joining[room]
            if not joining:
                conn.joining = None
            done.set_result(None)

    async def _subscribe_room(self, conn: Connection, cmd: Join) -> Position | None:
        """Subscribe what a member needs, catch up, then register it: all or nothing."""
        room = cmd.room
        topics = [room_topic(room)]
        if cmd.presence:
            topics.append(presence_topic(room))
        acquired: list[str] = []
        try:
            for topic in topics:
                await self._topics.acquire(topic)
                acquired.append(topic)
            if conn.id in self._conns:
                read = await self._catchup.read(conn.outbox, topics[0], cmd.since)
        except BaseException:
            for topic in acquired:
                self._topics.release(topic)
            raise
        if conn.id not in self._conns:  # closed while subscribing or reading
            for topic in acquired:
                self._topics.release(topic)
            return None
        self.stats.deliveries += self._catchup.replay(conn.outbox, read, cmd.since, {"room": room})
        self._track(topics[0], conn, read, room not in self._rooms)
        conn.rooms.add(room)
        self._rooms.setdefault(room, set()).add(conn)
        if cmd.presence:
            if conn.watching is None:
                conn.watching = set()
            conn.watching.add(room)
            self._watchers.setdefault(room, set()).add(conn)
        await self._presence.member_delta(room, conn.user, 1)
        return read.position

    def _leave_local(self, conn: Connection, room: str) -> None:
        conn.rooms.discard(room)
        members = self._rooms.get(room)
        if members is not None:
            members.discard(conn)
            if not members:
                del self._rooms[room]
                self._last.pop(room_topic(room), None)
        self._catchup.unfence(room_topic(room), conn.outbox)
        self._topics.release(room_topic(room))
        if conn.watching is not None and room in conn.watching:
            conn.watching.discard(room)
            watchers = self._watchers.get(room)
            if watchers is not None:
                watchers.discard(conn)
                if not watchers:
                    del self._watchers[room]
            self._topics.release(presence_topic(room))

    def _track(self, topic: str, conn: Connection, read: Read, first: bool) -> None:
        """A member registered with what `read` replayed: where it is in the stream."""
        pos = read.last()
        if pos is None:
            return  # history off
        if first:  # the local members' position is its own
            self._last[topic] = pos
        self._catchup.fence(topic, conn.outbox, pos)
        self._healer.joined(topic, conn.outbox, pos)

    def _outboxes(self, topic: str) -> list[Outbox]:
        """The outboxes of a room's or a user's local members."""
        kind, _, name = topic.partition(":")
        members = self._rooms.get(name) if kind == "room" else self._users.get(name)
        return [c.outbox for c in members] if members else []

    # ------------------------------------------------------ background work

    def _spawn(self, coro: Awaitable[Any]) -> None:
        """Run broker bookkeeping in the background; failures are logged, never raised."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("broker bookkeeping failed: %r", exc)

    # ------------------------------------------------------------- delivery

    def _on_message(self, topic: str, payload: bytes) -> None:
        """Broker callback: push one shared Event to every local recipient."""
        kind, _, name = topic.partition(":")
        if kind == "room":
            targets = self._rooms.get(name)
        elif kind == "user":
            targets = self._users.get(name)
        elif kind == "presence":
            targets = self._watchers.get(name)
        else:
            return
        self.stats.broker_messages += 1
        holding = self._catchup.holding  # connections catching up: rare, mostly empty
        if holding and topic in holding:
            event = Event.from_json(payload)
            self.stats.slow_consumers += self._catchup.hold(topic, event)
            if not targets or topic in self._catchup.suspended:  # healing: held for it
                return
        elif not targets:
            return
        else:
            event = Event.from_json(payload)
        fences = self._catchup.fences  # just caught up: rare, mostly empty
        if fences and topic in fences:
            skip = self._catchup.fenced(topic, event)
            targets = {c for c in targets if c.outbox not in skip}
            if not targets:
                return
        if kind != "presence":
            self._last[topic] = payload  # for a heal (heal.py); decoded only then
        delivered = 0
        for conn in targets:
            outbox = conn.outbox
            if outbox.close_reason is None:
                if outbox.push(event):
                    delivered += 1
                else:
                    self.stats.slow_consumers += 1
        self.stats.deliveries += delivered


def _position_fields(pos: Position | None) -> dict[str, Any]:
    return {} if pos is None else {"offset": pos.offset, "epoch": pos.epoch}


def _reply(kind: str, ref: Any, **fields: Any) -> Event:
    body: dict[str, Any] = {"type": kind}
    if ref is not None:
        body["ref"] = ref
    body.update(fields)
    return Event(body)
