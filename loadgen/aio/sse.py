"""Server-Sent Events client (docs/protocol.md 7.2): a streaming GET for events,
one POST per command."""

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
    refused,
)


class SseParser:
    """Sans-I/O: bytes of a text/event-stream in, the `data` of each complete event out.

    Only what the protocol uses: `data:` lines (joined by newlines when several),
    comments and other fields ignored, LF or CRLF line ends.
    """

    __slots__ = ("_data", "_tail")

    def __init__(self) -> None:
        self._tail = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        lines = (self._tail + chunk).split(b"\n")
        self._tail = lines.pop()
        out: list[bytes] = []
        data = self._data
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    out.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
        return out


class SseClient(HttpCommandClient):
    transport = "sse"
    _response: httpx.Response | None = None
    _reader: asyncio.Task[None] | None = None

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
    ) -> SseClient:
        """Open the event stream, wait for `welcome`, then send `first`."""
        self = cls(url, token, token_in, timeout, http)
        request = self._http.build_request(
            "GET",
            self.base + "/sse",
            headers={**self._headers, "accept": "text/event-stream"},
            params=self._params,
            timeout=httpx.Timeout(timeout, read=None),  # the stream is idle between events
        )
        try:
            response = await self._http.send(request, stream=True)
        except BaseException:
            await self._close_http()
            raise
        self._response = response
        if response.status_code != 200:
            await response.aread()
            await self.close()
            raise refused(response)
        self._reader = asyncio.create_task(self._read(response))
        await self._await_welcome()
        self.command_url = f"{self.base}/sse/{self.welcome['conn']}"
        for cmd in first:
            await self.send_raw(orjson.dumps(cmd))
        return self

    async def _read(self, response: httpx.Response) -> None:
        parser = SseParser()
        loads = orjson.loads
        deliver = self._deliver
        clock = time.time_ns
        info: CloseInfo | None = CloseInfo(ABNORMAL, "event stream ended")
        welcomed = False
        try:
            async for chunk in response.aiter_raw():
                events = parser.feed(chunk)
                if not events:
                    continue
                recv_us = clock() // 1000
                for data in events:
                    body = loads(data)
                    if not welcomed:
                        welcomed = True
                        self._set_welcome(body)
                    elif body.get("type") == "close":
                        info = CloseInfo(int(body["code"]), str(body.get("reason", "")))
                    else:
                        deliver(body, recv_us)
        except httpx.HTTPError as exc:
            info = CloseInfo(ABNORMAL, f"event stream failed: {exc!r}")
        finally:
            self._finish(info)

    async def close(self) -> None:
        self._closing = True
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._response is not None:
            await self._response.aclose()
        self._finish(None)
        await self._close_http()
