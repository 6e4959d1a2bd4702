"""The client API every transport implements, for gevent (Locust) processes.

    client = WsClient(url, token, on_event)
    welcome = client.connect()          # blocks until `welcome`
    client.join("lobby")                # blocks until the join is acked (effective everywhere)
    client.publish("lobby", payload)    # payload: pre-encoded JSON bytes of `data`
    client.direct("bob", payload)
    client.leave("lobby"); client.close()

Pushed events (`message`, `direct`, `presence`, `error` without a waiting
command...) go to `on_event(event, wire_bytes, recv_us)`, called from the
client's reader greenlet; `recv_us` is the wall time when the read that carried
the event returned, taken before decoding so parsing cost is not latency.

`publish`/`direct` on stream transports (WebSocket, gRPC) are fire-and-forget
frames without `id` (the server sends no ack, errors still come back as events);
on HTTP transports (SSE, long-poll) they are a POST each and block until the
reply, so `publish_blocks` is True and open-loop publishers run them in a pool.

TLS: a server URL of https://, wss:// or grpcs:// is reached over TLS (loadgen.clients.tls),
its certificate verified against `tls_ca` (a PEM CA file; None: the system's trust store);
a certificate that does not verify fails `connect()` with `connect_failed`.

Every client keeps its resume cursor (`client.tracker`, docs/protocol.md 4.1) from
the events it receives and the rooms it joins and leaves, before `on_event` sees
them; `resume()` opens a new connection with it, which gets what was missed (or a
`gap`) and is back in the cursor's rooms when its `welcome` arrives.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

import gevent
import orjson
from gevent.event import AsyncResult, Event

from loadgen.clients.tls import TlsSocket, connect_tls, is_tls_url
from loadgen.measure import now_us
from loadgen.wire import CURSOR_TYPES, REPLY_TYPES
from servers.core.cursor import CursorTracker, encode_cursor

OnEvent = Callable[[dict[str, Any], int, int], None]


class ClientError(Exception):
    """A command failed (`error` event or HTTP error status) or the connection is unusable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectionClosed(ClientError):
    """The connection ended; `code` is the close code of protocol section 6 as text."""


def _ignore(event: dict[str, Any], wire_bytes: int, recv_us: int) -> None:
    return None


