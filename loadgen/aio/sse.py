"""Server-Sent Events client (docs/protocol.md 7.2) on aiohttp: a streaming `GET /sse`
for the events, one `POST /sse/{conn}` per command through the session's keep-alive
pool (`loadgen.aio.http`).

A reader task takes what the stream's connection has received (`readany`: every
de-chunked body piece buffered since the last read, joined) and feeds it to the
shared event-stream parser (`loadgen.sse_parser`); each event's JSON is decoded once.
`recv_us` is taken when a read returns, before parsing.

`resume=` (a `client.cursor`) goes as `?resume=`; the server also writes the cursor
after each event that moves it as the event's `id:`, kept in `last_id` (what a
browser's EventSource would send back as `Last-Event-ID`). The stream's last event,
`close`, gives the section 6 code; a stream that just ends is 1006.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import orjson

from loadgen.aio.base import ABNORMAL, CloseInfo, ServerClosed, TokenPlacement, describe
from loadgen.aio.http import STREAMING, HttpSessionClient, refused
from loadgen.sse_parser import SseParser
from loadgen.wire import close_of
from servers.core.cursor import RESUME_PARAM, encode_cursor


class SseClient(HttpSessionClient):
    transport = "sse"
    _parser: SseParser
    _reader: asyncio.Task[None] | None = None
    _close_info: CloseInfo | None = None  # from the server's `close` event
    _welcome_seen = False

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
    ) -> SseClient:
        """Open the event stream, wait for `welcome`, then send `first`.

        `http`: a shared aiohttp.ClientSession (see `loadgen.aio.http`).
        `resume`: a `cursor` of an earlier connection; the server sends what was missed
        since, then the live stream (ServerClosed 4400 if the cursor is refused)."""
        self = cls(url, token, token_in, timeout, http, resume)
        self._parser = SseParser(self._on_sse)
        params = {} if resume is None else {RESUME_PARAM: encode_cursor(resume)}
        try:
            resp = await self._open_stream(params)
        except BaseException:
            await self._abandon()
            raise
        self._reader = asyncio.create_task(self._read(resp))
        await self._await_welcome()
        self.command_url = self.url_for(f"/sse/{self.welcome['conn']}")
        for cmd in first:
            await self.send_raw(orjson.dumps(cmd))
        return self

    async def _open_stream(self, params: dict[str, str]) -> aiohttp.ClientResponse:
        """The `200` response whose body is the event stream (its head read)."""
        headers = {**self._headers, "accept": "text/event-stream"}
        try:
            async with asyncio.timeout(self.timeout):
                resp = await self._session.get(self.url_for("/sse", **params), headers=headers,
                                               timeout=STREAMING)
                if resp.status != 200:
                    body = await resp.read()  # and the connection goes back to the pool
                    raise refused(resp.status, body)
        except TimeoutError:
            raise TimeoutError(f"no event stream within {self.timeout} s") from None
        except aiohttp.ClientError as exc:
            raise ServerClosed(ABNORMAL, f"GET /sse failed: {describe(exc)}") from None
        return resp

    @property
    def last_id(self) -> str:
        """The last `id:` the stream carried (the server's cursor, encoded), or ""."""
        return self._parser.last_id.decode()

    async def _read(self, resp: aiohttp.ClientResponse) -> None:
        read = resp.content.readany
        feed = self._parser.feed
        clock = time.time_ns
        info: CloseInfo | None = None
        try:
            while chunk := await read():
                feed(chunk, clock() // 1000)  # the time before parsing: parsing is not latency
            info = self._close_info or CloseInfo(ABNORMAL, "event stream ended")
        except aiohttp.ClientError as exc:  # ClientPayloadError: the stream broke off
            why = f"event stream failed: {describe(exc)}"
            info = self._close_info or CloseInfo(ABNORMAL, why)
        except Exception as exc:  # a malformed stream, or on_event raised
            info = self._reader_error(exc)
        finally:
            resp.close()  # the connection goes, it never returns to the pool
            self._finish(info)

    def _on_sse(self, event: bytes, data: bytes, recv_us: int) -> None:
        body = orjson.loads(data)
        if not self._welcome_seen:
            self._welcome_seen = True
            self._set_welcome(body)
        elif body.get("type") != "close":
            self._deliver(body, recv_us)
        else:
            self._close_info = CloseInfo(*(close_of(body) or (ABNORMAL, "")))

    async def close(self) -> None:
        self._closing = True
        reader = self._reader
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._finish(None)
        await self._close_session()
