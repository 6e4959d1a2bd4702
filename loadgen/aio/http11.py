"""A minimal asyncio HTTP/1.1 client for the SSE and long-poll clients: plain `http://`
on loopback, keep-alive, responses parsed by httptools (llhttp, in C).

Kept instead of aiohttp's client (which the WebSocket client uses) because aiohttp is
measurably the bottleneck on these transports: client CPU per message and per command
of both, same run, same server, in results/published/aio-client-cost-20261202.json
(`python -m bench.experiments.aio_client_cost`).

A request here is one `transport.write` and the response is parsed in
`data_received`: no task, no stream object, no per-chunk generator (aiohttp wakes a
task per streamed read and builds a request object and a writer task per request).

- `Connection`: one keep-alive connection, one request at a time: `request()`
  returns the whole response, `stream()` returns the head of a 2xx response and
  then hands each body chunk (de-chunked by httptools) to a callback.
- `Pool`: idle keep-alive connections per origin, lent to one request at a time
  (commands of one client, or of many clients when shared).
- `HttpSessionClient`: what the SSE and long-poll clients share (a session id,
  commands as `POST`s through a pool).

Failures: `ServerClosed(1006, why)` when a connection cannot be opened, breaks,
or carries a malformed response; `TimeoutError` when a response does not come in
time (the connection is closed then: its state is unknown).
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, cast
from urllib.parse import urlencode, urlsplit

import httptools
import orjson

from loadgen.aio.base import (
    ABNORMAL,
    UNAUTHORIZED,
    Client,
    ServerClosed,
    TokenPlacement,
    auth_headers,
    auth_params,
    base_url,
    check_reply,
)
from loadgen.wire import error_body, http_reply
from servers.core.types import CloseReason, now_us

BAD_REQUEST = int(CloseReason.BAD_REQUEST)  # 4400: a refused resume cursor
BodyCallback = Callable[[bytes, int], None]  # a body chunk, its local receive time (us)
EndCallback = Callable[[BaseException | None], None]  # None: the response ended normally


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes


def origin(url: str) -> tuple[str, int, str]:
    """(host, port, Host header) of an `http://host[:port]` URL (`ws://` and bare
    `host:port` accepted too); ValueError for anything served over TLS."""
    split = urlsplit(base_url(url))
    if split.scheme != "http" or not split.hostname:
        raise ValueError(f"{url!r}: only plain http:// servers are supported")
    return split.hostname, split.port or 80, split.netloc


def _head(method: str, target: str, host: str, headers: Mapping[str, str], body: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"host: {host}"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"content-length: {len(body)}")
    text = "\r\n".join(lines)
    if text.count("\n") != len(lines) - 1 or text.count("\r") != len(lines) - 1:
        raise ValueError("a request line or header contains CR or LF")
    return text.encode("latin-1") + b"\r\n\r\n"


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request (or streamed response) at a time."""

    __slots__ = ("_body", "_error", "_headers", "_host", "_lost", "_on_body", "_on_end",
                 "_parser", "_recv_us", "_status", "_stream", "_timer", "_transport",
                 "_waiter", "busy", "keep_alive", "received")

    def __init__(self, host_header: str) -> None:
        self._host = host_header
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._waiter: asyncio.Future[Response] | None = None
        # the callbacks of a request that wants its 2xx body streamed, until the head comes
        self._stream: tuple[BodyCallback, EndCallback] | None = None
        self._on_body: BodyCallback | None = None  # set while a 2xx body streams
        self._on_end: EndCallback | None = None
        self._recv_us = 0
        self._timer: asyncio.TimerHandle | None = None
        self._error: ServerClosed | None = None  # why the connection is unusable
        self._lost: asyncio.Future[None] | None = None
        self.busy = False  # a request was sent and its response has not ended
        self.keep_alive = True
        self.received = 0  # bytes received for the current request

    @classmethod
    async def open(cls, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109
                   host_header: str | None = None) -> Connection:
        conn = cls(host_header or f"{host}:{port}")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: conn, host, port)
        except OSError as exc:
            raise ServerClosed(ABNORMAL, f"connect to {host}:{port} failed: {exc}") from exc
        return conn

    @property
    def usable(self) -> bool:
        """Open, idle and keep-alive: fit for another request."""
        return not self.busy and self.keep_alive and self._error is None \
            and self._transport is not None and not self._transport.is_closing()

    # ------------------------------------------------------------- requests

    def _send(self, method: str, target: str, headers: Mapping[str, str], body: bytes,
              stream: tuple[BodyCallback, EndCallback] | None) -> asyncio.Future[Response]:
        if self._error is not None:
            raise self._error
        if self.busy or self._transport is None:
            raise RuntimeError("connection busy or not open: one request at a time")
        data = _head(method, target, self._host, headers, body)
        self.busy = True
        self.received = 0
        self._status = 0  # no head of this response yet (see connection_lost)
        self._headers = {}
        self._stream = stream
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(data + body if body else data)
        return waiter

    async def request(self, method: str, target: str, headers: Mapping[str, str] = {},
                      body: bytes = b"", timeout: float | None = None,  # noqa: ASYNC109
                      ) -> Response:
        """Send one request and return the complete response."""
        return await self._wait(self._send(method, target, headers, body, None), timeout)

    async def stream(self, method: str, target: str, headers: Mapping[str, str],
                     on_body: BodyCallback, on_end: EndCallback,
                     timeout: float | None = None) -> Response:  # noqa: ASYNC109
        """Send a request whose 2xx body streams: returns the head (empty `body`) once
        it arrives, then calls `on_body(chunk, recv_us)` per received piece and, once,
        `on_end(None)` when the response ends or `on_end(exc)` when the connection
        fails or is closed. Any other status: the complete response, nothing streamed.
        `timeout` bounds the wait for the head only."""
        waiter = self._send(method, target, headers, b"", (on_body, on_end))
        return await self._wait(waiter, timeout)

    async def _wait(self, waiter: asyncio.Future[Response],
                    timeout: float | None) -> Response:  # noqa: ASYNC109
        # one timer handle, cheaper than an asyncio.timeout() context per request
        if timeout is not None:
            self._timer = asyncio.get_running_loop().call_later(timeout, self._expire, timeout)
        try:
            return await waiter
        except asyncio.CancelledError:
            self._abort(ServerClosed(ABNORMAL, "request cancelled"))  # the reply would be stray
            raise
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _expire(self, timeout: float) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError(f"no HTTP response within {timeout} s"))
        self._abort(ServerClosed(ABNORMAL, f"no response within {timeout} s"))

    # -------------------------------------------------------------- closing

    def close(self) -> None:
        """Close now; a streamed response ends with `on_end(ServerClosed)`."""
        self._abort(ServerClosed(ABNORMAL, "connection closed by the client"))

    async def aclose(self) -> None:
        """Close and wait until the socket is released."""
        self.close()
        if self._transport is not None:
            if self._lost is None:
                self._lost = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._lost)

    def _abort(self, error: ServerClosed) -> None:
        """Make the connection unusable, fail what waits on it, release the socket."""
        if self._error is None:
            self._error = error
        transport = self._transport
        if transport is not None and not transport.is_closing():
            # unsent bytes (a body the server refused to read) must not hold the socket
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()
        self._end(self._error)

    def _end(self, error: ServerClosed | None) -> None:
        """The current response is over (complete if `error` is None)."""
        self.busy = False
        waiter, self._waiter = self._waiter, None
        on_end, self._on_end = self._on_end, None
        self._on_body = None
        self._stream = None
        if error is not None and waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if on_end is not None:
            on_end(error)

    # ------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have asyncio.Transport's methods but do not subclass it
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy and self._error is None and self._status and not self._length_known():
            self._finish_response()  # a body delimited by the end of the connection
        why = f"connection lost: {exc!r}" if exc else "connection closed by the server"
        if self._error is None:
            self._error = ServerClosed(ABNORMAL, why)
        self._end(self._error)
        self._transport = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self._abort(ServerClosed(ABNORMAL, f"unsolicited bytes from the server: {data[:80]!r}"))
            return
        self.received += len(data)
        self._recv_us = time.time_ns() // 1000  # before parsing: parsing is not latency
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # raised by our callbacks, i.e. by the body consumer: a bug to show, not to hide
            cause = exc.__context__ or exc
            asyncio.get_running_loop().call_exception_handler(
                {"message": "HTTP body callback failed", "exception": cause, "protocol": self})
            self._abort(ServerClosed(ABNORMAL, f"body callback failed: {cause!r}"))
        except httptools.HttpParserError as exc:
            self._abort(ServerClosed(ABNORMAL, f"malformed HTTP response: {exc}"))

    # ---------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        self._status = 0
        self._headers = {}
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self._headers.get(key)
        self._headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        stream, self._stream = self._stream, None
        if stream is not None and 200 <= self._status < 300:
            self._on_body, self._on_end = stream
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(Response(self._status, self._headers, b""))

    def on_body(self, body: bytes) -> None:
        on_body = self._on_body
        if on_body is not None:
            on_body(body, self._recv_us)
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._finish_response()
        if not self.keep_alive and self._transport is not None:
            self._transport.close()

    def _finish_response(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._status, self._headers, b"".join(self._body)))
        self._body = []
        self._end(None)

    def _length_known(self) -> bool:
        return "content-length" in self._headers or "transfer-encoding" in self._headers


