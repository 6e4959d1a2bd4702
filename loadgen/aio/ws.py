"""WebSocket client (docs/protocol.md 7.1) on aiohttp's `ws_connect`.

aiohttp costs less client CPU here than the `websockets` library this client used
before: 36.0 vs 43.6 us per message at 10k deliveries/s, 29.6 vs 31.3 at 30k/s, 117 vs
139 us per command (one run, one server, medians of 5 alternating pairs;
results/published/aio-client-cost-20261202.json). Text frames come as bytes
(`decode_text=False`: orjson decodes UTF-8 JSON itself) and commands go as text frames
of orjson's bytes (`send_frame`): nothing is decoded or encoded twice. aiohttp answers
the server's pings. `recv_us` is taken when a frame has been received, before
decoding. A close frame gives the section 6 code; a connection that ends without one
is 1006.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
from aiohttp import WSMsgType

from loadgen.aio.base import (
    ABNORMAL,
    Client,
    CloseInfo,
    ServerClosed,
    TokenPlacement,
    auth_headers,
    auth_params,
    base_url,
    describe,
)
from loadgen.clients.tls import client_context
from servers.core.cursor import RESUME_PARAM, encode_cursor

SUBPROTOCOL = "rtbench.v1"
# Seconds an idle pooled connection is kept (a shared session's handshakes reuse none:
# an upgraded connection never returns to the pool).
KEEPALIVE = 4.0
_DATA = (WSMsgType.TEXT, WSMsgType.BINARY)


def http_session() -> aiohttp.ClientSession:
    """A ClientSession to share among many WebSocket clients (`http=`): no connection
    limit (aiohttp's default, 100, would hold the 101st handshake until one closes), no
    cookies, no User-Agent or Accept-Encoding. Create it in a running loop;
    `await session.close()` when done."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                 skip_auto_headers=("User-Agent", "Accept-Encoding"))


def session_of(http: object) -> tuple[aiohttp.ClientSession, bool]:
    """(the session to use, whether the client owns it) for an `http=` option: a shared
    ClientSession, or None for one of the client's own; anything else is ignored with a
    DeprecationWarning."""
    if isinstance(http, aiohttp.ClientSession):
        return http, False
    if http is not None:
        warnings.warn(f"http={type(http).__name__}: the WebSocket client takes an "
                      "aiohttp.ClientSession; ignored, the client uses a session of its own",
                      DeprecationWarning, stacklevel=4)  # open <- connect <- caller
    return http_session(), True


def ws_url(url: str, token: str | None, token_in: TokenPlacement,
           resume: Mapping[str, Any] | None = None) -> str:
    http = base_url(url)
    uri = ("wss" if http.startswith("https") else "ws") + http[http.index("://") :] + "/ws"
    params = auth_params(token, token_in)
    if resume is not None:
        params[RESUME_PARAM] = encode_cursor(resume)
    return uri + (f"?{urlencode(params)}" if params else "")


def _close_info(kind: WSMsgType, data: Any, extra: Any) -> CloseInfo:
    """Why the connection ended, from the message (type, data, extra) that ended the reader."""
    if kind is WSMsgType.CLOSE:
        return CloseInfo(int(data), str(extra or ""))
    if kind is WSMsgType.ERROR:  # a WebSocketError carries its close code (1002, 1009)
        return CloseInfo(int(getattr(data, "code", ABNORMAL)), str(data))
    return CloseInfo(ABNORMAL, "connection closed without a close frame")


class WsClient(Client):
    transport = "ws"

    def __init__(self, session: aiohttp.ClientSession, owns_session: bool,
                 ws: aiohttp.ClientWebSocketResponse[bool], timeout: float,
                 resume: Mapping[str, Any] | None = None) -> None:
        super().__init__(timeout, resume)
        self._session = session
        self._owns_session = owns_session
        self._ws = ws
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls,
        url: str,
        token: str | None,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - kept as the per-command reply timeout
        token_in: TokenPlacement = "header",
        first: Sequence[dict[str, Any]] = (),
        http: aiohttp.ClientSession | object | None = None,
        resume: Mapping[str, Any] | None = None,
        tls_ca: str | None = None,
    ) -> WsClient:
        """Connect, send `first` right after the upgrade, then wait for `welcome`.

        `http`: a shared aiohttp.ClientSession (see `session_of`).
        `tls_ca`: for a wss:// (https://) server, the CA file its certificate is verified
        against (None: the system's trust store).
        `resume`: a `cursor` of an earlier connection; the server sends what was missed
        since, then the live stream (or closes with 4400 if the cursor is invalid)."""
        protocols = [SUBPROTOCOL]
        if token and token_in == "subprotocol":
            protocols.append("bearer." + token)
        session, owned = session_of(http)
        uri = ws_url(url, token, token_in, resume)
        tls = client_context(tls_ca) if uri.startswith("wss:") else True
        try:
            async with asyncio.timeout(timeout):
                ws = await session.ws_connect(
                    uri,
                    ssl=tls,
                    protocols=protocols,
                    headers=auth_headers(token, token_in),
                    compress=0,  # the server does not deflate either
                    max_msg_size=0,
                    autoping=True,  # the server pings; aiohttp answers
                    heartbeat=None,
                    decode_text=False,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=timeout),
                )
        except BaseException as exc:
            if owned:
                await session.close()
            if isinstance(exc, TimeoutError):
                raise TimeoutError(f"no WebSocket handshake within {timeout} s") from None
            if isinstance(exc, aiohttp.WSServerHandshakeError):
                raise ServerClosed(ABNORMAL, f"handshake refused: {exc.status} {exc.message}",
                                   exc.status) from None
            if isinstance(exc, aiohttp.ClientError):
                why = f"connect to {url} failed: {describe(exc)}"
                raise ServerClosed(ABNORMAL, why) from None
            raise
        self = cls(session, owned, ws, timeout, resume)
        for cmd in first:
            with contextlib.suppress(ServerClosed):  # the reader reports why (e.g. 4401)
                await self._send(cmd)
        await self._await_welcome()
        return self

    async def _read(self) -> None:
        receive = self._ws.receive
        loads = orjson.loads
        deliver = self._deliver
        clock = time.time_ns
        data = _DATA
        info: CloseInfo | None = None
        try:
            msg = await receive()
            if msg.type in data:
                self._set_welcome(loads(msg.data))
                while (msg := await receive()).type in data:
                    recv_us = clock() // 1000  # before decoding: parsing is not latency
                    deliver(loads(msg.data), recv_us)
            info = _close_info(msg.type, msg.data, msg.extra)
        except Exception as exc:  # bad JSON, or on_event raised
            info = self._reader_error(exc)
            with contextlib.suppress(Exception):
                await self._ws.close(code=1002 if info.code == 1002 else 1011)
        finally:
            self._finish(info)

    async def _write(self, data: bytes, opcode: WSMsgType) -> None:
        self._raise_if_done()
        try:
            await self._ws.send_frame(data, opcode)
        except (ConnectionError, aiohttp.ClientError) as exc:
            info = self.closed_reason or CloseInfo(ABNORMAL, f"send failed: {describe(exc)}")
            raise ServerClosed(info.code, info.reason) from None

    async def _send(self, cmd: dict[str, Any]) -> None:
        await self._write(orjson.dumps(cmd), WSMsgType.TEXT)

    async def _request(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return await self._stream_request(cmd, self._send)

    async def _send_oneway(self, cmd: dict[str, Any]) -> None:
        await self._send(cmd)

    async def send_raw(self, data: bytes | str) -> int | None:
        """Send one frame as is: str as a text frame, bytes as a binary one."""
        if isinstance(data, str):
            await self._write(data.encode(), WSMsgType.TEXT)
        else:
            await self._write(data, WSMsgType.BINARY)
        return None

    async def close(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            await self._ws.close()
        if not self._reader.done():
            self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        if self._owns_session:
            self._owns_session = False
            await self._session.close()
