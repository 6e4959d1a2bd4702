"""Sans-I/O reader of the responses on one keep-alive HTTP/1.1 connection, for the gevent
long-poll client's poll socket: raw socket bytes in, in pieces of any size, each
complete response (status, whole body, keep-alive) out.

httptools (llhttp, in C) parses the heads and undoes the transfer encoding; one
parser serves every response of the connection. Per socket read that is one C
call and a few Python callbacks per response (no header callback: the client
needs no header, so httptools does not call one). A body must be delimited
(Content-Length or chunked, as uvicorn's always are): httptools cannot be told
that the connection ended, so a body that runs to the close never completes.
"""

from __future__ import annotations

from typing import NamedTuple

import httptools

from loadgen.clients.ssestream import ResponseError

__all__ = ["Response", "ResponseError", "ResponseReader"]


class Response(NamedTuple):
    status: int
    body: bytes
    keep_alive: bool  # False: the server closes the connection after this response


class ResponseReader:
    """Feed `feed(data)` the bytes read from the connection; it returns the responses they
    completed, in order (usually none or one: one request at a time)."""

    __slots__ = ("_body", "_done", "_http", "_status")

    def __init__(self) -> None:
        self._status = 0
        self._body: list[bytes] = []
        self._done: list[Response] = []
        self._http = httptools.HttpResponseParser(self)

    def feed(self, data: bytes) -> list[Response]:
        """Parse `data`; ResponseError if it is not a well-formed HTTP/1.1 response."""
        try:
            self._http.feed_data(data)
        except httptools.HttpParserError as exc:
            raise ResponseError(f"malformed HTTP response: {exc}") from None
        done = self._done
        if not done:
            return []  # not the list itself: the caller may keep what it got
        self._done = []
        return done

    # ------------------------------------------------------- parser callbacks

    def on_headers_complete(self) -> None:
        self._status = self._http.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = self._body
        self._done.append(Response(self._status, body[0] if len(body) == 1 else b"".join(body),
                                   self._http.should_keep_alive()))
        self._body = []