class Pool:
    """Idle keep-alive connections per origin, each lent to one request at a time.

    Concurrent requests get concurrent connections (no limit), sequential ones
    reuse one. Shared by many clients it keeps the server's connection count at
    about the number of requests in flight, as a shared httpx client did.
    """

    __slots__ = ("_closed", "_idle")

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[Connection]] = {}
        self._closed = False

    async def request(self, host: str, port: int, method: str, target: str,
                      headers: Mapping[str, str] = {}, body: bytes = b"",
                      timeout: float | None = None, host_header: str | None = None,  # noqa: ASYNC109
                      ) -> Response:
        idle = self._idle.setdefault((host, port), [])
        while idle:
            conn = idle.pop()
            if conn.usable:
                break
            conn.close()
        else:
            conn = await Connection.open(host, port, timeout, host_header)
            return await self._use(conn, idle, method, target, headers, body, timeout)
        try:
            return await self._use(conn, idle, method, target, headers, body, timeout)
        except ServerClosed:
            if conn.received:
                raise
            # The server closed this idle keep-alive connection as we reused it: it
            # answered nothing, so it read nothing (uvicorn closes only idle ones). Once
            # more on a new connection.
            conn = await Connection.open(host, port, timeout, host_header)
            return await self._use(conn, idle, method, target, headers, body, timeout)

    async def _use(self, conn: Connection, idle: list[Connection], method: str, target: str,
                   headers: Mapping[str, str], body: bytes,
                   timeout: float | None) -> Response:  # noqa: ASYNC109
        try:
            return await conn.request(method, target, headers, body, timeout)
        finally:
            if conn.usable and not self._closed:
                idle.append(conn)
            else:
                conn.close()

    async def aclose(self) -> None:
        """Close the idle connections; connections in use close when their request ends."""
        self._closed = True
        conns = [c for idle in self._idle.values() for c in idle]
        self._idle.clear()
        await asyncio.gather(*(c.aclose() for c in conns))


