"""Long-polling client (docs/protocol.md 7.3): POST /lp/connect, a poll loop, one
POST per command, DELETE to close."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from loadgen.aio.base import (
    ABNORMAL,
    CloseInfo,
    HttpCommandClient,
    TokenPlacement,
    decode_body,
    refused,
)


class LongPollClient(HttpCommandClient):
    transport = "longpoll"

    poll_timeout = 25.0
    _conn_url = ""
    _poller: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        token: str | None,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - kept as the per-command reply timeout
        token_in: TokenPlacement = "header",
        first: Sequence[dict[str, Any]] = (),
        http: httpx.AsyncClient | None = None,
        poll_timeout: float = 25.0,
    ) -> LongPollClient:
        """Create the session (its response carries `welcome`), send `first`, start polling."""
        self = cls(url, token, token_in, timeout, http)
        self.poll_timeout = poll_timeout
        try:
            resp = await self._http.post(
                self.base + "/lp/connect", headers=self._headers, params=self._params
            )
        except BaseException:
            await self._close_http()
            raise
        if resp.status_code != 200:
            await self._close_http()
            raise refused(resp)
        body = decode_body(resp)
        self._conn_url = f"{self.base}/lp/{body['conn']}"
        self.command_url = self._conn_url
        events = body.get("events") or [{}]
        self._set_welcome(events[0])
        if self._welcomed.exception() is not None:
            await self.close()
            await self._welcomed  # raises why
        for cmd in first:
            await self.send_raw(orjson.dumps(cmd))
        recv_us = time.time_ns() // 1000
        for ev in events[1:]:
            self._deliver(ev, recv_us)
        self._poller = asyncio.create_task(self._poll())
        return self

    async def _poll(self) -> None:
        get = self._http.get
        url = self._conn_url + "/poll"
        params = {**self._params, "timeout": str(self.poll_timeout)}
        timeout = self.poll_timeout + self.timeout
        loads = orjson.loads
        deliver = self._deliver
        clock = time.time_ns
        info: CloseInfo | None = None
        try:
            while True:
                resp = await get(url, headers=self._headers, params=params, timeout=timeout)
                if resp.status_code != 200:
                    err = decode_body(resp)
                    info = CloseInfo(ABNORMAL, f"poll answered {resp.status_code}: "
                                               f"{err.get('code')} {err.get('message', '')}")
                    break
                recv_us = clock() // 1000
                body = loads(resp.content)
                for ev in body["events"]:
                    deliver(ev, recv_us)
                closed = body.get("closed")
                if closed:
                    info = CloseInfo(int(closed["code"]), str(closed.get("reason", "")))
                    break
        except httpx.HTTPError as exc:
            info = CloseInfo(ABNORMAL, f"poll failed: {exc!r}")
        finally:
            self._finish(info)

    async def close(self) -> None:
        """Stop polling and delete the session (the server may already have ended it)."""
        already_done = self._done
        self._closing = True
        if self._poller is not None and not self._poller.done():
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        self._finish(None)
        if self._conn_url and not already_done:
            with contextlib.suppress(httpx.HTTPError):
                await self._http.delete(self._conn_url, headers=self._headers,
                                        params=self._params, timeout=self.timeout)
        await self._close_http()
