"""What every transport client shares: the event type, the errors, reply matching and
the event buffer (the HTTP plumbing of the SSE and long-poll clients is `loadgen.aio.http`).

A client delivers each server event exactly once: replies to its own commands go
to the command that waits for them; everything else goes to `on_event` when set
(the benchmarks' hot path, nothing buffered), otherwise to a buffer read with
`next_event`. Every event carries its local receive time in microseconds.

Every client keeps its resume cursor (`client.cursor`, docs/protocol.md "Offsets and
resume") from the events it receives and the rooms it joins and leaves; a new
connection given it as `resume=` gets what was missed, then the live stream.
"""

from __future__ import annotations

import asyncio
import itertools
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from loadgen.wire import CURSOR_TYPES, REPLY_TYPES
from servers.core.cursor import CursorTracker

TokenPlacement = Literal["header", "query", "subprotocol"]

UNAUTHORIZED = 4401
ABNORMAL = 1006  # WebSocket's code for "ended without a close frame"
PROTOCOL_ERROR = 1002  # the server sent what the protocol does not allow (bad JSON...)


@dataclass(slots=True, frozen=True)
class CloseInfo:
    """Why the server ended a connection: a docs/protocol.md section 6 code and a reason."""

    code: int
    reason: str


class ClientError(Exception):
    """Base of the errors this package raises on purpose."""


class CommandError(ClientError):
    """The server answered a command with an `error` (HTTP: a 4xx/5xx status)."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status  # HTTP status on the HTTP transports


class CallbackError(ClientError):
    """`on_event` raised (the exception is the `__cause__`): a bug of the caller's, which
    ends the connection (1006) and goes to the event loop's exception handler."""


class ServerClosed(ClientError):
    """The server refused or ended the connection (`code` as in CloseInfo)."""

    def __init__(self, code: int, reason: str, status: int | str | None = None) -> None:
        super().__init__(f"connection closed by the server: {code} {reason}")
        self.code = code
        self.reason = reason
        self.status = status  # HTTP status (or gRPC status name) of a refused connect


class Received:
    """One server event as received: its type, decoded body and local receive time (us)."""

    __slots__ = ("body", "recv_us", "type")

    def __init__(self, body: dict[str, Any], recv_us: int) -> None:
        self.type: str = body.get("type", "")
        self.body = body
        self.recv_us = recv_us

    def __getitem__(self, key: str) -> Any:
        return self.body[key]

    def __repr__(self) -> str:
        return f"Received({self.body!r}, recv_us={self.recv_us})"


EventCallback = Callable[[Received], None]


def describe(exc: BaseException) -> str:
    """`Type: message` of an exception, for close reasons (reprs of aiohttp's are long)."""
    return f"{type(exc).__name__}: {exc}"


def auth_headers(token: str | None, placement: TokenPlacement = "header") -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token and placement == "header" else {}


def auth_params(token: str | None, placement: TokenPlacement) -> dict[str, str]:
    return {"token": token} if token and placement == "query" else {}


def base_url(url: str) -> str:
    """`http://host:port` from any of `http://`, `ws://`, `grpc://` forms."""
    scheme, sep, rest = url.rstrip("/").partition("://")
    if not sep:
        return "http://" + scheme
    return ("https://" if scheme in ("https", "wss") else "http://") + rest