# ------------------------------------------------------- the rtbench clients' part


def refused(resp: Response) -> ServerClosed:
    """ServerClosed for a refused HTTP connect: 401 maps to close code 4401, a refused
    resume cursor (400 `bad_cursor`) to 4400 with reason `bad_cursor: <message>`,
    anything else to 1011."""
    err = error_body(resp.status, resp.body)
    message = str(err.get("message", ""))
    if resp.status == 400 and err.get("code") == "bad_cursor":
        return ServerClosed(BAD_REQUEST, f"bad_cursor: {message}", resp.status)
    code = UNAUTHORIZED if resp.status == 401 else 1011
    return ServerClosed(code, message, resp.status)


def pool_of(http: object) -> tuple[Pool, bool]:
    """(the pool to use, whether the client owns it) for an `http=` option: a shared
    `Pool`, or None for one of the client's own; anything else (an httpx.AsyncClient,
    which this option used to take) is ignored with a DeprecationWarning."""
    if isinstance(http, Pool):
        return http, False
    if http is not None:
        warnings.warn(f"http={type(http).__name__}: the SSE and long-poll clients take a "
                      "loadgen.aio.http11.Pool; ignored, the client uses a pool of its own",
                      DeprecationWarning, stacklevel=5)  # __init__ <- open <- connect <- caller
    return Pool(), True


class HttpSessionClient(Client):
    """SSE and long-poll: a server session whose commands are `POST`s to `command_path`.

    `http`: a `Pool` shared by several clients (not closed by them), or None for a
    pool of the client's own (see `pool_of`).
    """

    def __init__(self, url: str, token: str | None, token_in: TokenPlacement, timeout: float,
                 http: object, resume: Mapping[str, Any] | None = None) -> None:
        super().__init__(timeout, resume)
        self.host, self.port, self._host_header = origin(url)
        self._pool, self._owns_pool = pool_of(http)
        self._headers: dict[str, str] = auth_headers(token, token_in)
        self._post_headers = {**self._headers, "content-type": "application/json"}
        self._query = urlencode(auth_params(token, token_in))
        self.command_path = ""

    def target(self, path: str, **params: str) -> str:
        """`path` with the token (when it goes in the query) and `params` as a query."""
        query = "&".join(q for q in (self._query, urlencode(params)) if q)
        return f"{path}?{query}" if query else path

    async def connection(self) -> Connection:
        """A new connection of the client's own (an event stream, a poll loop)."""
        return await Connection.open(self.host, self.port, self.timeout, self._host_header)

    async def _send(self, method: str, path: str, body: bytes = b"") -> Response:
        headers = self._post_headers if method == "POST" else self._headers
        return await self._pool.request(self.host, self.port, method, self.target(path),
                                        headers, body, self.timeout, self._host_header)

    async def _request(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self._raise_if_done()
        resp = await self._send("POST", self.command_path, orjson.dumps(cmd))
        return check_reply(http_reply(resp.status, resp.body), resp.status)

    async def send_raw(self, data: bytes | str) -> int | None:
        self._raise_if_done()
        resp = await self._send("POST", self.command_path,
                                data.encode() if isinstance(data, str) else data)
        if resp.body:
            self._deliver(http_reply(resp.status, resp.body), now_us())
        return resp.status

    async def _abandon(self) -> None:
        """Close a client whose open failed; nobody will await its welcome any more."""
        await self.close()
        if self._welcomed.done() and not self._welcomed.cancelled():
            self._welcomed.exception()  # retrieved: no "exception never retrieved" log

    async def _close_pool(self) -> None:
        if self._owns_pool:
            self._owns_pool = False
            await self._pool.aclose()
