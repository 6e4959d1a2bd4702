"""WebSocket client (docs/protocol.md 7.1) on the `websockets` asyncio implementation."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from loadgen.aio.base import (
    ABNORMAL,
    Client,
    CloseInfo,
    TokenPlacement,
    auth_headers,
    auth_params,
    base_url,
)
from servers.core.cursor import RESUME_PARAM, encode_cursor

SUBPROTOCOL = Subprotocol("rtbench.v1")


def ws_url(url: str, token: str | None, token_in: TokenPlacement,
           resume: Mapping[str, Any] | None = None) -> str:
    http = base_url(url)
    uri = ("wss" if http.startswith("https") else "ws") + http[http.index("://") :] + "/ws"
    params = auth_params(token, token_in)
    if resume is not None:
        params[RESUME_PARAM] = encode_cursor(resume)
    return uri + (f"?{urlencode(params)}" if params else "")


class WsClient(Client):
    transport = "ws"

    def __init__(self, ws: ClientConnection, timeout: float,
                 resume: Mapping[str, Any] | None = None) -> None:
        super().__init__(timeout, resume)
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
        max_queue: int = 256,
        resume: Mapping[str, Any] | None = None,
    ) -> WsClient:
        """Connect, send `first` right after the upgrade, then wait for `welcome`.

        `resume`: a `cursor` of an earlier connection; the server sends what was missed
        since, then the live stream (or closes with 4400 if the cursor is invalid)."""
        protocols = [SUBPROTOCOL]
        if token and token_in == "subprotocol":
            protocols.append(Subprotocol("bearer." + token))
        ws = await ws_connect(
            ws_url(url, token, token_in, resume),
            additional_headers=auth_headers(token, token_in),
            subprotocols=protocols,
            compression=None,  # the server does not deflate either
            proxy=None,
            ping_interval=None,  # the server pings; the library answers
            open_timeout=timeout,
            max_size=None,
            max_queue=max_queue,
        )
        self = cls(ws, timeout, resume)
        try:
            for cmd in first:
                await ws.send(orjson.dumps(cmd), text=True)
        except ConnectionClosed:
            pass  # the reader reports why (e.g. 4401) through the welcome
        await self._await_welcome()
        return self

    async def _read(self) -> None:
        recv = self._ws.recv
        loads = orjson.loads
        deliver = self._deliver
        clock = time.time_ns
        info: CloseInfo | None = None
        try:
            self._set_welcome(loads(await recv(decode=False)))
            while True:
                raw = await recv(decode=False)
                recv_us = clock() // 1000  # before decoding: parsing is not latency
                deliver(loads(raw), recv_us)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            info = CloseInfo(rcvd.code, rcvd.reason) if rcvd else CloseInfo(ABNORMAL, str(exc))
        finally:
            self._finish(info)

    async def _send(self, cmd: dict[str, Any]) -> None:
        await self._ws.send(orjson.dumps(cmd), text=True)

    async def _request(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return await self._stream_request(cmd, self._send)

    async def _send_oneway(self, cmd: dict[str, Any]) -> None:
        await self._send(cmd)

    async def send_raw(self, data: bytes | str) -> int | None:
        await self._ws.send(data)
        return None

    async def close(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            await self._ws.close()
        if not self._reader.done():
            self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
