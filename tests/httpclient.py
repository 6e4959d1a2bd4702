"""Plain HTTP requests for the tests, on aiohttp's client: whole responses read into a
`Reply` (status, headers, body), event streams read line by line.

    async with Http(proc.url) as http:
        resp = await http.post("/lp/connect", headers=auth)
        assert resp.status == 200 and resp.json()["conn"]
        async with http.stream("GET", "/sse", headers=auth) as stream:
            async for line in lines(stream): ...

`Http` is a base URL (paths are appended to it; "" for absolute URLs) over a
`loadgen.aio.http_session()` of its own (its keep-alive is shorter than the servers',
so a request never goes out on a connection the server is closing). Redirects are not
followed (a test sees the 3xx), and `timeout` bounds the connect and each read, not
the whole exchange (a held poll or a stream lasts as long as the test needs; a silent
server fails it).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from loadgen.aio import http_session

WAIT = 5.0


@dataclass(frozen=True)
class Reply:
    """A response read to its end."""

    status: int
    headers: CIMultiDictProxy[str]  # case-insensitive names
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    def text(self) -> str:
        return self.body.decode()


class Http:
    """Requests to `base` + path on one keep-alive pool; `async with` closes it."""

    def __init__(self, base: str = "", timeout: float = WAIT) -> None:
        self.base = base.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        self.session = http_session()

    async def __aenter__(self) -> Http:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    def _request(self, method: str, path: str, params: Mapping[str, str | float] | None,
                 headers: Mapping[str, str] | None, data: bytes | None
                 ) -> aiohttp.client._RequestContextManager:
        return self.session.request(method, self.base + path, params=params, headers=headers,
                                    data=data, timeout=self.timeout, allow_redirects=False)

    async def request(self, method: str, path: str, *,
                      params: Mapping[str, str | float] | None = None,
                      headers: Mapping[str, str] | None = None,
                      data: bytes | None = None) -> Reply:
        async with self._request(method, path, params, headers, data) as resp:
            return Reply(resp.status, resp.headers, await resp.read())

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, **kw)

    async def head(self, path: str, **kw: Any) -> Reply:
        return await self.request("HEAD", path, **kw)

    async def post(self, path: str, **kw: Any) -> Reply:
        return await self.request("POST", path, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.request("DELETE", path, **kw)

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, *,
                     headers: Mapping[str, str] | None = None
                     ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response with its body unread (read it with `lines`); leaving closes the
        connection if the body has not ended."""
        async with self._request(method, path, None, headers, None) as resp:
            yield resp


async def get(url: str) -> Reply:
    """One GET of an absolute URL on a pool of its own."""
    async with Http() as http:
        return await http.get(url)


async def lines(resp: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The body's lines as they arrive, without their ends (`\\n`, `\\r\\n` or `\\r`),
    whatever their length; a last line without an end too."""
    pending = bytearray()
    async for chunk in resp.content.iter_any():
        pending += chunk
        if b"\n" not in chunk and b"\r" not in chunk:
            continue
        parts = pending.splitlines(keepends=True)
        # an unended line, or one ended by "\r" that may be the first half of "\r\n"
        pending = parts.pop() if not parts[-1].endswith(b"\n") else bytearray()
        for line in parts:
            yield line.rstrip(b"\r\n").decode()
    if pending:
        yield pending.rstrip(b"\r").decode()