def split_url(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else "http://" + url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


class Client(ABC):
    """Common state and the command API; subclasses supply the transport."""

    transport: ClassVar[str]
    publish_blocks: ClassVar[bool] = False

    def __init__(self, url: str, token: str, on_event: OnEvent | None = None,
                 timeout: float = 10.0, resume: Mapping[str, Any] | None = None,
                 tls_ca: str | None = None) -> None:
        self.url = url
        self.tls = is_tls_url(url)  # https://, wss://, grpcs://
        self.tls_ca = tls_ca  # the CA file that verifies the server (None: the system's)
        self.token = token
        self.on_event: OnEvent = on_event or _ignore
        self.timeout = timeout
        # the cursor to open with (wire form, None: a fresh connection), then the live one
        self.resume_cursor = encode_cursor(resume) if resume is not None else None
        self.tracker = CursorTracker(resume)
        self.welcome: dict[str, Any] = {}
        self.connect_us = 0  # time from connect() to the welcome event
        self.closed = Event()
        self.close_code = 0
        self.close_reason = ""
        self._ids = itertools.count(1)
        self._reader: gevent.Greenlet | None = None

    @property
    def conn_id(self) -> str:
        return str(self.welcome.get("conn", ""))

    @property
    def server(self) -> str:
        return str(self.welcome.get("server", ""))

    def connect(self) -> dict[str, Any]:
        """Open the connection and wait for `welcome` (at most `timeout` seconds)."""
        t0 = time.perf_counter_ns()
        with gevent.Timeout(self.timeout, ClientError("timeout", f"no welcome from {self.url}")):
            self.welcome = self._open()
        self.connect_us = (time.perf_counter_ns() - t0) // 1000
        if self.welcome.get("type") != "welcome":
            self.close()
            raise ClientError("bad_welcome", f"expected 'welcome', got {self.welcome!r:.200}")
        self.tracker.observe(self.welcome)  # the inbox position, unless resumed from one
        self._start_reader()
        return self.welcome

    def _start_reader(self) -> None:
        """Deliver the events after the welcome: a reader greenlet of the client's own
        (grpcio, websocket-client's receive path), or the process's reactor
        (`ReactorReader`: ws, sse, long-poll, gRPC over h2)."""
        self._reader = gevent.spawn(self._read_loop)

    # -------------------------------------------------------------- commands

    @property
    def cursor(self) -> dict[str, Any]:
        """The resume cursor's JSON object: the positions of the last events received."""
        return self.tracker.cursor()

    def join(self, room: str, presence: bool = False) -> None:
        cmd: dict[str, Any] = {"type": "join", "room": room}
        if presence:
            cmd["presence"] = True
        self.tracker.joined(room, self.call(cmd), presence)

    def leave(self, room: str) -> None:
        self.call({"type": "leave", "room": room})
        self.tracker.left(room)

    def publish(self, room: str, data: bytes) -> None:
        self.send(b'{"type":"publish","room":%s,"data":%s}' % (orjson.dumps(room), data))

    def direct(self, to: str, data: bytes) -> None:
        self.send(b'{"type":"direct","to":%s,"data":%s}' % (orjson.dumps(to), data))

    def ping(self) -> dict[str, Any]:
        return self.call({"type": "ping"})

    def presence(self, users: list[str]) -> dict[str, bool]:
        reply = self.call({"type": "presence", "users": users})
        return dict(reply.get("users", {}))

    def resume(self) -> Client:
        """Close and return a new connected client for the same user and server, opened
        with this one's cursor: it gets what was published in between (or a `gap` when
        history cannot cover it) and is a member of the same rooms, without joining."""
        self.close()  # first: no event may arrive after the cursor is taken
        fresh = type(self)(self.url, self.token, self.on_event, self.timeout, self.cursor,
                           self.tls_ca)
        fresh.connect()
        return fresh

    @abstractmethod
    def call(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Run a command and return its reply; raises ClientError for an `error` reply."""

    @abstractmethod
    def send(self, frame: bytes) -> None:
        """Send one encoded command without waiting for an ack (stream) / ignoring it (HTTP)."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection; idempotent."""

    # ------------------------------------------------------------- subclass

    @abstractmethod
    def _open(self) -> dict[str, Any]:
        """Connect and return the first event (the welcome)."""

    def _read_loop(self) -> None:
        """Deliver events until the connection ends; then call `_ended` (greenlet readers)."""
        raise NotImplementedError

    def _ended(self, code: int, reason: str) -> None:
        if not self.closed.is_set():
            self.close_code, self.close_reason = code, reason
            self.closed.set()


class StreamClient(Client):
    """WebSocket and gRPC: commands and replies share one stream, matched by `id`/`ref`."""

    def __init__(self, url: str, token: str, on_event: OnEvent | None = None,
                 timeout: float = 10.0, resume: Mapping[str, Any] | None = None,
                 tls_ca: str | None = None) -> None:
        super().__init__(url, token, on_event, timeout, resume, tls_ca)
        self._pending: dict[str, AsyncResult] = {}

    def call(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if self.closed.is_set():
            raise ConnectionClosed(str(self.close_code), self.close_reason or "closed")
        ref = str(next(self._ids))
        waiter = self._pending[ref] = AsyncResult()
        try:
            self._send_command({**cmd, "id": ref})
            reply: dict[str, Any] = waiter.get(timeout=self.timeout)
        except gevent.Timeout:
            raise ClientError("timeout", f"no reply to {cmd['type']} in {self.timeout}s") from None
        finally:
            self._pending.pop(ref, None)
        if reply.get("type") == "error":
            raise ClientError(str(reply.get("code")), str(reply.get("message")))
        return reply

    def _dispatch(self, ev: dict[str, Any], wire_bytes: int, recv_us: int) -> None:
        kind = ev.get("type")
        if kind in CURSOR_TYPES:
            self.tracker.observe(ev)
        elif kind in REPLY_TYPES:
            waiter = self._pending.get(str(ev.get("ref")))
            if waiter is not None:
                waiter.set(ev)
                return
        self.on_event(ev, wire_bytes, recv_us)

    def _ended(self, code: int, reason: str) -> None:
        super()._ended(code, reason)
        err = ConnectionClosed(str(code), reason or "connection closed")
        for waiter in list(self._pending.values()):
            waiter.set_exception(err)

    @abstractmethod
    def _send_command(self, cmd: dict[str, Any]) -> None:
        """Encode and send a command dict."""


class ReactorReader:
    """An event stream read by the process's reactor (loadgen.clients.reactor): the client
    implements `data_received`/`connection_lost`, `_start_reading(fd)` registers it and
    `_stop_reading()` (before the socket closes) takes it off.

    Over TLS (`_tls` set) the reactor's raw reads go through `TlsReader`, and what the
    handshake's reads decrypted beyond what they consumed is delivered first."""

    _read_fd = -1
    _tls: TlsSocket | None = None

    def _start_reading(self, fd: int) -> None:
        from loadgen.clients.reactor import reactor

        self._read_fd = fd
        tls = self._tls
        reactor().add(fd, self if tls is None else TlsReader(tls, self))  # type: ignore[arg-type]
        if tls is not None:
            early = tls.pending()
            if early and not self.data_received(early, now_us()):  # type: ignore[attr-defined]
                self._stop_reading()

    def _stop_reading(self) -> None:
        from loadgen.clients.reactor import reactor

        fd, self._read_fd = self._read_fd, -1
        if fd >= 0:
            reactor().remove(fd)


class TlsReader:
    """The reactor's reader of a TLS stream: decrypts, then hands the plaintext on."""

    __slots__ = ("reader", "tls")

    def __init__(self, tls: TlsSocket, reader: Any) -> None:
        self.tls = tls
        self.reader = reader

    def data_received(self, data: bytes, recv_us: int) -> bool:
        try:
            plain = self.tls.decrypt(data)
        except ssl.SSLZeroReturnError:  # the server closed the TLS session
            self.reader.connection_lost(None)
            return False
        except OSError as exc:  # ssl.SSLError: a broken record, a failed write
            self.reader.connection_lost(exc)
            return False
        if not plain:
            return True  # a record not complete yet, or a session ticket
        keep: bool = self.reader.data_received(plain, recv_us)
        return keep

    def connection_lost(self, exc: Exception | None) -> None:
        self.reader.connection_lost(exc)


class RawSocket(ReactorReader):
    """A client whose event stream is a TCP socket of its own (gevent's, once patched),
    read by the process's reactor: SSE, long-poll polls and gRPC over h2; a `TlsSocket`
    on it for a TLS server (offering `ALPN`)."""

    ALPN: ClassVar[tuple[str, ...]] = ()
    _sock: socket.socket | TlsSocket | None = None
    tls: bool
    tls_ca: str | None

    def _connect_socket(self, host: str, port: int, timeout: float,
                        ) -> socket.socket | TlsSocket:
        """Connect and, for a TLS server, shake hands (all within `timeout`), TCP_NODELAY;
        ClientError `connect_failed` (a certificate that does not verify among them)."""
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ClientError("connect_failed", f"{host}:{port}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn: socket.socket | TlsSocket = sock
        if self.tls:
            try:
                conn = self._tls = connect_tls(sock, host, self.tls_ca, self.ALPN)
            except OSError as exc:
                sock.close()
                raise ClientError("connect_failed", f"{host}:{port}: TLS: {exc}") from None
        conn.settimeout(None)  # the caller's gevent.Timeout bounds the handshake
        self._sock = conn
        return conn

    @contextlib.contextmanager
    def _handshake(self, url: str, errors: tuple[type[Exception], ...]) -> Iterator[None]:
        """Close the socket if the handshake fails; `errors` become `connect_failed`."""
        try:
            yield
        except errors as exc:
            self._abort()
            raise ClientError("connect_failed", f"{url}: {exc}") from None
        except BaseException:  # ClientError, or the connect() timeout
            self._abort()
            raise

    def _abort(self) -> None:
        self._stop_reading()  # first: the descriptor's number may be reused once closed
        sock, self._sock = self._sock, None
        self._tls = None
        if sock is not None:
            sock.close()
