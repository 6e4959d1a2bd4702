"""Long-polling client (docs/protocol.md 7.3): POST /lp/connect, a poll loop, one
POST per command, DELETE to close, on the hand-written HTTP/1.1 client
(`loadgen.aio.http11`, which says why not aiohttp).

The session is created on the connection that then carries the poll loop, so an
idle client holds one connection; commands go through a keep-alive pool, never
behind a held poll. `recv_us` of a batch's events is taken when its response is
complete, before decoding. A network failure or an HTTP error status ends the
connection (1006), so does a body that is not a batch (1002); the batch's `closed`
member ends it with its section 6 code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from loadgen.aio.base import (
    ABNORMAL,
    PROTOCOL_ERROR,
    CloseInfo,
    ServerClosed,
    TokenPlacement,
    describe,
)
from loadgen.aio.http11 import Connection, HttpSessionClient, Pool, refused
from loadgen.wire import error_body, poll_batch
from servers.core.cursor import RESUME_PARAM, encode_cursor


class LongPollClient(HttpSessionClient):
    transport = "longpoll"

    poll_timeout = 25.0
    _conn_path = ""
    _polling: Connection | None = None
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
        http: Pool | object | None = None,
        poll_timeout: float = 25.0,
        resume: Mapping[str, Any] | None = None,
        tls_ca: str | None = None,
    ) -> LongPollClient:
        """Create the session (its response carries `welcome`), send `first`, start polling.

        `http`: a shared `http11.Pool` for the commands (see `http11.pool_of`).
        `resume`: a `cursor` of an earlier connection; the session first gets what was
        missed since (ServerClosed 4400 if the cursor is refused)."""
        self = cls(url, token, token_in, timeout, http, resume, tls_ca)
        self.poll_timeout = poll_timeout
        params = {} if resume is None else {RESUME_PARAM: encode_cursor(resume)}
        try:
            self._polling = await self.connection()
            resp = await self._polling.request("POST", self.target("/lp/connect", **params),
                                               self._headers, b"", timeout)
        except BaseException:
            await self._abandon()
            raise
        if resp.status != 200:
            await self._abandon()
            raise refused(resp)
        try:
            reply = orjson.loads(resp.body)
            conn, events = str(reply["conn"]), list(reply["events"])
        except (ValueError, KeyError, TypeError) as exc:
            await self._abandon()
            raise ServerClosed(PROTOCOL_ERROR, f"bad connect response: {describe(exc)}"
                               ) from None
        self._conn_path = f"/lp/{conn}"
        self.command_path = self._conn_path
        self._set_welcome(events[0] if events else {})
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
        target = self.target(self._conn_path + "/poll", timeout=str(self.poll_timeout))
        headers = self._headers
        timeout = self.poll_timeout + self.timeout
        deliver = self._deliver
        clock = time.time_ns
        info: CloseInfo | None = None
        try:
            while True:
                conn = self._polling
                if conn is None or not conn.usable:  # the server ended the keep-alive
                    conn = self._polling = await self.connection()
                resp = await conn.request("GET", target, headers, b"", timeout)
                recv_us = clock() // 1000
                if resp.status != 200:
                    err = error_body(resp.status, resp.body)
                    info = CloseInfo(ABNORMAL, f"poll answered {resp.status}: "
                                               f"{err['code']} {err.get('message', '')}")
                    break
                events, closed = poll_batch(resp.body)
                for ev in events:
                    deliver(ev, recv_us)
                if closed:
                    info = CloseInfo(*closed)
                    break
        except (ServerClosed, TimeoutError) as exc:
            info = CloseInfo(ABNORMAL, f"poll failed: {exc}")
        except Exception as exc:  # not a batch, or on_event raised
            info = self._reader_error(exc)
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
        if self._polling is not None:
            await self._polling.aclose()
        self._finish(None)
        if self._conn_path and not already_done:
            with contextlib.suppress(ServerClosed, TimeoutError):
                await self._send("DELETE", self._conn_path)
        await self._close_pool()
