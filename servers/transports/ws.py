"""WebSocket transport (docs/protocol.md 7.1), on every stack: one JSON command or event
per text frame.

What a stack brings: a way to accept the handshake (with a subprotocol) and a Sender
subclass that sends a text frame and closes with a code and reason; it reads frames
itself and hands each to `hub.handle_raw`. What is here: the handshake's refusals
(4401, 4400, 1011), the sender that writes the outbox to the socket, and the limits
the stack configures its WebSocket with (frame size, keepalive, no compression).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from servers.core.connection import Connection
from servers.core.cursor import RESUME_HEADER, RESUME_PARAM, Cursor, decode_cursor
from servers.core.errors import AuthError, BrokerUnavailable, ProtocolError
from servers.core.hub import Hub
from servers.core.types import CloseReason
from servers.settings import Settings
from servers.transports import eager
from servers.transports.context import Context, RequestView, choose_subprotocol

log = logging.getLogger("rtbench.ws")

Accept = Callable[[str | None], Awaitable[None]]  # accept the handshake with a subprotocol
Close = Callable[[int, str], Awaitable[None]]  # send a close frame: code, reason

# per-connection deflate would compress each broadcast once per recipient; off,
# like the reference fanout, so both sides do the same work
PER_MESSAGE_DEFLATE = False
# how long a connection's end waits for a close frame the server is still writing
CLOSE_WAIT = 5.0


def max_message_size(settings: Settings) -> int:
    """The hard limit on one frame (close 1009 above it): bigger than `max_frame_bytes`,
    so that a frame between the two gets a `too_large` error event and the connection
    lives on (docs/protocol.md 6)."""
    return max(4 * settings.max_frame_bytes, 1 << 20)


def keepalive(settings: Settings) -> float | None:
    """Seconds between pings, and the longest wait for the pong (None: no keepalive)."""
    return settings.heartbeat or None


def reason_text(text: str) -> str:
    """A close reason cut to the 123 bytes a close frame has room for (at a character)."""
    return text.encode()[:123].decode(errors="ignore")


def _cursor(req: RequestView, hub: Hub) -> Cursor | None:
    """The resume cursor of `?resume=` or the `X-Rtbench-Resume` header, if any."""
    raw = req.query.get(RESUME_PARAM) or req.headers.get(RESUME_HEADER)
    return decode_cursor(raw, hub.limits) if raw else None


async def handshake(ctx: Context, req: RequestView, accept: Accept, close: Close,
                    ) -> Connection | None:
    """Authenticate, accept, open the hub connection; None when refused (and closed).

    A refusal comes after the handshake is accepted, so that browsers can read the
    close code and reason: 4401 for a token, 4400 for a resume cursor, 1011 when the
    fanout layer is down.
    """
    subprotocol = choose_subprotocol(req.subprotocols)
    try:
        user = ctx.authenticate(req)
    except AuthError as exc:
        await accept(subprotocol)
        await close(int(CloseReason.UNAUTHORIZED), reason_text(exc.message))
        return None
    await accept(subprotocol)
    hub = ctx.hub
    try:
        return await hub.open(user, "json", _cursor(req, hub))
    except ProtocolError as exc:  # a bad resume cursor: refused like a bad token
        await close(int(CloseReason.BAD_REQUEST), reason_text(f"{exc.code}: {exc.message}"))
    except BrokerUnavailable as exc:
        await close(int(CloseReason.INTERNAL), reason_text(f"unavailable: {exc}"))
    return None


class Sender:
    """Outbox -> socket, started eagerly when events arrive: the frames are written in
    the delivering callback itself, and only a send that has to wait (the client reads
    slower than we write) goes on as a task until the outbox is empty.

    An idle connection holds this small object and no task (about 1 KB less per held
    connection than a permanent pump). When the outbox closes, the socket is closed
    with the outbox's reason once what was queued has been written.

    A stack subclasses it with `send_text` and `close_socket` (a subclass rather than
    callbacks: no extra objects held per connection); `start` once it is built.
    """

    __slots__ = ("conn", "runner")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.runner = eager.Runner()

    async def send_text(self, text: str) -> None:
        """Send one text frame."""
        raise NotImplementedError

    async def close_socket(self, code: int, reason: str) -> None:
        """Send the close frame."""
        raise NotImplementedError

    def start(self) -> None:
        """Write what the outbox holds (the welcome) and whatever lands in it from now on."""
        self.conn.outbox.listen(self.ready)

    def ready(self) -> None:
        self.runner.run(self._drain)

    async def _drain(self) -> None:
        outbox, send = self.conn.outbox, self.send_text
        try:
            while events := outbox.take():
                for ev in events:
                    if outbox.close_reason is CloseReason.SLOW_CONSUMER:
                        outbox.take()  # it fell behind: drop the backlog, say why, go
                        break
                    await send(ev.text())
                del events
            if outbox.close_reason is not None:
                reason = outbox.close_reason
                with contextlib.suppress(Exception):
                    await self.close_socket(int(reason), reason.text)
        except Exception:
            outbox.listen(None)  # the socket is gone; the reader sees the disconnect

    async def stop(self) -> None:
        """The connection ends: stop writing. A close the server started (the outbox
        closed) is let finish, for at most CLOSE_WAIT seconds."""
        outbox = self.conn.outbox
        outbox.listen(None)
        task = self.runner.task
        try:
            if outbox.closed and task is not None and not task.done():
                await asyncio.wait({task}, timeout=CLOSE_WAIT)
        finally:
            task = self.runner.cancel()  # also when the wait itself is cancelled
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
