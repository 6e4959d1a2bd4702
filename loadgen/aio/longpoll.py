"""Long-polling client (docs/protocol.md 7.3) on aiohttp: `POST /lp/connect`, a poll loop
of `GET /lp/{conn}/poll`, one `POST /lp/{conn}` per command, `DELETE` to close.

Every request goes through the session's keep-alive pool (`loadgen.aio.http`): the
connect's connection goes back to it and the first poll takes it again, and a held
poll keeps its connection, so an idle client holds one connection and commands
never wait behind a poll. `recv_us` of a batch's events is taken when its body has
been read, before decoding. A network failure, an HTTP error status or a body that
is not a batch ends the connection (1006; 1002 for a malformed body); the batch's
`closed` member ends it with its section 6 code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import orjson

from loadgen.aio.base import (
    ABNORMAL,
    PROTOCOL_ERROR,
    CloseInfo,
    ServerClosed,
    TokenPlacement,
    describe,
)
from loadgen.aio.http import HttpSessionClient, refused
from loadgen.wire import error_body, poll_batch
from servers.core.cursor import RESUME_PARAM, encode_cursor


class LongPollClient(HttpSessionClient):
    transport = "longpoll"

    poll_timeout = 25.0
    _conn_path = ""
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
        http: aiohttp.ClientSession | object | None = None,
        poll_timeout: float = 25.0,
        resume: Mapping[str, Any] | None = None,
    ) -> LongPollClient:
        """Create the session (its response carries `welcome`), send `first`, start polling.

        `http`: a shared aiohttp.ClientSession (see `loadgen.aio.http`).
        `resume`: a `cursor` of an earlier connection; the session first gets what was
        missed since (ServerClosed 4400 if the cursor is refused)."""
        self = cls(url, token, token_in, timeout, http, resume)
        self.poll_timeout = poll_timeout
        params = {} if resume is None else {RESUME_PARAM: encode_cursor(resume)}
        try:
            status, body = await self._send("POST", self.url_for("/lp/connect", **params))
            if status != 200:
                raise refused(status, body)
            try:
                reply = orjson.loads(body)
                conn, events = str(reply["conn"]), list(reply["events"])
            except (ValueError, KeyError, TypeError) as exc:
                why = f"bad connect response: {describe(exc)}"
                raise ServerClosed(PROTOCOL_ERROR, why) from None
        except BaseException:
            await self._abandon()
            raise
        self._conn_path = f"/lp/{conn}"
        self.command_url = self.url_for(self._conn_path)
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
        url = self.url_for(self._conn_path + "/poll", timeout=str(self.poll_timeout))
        get = self._session.get
        headers = self._headers
        timeout = aiohttp.ClientTimeout(total=self.poll_timeout + self.timeout)
        deliver = self._deliver
        clock = time.time_ns
        info: CloseInfo | None = None
        try:
            while True:
                async with get(url, headers=headers, timeout=timeout) as resp:
                    body = await resp.read()
                    status = resp.status
                recv_us = clock() // 1000
                if status != 200:
                    err = error_body(status, body)
                    info = CloseInfo(ABNORMAL, f"poll answered {status}: "
                                               f"{err['code']} {err.get('message', '')}")
                    break
                events, closed = poll_batch(body)
                for ev in events:
                    deliver(ev, recv_us)
                if closed:
                    info = CloseInfo(*closed)
                    break
        except TimeoutError:
            info = CloseInfo(ABNORMAL, f"poll failed: no response within {timeout.total} s")
        except aiohttp.ClientError as exc:
            info = CloseInfo(ABNORMAL, f"poll failed: {describe(exc)}")
        except Exception as exc:  # not a batch, or on_event raised
            info = self._reader_error(exc)
        finally:
            self._finish(info)

    async def close(self) -> None:
        """Stop polling and delete the session (the server may already have ended it)."""
        already_done = self._done
        self._closing = True
        poller = self._poller
        if poller is not None and not poller.done():
            poller.cancel()  # aiohttp closes the held poll's connection
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        self._finish(None)
        if self._conn_path and not already_done:
            with contextlib.suppress(ServerClosed, TimeoutError):
                await self._send("DELETE", self.url_for(self._conn_path))
        await self._close_session()