class Client(ABC):
    """One connection to an rtbench server, the same API on every transport."""

    transport: ClassVar[str]

    def __init__(self, timeout: float, resume: Mapping[str, Any] | None = None) -> None:
        self.timeout = timeout  # for the handshake and for each command reply
        self.welcome: dict[str, Any] = {}
        # the cursor this connection resumed from, advanced by what it receives
        self.tracker = CursorTracker(resume)
        self.on_event: EventCallback | None = None
        self.closed_reason: CloseInfo | None = None  # set when the server ended it
        self._buffer: deque[Received] = deque()
        self._changed = asyncio.Event()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._welcomed: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._done = False  # no event will arrive any more
        self._closing = False  # close() was called

    # ---------------------------------------------------------------- commands

    async def join(self, room: str, presence: bool = False,
                   since: tuple[int, str] | None = None) -> dict[str, Any]:
        """Join `room` (from position `since`: the missed messages first); the ack."""
        cmd: dict[str, Any] = {"type": "join", "room": room}
        if presence:
            cmd["presence"] = True
        if since is not None:
            cmd["since"] = {"offset": since[0], "epoch": since[1]}
        reply = await self._request(cmd)
        self.tracker.joined(room, reply, presence)
        return reply

    async def leave(self, room: str) -> None:
        await self._request({"type": "leave", "room": room})
        self.tracker.left(room)

    @property
    def cursor(self) -> dict[str, Any]:
        """The resume cursor: `{"inbox": [offset, epoch], "rooms": {room: [offset, epoch]}}`,
        the positions of the last events received; pass it as `resume=` to a new connect."""
        return self.tracker.cursor()

    async def publish(self, room: str, data: Any, ack: bool = True) -> None:
        """Publish to `room`; `ack=False` does not wait for the ack where the transport
        allows it (streams: the command goes without an `id`, errors arrive as events)."""
        cmd = {"type": "publish", "room": room, "data": data}
        await (self._request(cmd) if ack else self._send_oneway(cmd))

    async def direct(self, to: str, data: Any, ack: bool = True) -> None:
        cmd = {"type": "direct", "to": to, "data": data}
        await (self._request(cmd) if ack else self._send_oneway(cmd))

    async def ping(self) -> int:
        """Round trip; returns the server's `ts` (microseconds)."""
        return int((await self._request({"type": "ping"}))["ts"])

    async def presence(self, users: Collection[str]) -> dict[str, bool]:
        reply = await self._request({"type": "presence", "users": list(users)})
        return dict(reply["users"])

    @abstractmethod
    async def send_raw(self, data: bytes | str) -> int | None:
        """Send one frame/body as is (bad-input tests). Any reply arrives as an event;
        HTTP transports return the response status, stream transports None."""

    @abstractmethod
    async def close(self) -> None:
        """End the connection from the client side (idempotent)."""

    @abstractmethod
    async def _request(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Send `cmd`, return its reply body; raise CommandError on `error`."""

    async def _send_oneway(self, cmd: dict[str, Any]) -> None:
        await self._request(cmd)

    # ------------------------------------------------------------------ events

    @property
    def closed(self) -> bool:
        return self._done

    async def next_event(
        self,
        types: Collection[str] | str | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 - the one knob tests and benchmarks need
    ) -> Received:
        """The oldest buffered event of one of `types` (any type if None), waiting up to
        `timeout` s. Other events stay buffered. TimeoutError when none comes,
        ServerClosed when the connection ended without one."""
        if isinstance(types, str):
            types = (types,)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for ev in self._buffer:
                if types is None or ev.type in types:
                    self._buffer.remove(ev)
                    return ev
            self._raise_if_done()
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no {types or 'event'} within {timeout} s")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                raise TimeoutError(f"no {types or 'event'} within {timeout} s") from None

    def take_events(self, types: Collection[str] | str | None = None) -> list[Received]:
        """Remove and return every buffered event of `types` without waiting."""
        if isinstance(types, str):
            types = (types,)
        keep: deque[Received] = deque()
        out: list[Received] = []
        for ev in self._buffer:
            (out if types is None or ev.type in types else keep).append(ev)
        self._buffer = keep
        return out

    async def wait_closed(self, timeout: float = 5.0) -> CloseInfo | None:  # noqa: ASYNC109
        """Wait until the connection has ended; returns `closed_reason`."""
        async with asyncio.timeout(timeout):
            while not self._done:
                self._changed.clear()
                await self._changed.wait()
        return self.closed_reason

    # ----------------------------------------------------- for the transports

    def _deliver(self, body: dict[str, Any], recv_us: int) -> None:
        """Route one decoded event (hot path: a dict lookup, then callback or buffer)."""
        kind = body.get("type")
        if kind in REPLY_TYPES:
            ref = body.get("ref")
            if ref is not None:
                fut = self._pending.pop(str(ref), None)
                if fut is not None:
                    if not fut.done():
                        fut.set_result(body)
                    return
        elif kind in CURSOR_TYPES:
            self.tracker.observe(body)
        ev = Received(body, recv_us)
        callback = self.on_event
        if callback is not None:
            try:
                callback(ev)
            except Exception as exc:
                raise CallbackError(f"on_event raised {exc!r}") from exc
            return
        self._buffer.append(ev)
        self._changed.set()

    def _reader_error(self, exc: Exception) -> CloseInfo:
        """Why a reader ended on `exc`: a failing `on_event` (reported to the loop's
        exception handler: it is a bug to show, not a server's doing) or a malformed
        stream (ValueError: bad JSON, bad event stream, bad long-poll batch)."""
        if isinstance(exc, CallbackError):
            asyncio.get_running_loop().call_exception_handler({
                "message": f"{type(self).__name__}.on_event failed",
                "exception": exc.__cause__ or exc})
            return CloseInfo(ABNORMAL, f"event callback failed: {exc.__cause__!r}")
        return CloseInfo(PROTOCOL_ERROR, f"server broke the protocol: {exc}")

    def _set_welcome(self, body: dict[str, Any]) -> None:
        if self._welcomed.done():
            return
        if body.get("type") != "welcome":
            self._welcomed.set_exception(ClientError(f"expected a welcome event, got {body!r}"))
        else:
            self.welcome = body
            self.tracker.observe(body)  # the inbox position, unless resumed from one
            self._welcomed.set_result(body)

    async def _await_welcome(self) -> None:
        try:
            await asyncio.wait_for(self._welcomed, self.timeout)
        except BaseException:
            await self.close()
            raise

    def _raise_if_done(self) -> None:
        """ServerClosed (the server's reason, or 1000 if the client closed) once the
        connection has ended: nothing can be sent or received any more."""
        if self._done:
            info = self.closed_reason or CloseInfo(1000, "closed by the client")
            raise ServerClosed(info.code, info.reason)

    def _finish(self, info: CloseInfo | None) -> None:
        """The event source ended; `info` is the server's reason (None if we closed)."""
        if self._done:
            return
        self._done = True
        if info is not None and not self._closing:
            self.closed_reason = info
        reason = self.closed_reason or CloseInfo(1000, "closed by the client")
        if not self._welcomed.done():
            self._welcomed.set_exception(ServerClosed(reason.code, reason.reason))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ServerClosed(reason.code, reason.reason))
        self._pending.clear()
        self._changed.set()

    async def _stream_request(
        self, cmd: dict[str, Any], send: Callable[[dict[str, Any]], Any]
    ) -> dict[str, Any]:
        """Stream transports: send `cmd` with a fresh `id`, await the reply with that `ref`."""
        self._raise_if_done()
        ref = str(next(self._ids))
        cmd["id"] = ref
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ref] = fut
        try:
            await send(cmd)
            reply = await asyncio.wait_for(fut, self.timeout)
        finally:
            self._pending.pop(ref, None)
        return check_reply(reply)


def check_reply(reply: dict[str, Any], status: int | None = None) -> dict[str, Any]:
    if reply.get("type") == "error":
        raise CommandError(str(reply.get("code")), str(reply.get("message", "")), status)
    return reply


