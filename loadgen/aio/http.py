"""The HTTP side of the SSE and long-poll clients, on aiohttp: a `ClientSession` (its
keep-alive pool) of the client's own or shared by many, commands as `POST`s whose
response is the reply (docs/protocol.md 7.2, 7.3), and the refusal of a connect.

`http=`: an `aiohttp.ClientSession` shared by several clients (they do not close it;
`http_session()` makes one fit for many clients), or None for one of the client's own.
Anything else (an httpx.AsyncClient, or the pool of the hand-written HTTP client this
option used to take) is ignored with a DeprecationWarning.

Failures: `ServerClosed(1006, why)` when a request cannot be sent or its response
breaks off; `TimeoutError` when a response does not come within the client's
`timeout` (aiohttp closes that connection: its state is unknown).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from yarl import URL

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
    describe,
)
from loadgen.wire import error_body, http_reply
from servers.core.types import CloseReason, now_us

BAD_REQUEST = int(CloseReason.BAD_REQUEST)  # 4400: a refused resume cursor
# Seconds an idle pooled connection is kept. Below the servers' keep-alive (at least
# 5 s, servers/transports/context.keepalive_timeout), so the client always closes an
# idle connection first and never sends a command on one the server is closing (a
# POST would then fail: aiohttp retries only idempotent requests).
KEEPALIVE = 4.0
# an event stream or a held poll: no deadline for the body
STREAMING = aiohttp.ClientTimeout(total=None, sock_read=None)


def http_session() -> aiohttp.ClientSession:
    """A ClientSession fit for many rtbench clients: no connection limit (each event
    stream or held poll keeps a connection), idle connections closed after KEEPALIVE
    seconds, no cookies, no User-Agent or Accept-Encoding. Create it in a running loop;
    `await session.close()` when done."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                 skip_auto_headers=("User-Agent", "Accept-Encoding"))


def session_of(http: object, stacklevel: int = 2) -> tuple[aiohttp.ClientSession, bool]:
    """(the session to use, whether the client owns it) for an `http=` option;
    `stacklevel` of the warning, counted from this function's caller."""
    if isinstance(http, aiohttp.ClientSession):
        return http, False
    if http is not None:
        warnings.warn(f"http={type(http).__name__}: expected an aiohttp.ClientSession; "
                      "ignored, the client uses a session of its own",
                      DeprecationWarning, stacklevel=stacklevel + 1)
    return http_session(), True


def refused(status: int, body: bytes) -> ServerClosed:
    """ServerClosed for a refused HTTP connect: 401 maps to close code 4401, a refused
    resume cursor (400 `bad_cursor`) to 4400 with reason `bad_cursor: <message>`,
    anything else to 1011."""
    err = error_body(status, body)
    message = str(err.get("message", ""))
    if status == 400 and err.get("code") == "bad_cursor":
        return ServerClosed(BAD_REQUEST, f"bad_cursor: {message}", status)
    return ServerClosed(UNAUTHORIZED if status == 401 else 1011, message, status)


class HttpSessionClient(Client):
    """SSE and long-poll: a server session whose commands are `POST`s to `command_url`."""

    def __init__(self, url: str, token: str | None, token_in: TokenPlacement, timeout: float,
                 http: object, resume: Mapping[str, Any] | None = None) -> None:
        super().__init__(timeout, resume)
        self._base = URL(base_url(url))
        # the warning names the caller of connect(): __init__ <- open <- connect <- caller
        self._session, self._owns_session = session_of(http, stacklevel=4)
        self._headers: dict[str, str] = auth_headers(token, token_in)
        self._post_headers = {**self._headers, "content-type": "application/json"}
        self._query = auth_params(token, token_in)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.command_url = self._base

    def url_for(self, path: str, **params: str) -> URL:
        """`path` on the server, with the token (when it goes in the query) and `params`."""
        query = {**self._query, **params}
        return self._base.with_path(path).with_query(query) if query \
            else self._base.with_path(path)

    async def _send(self, method: str, url: URL, body: bytes | None = None) -> tuple[int, bytes]:
        """One request through the pool: (status, whole body)."""
        headers = self._post_headers if method == "POST" else self._headers
        try:
            async with self._session.request(method, url, data=body, headers=headers,
                                             timeout=self._timeout) as resp:
                return resp.status, await resp.read()
        except TimeoutError:  # aiohttp's timeouts are TimeoutErrors (some ClientErrors too)
            raise TimeoutError(f"no response to {method} {url.path} within {self.timeout} s"
                               ) from None
        except aiohttp.ClientError as exc:
            raise ServerClosed(ABNORMAL, f"{method} {url.path} failed: {describe(exc)}") from None

    async def _request(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self._raise_if_done()
        status, body = await self._send("POST", self.command_url, orjson.dumps(cmd))
        return check_reply(http_reply(status, body), status)

    async def send_raw(self, data: bytes | str) -> int | None:
        self._raise_if_done()
        status, body = await self._send("POST", self.command_url,
                                        data.encode() if isinstance(data, str) else data)
        if body:
            self._deliver(http_reply(status, body), now_us())
        return status

    async def _abandon(self) -> None:
        """Close a client whose open failed; nobody will await its welcome any more."""
        await self.close()
        if self._welcomed.done() and not self._welcomed.cancelled():
            self._welcomed.exception()  # retrieved: no "exception never retrieved" log

    async def _close_session(self) -> None:
        if self._owns_session:
            self._owns_session = False
            await self._session.close()
