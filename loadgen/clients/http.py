"""What the SSE and long-poll clients share: keep-alive HTTP via geventhttpclient and
the command POST of protocol section 7.2/7.3 (reply = response body); https:// through
geventhttpclient's TLS, verified against the client's `tls_ca`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from geventhttpclient import HTTPClient

from loadgen.clients.base import Client, ClientError, OnEvent, split_url
from loadgen.wire import error_body

# In-flight command POSTs per connection; open-loop publishers of HTTP transports
# keep up to this many publishes in flight (each one a keep-alive connection).
COMMAND_CONCURRENCY = 8


def error_from(status: int, body: bytes) -> ClientError:
    """The ClientError for an HTTP error reply (`loadgen.wire.error_body`)."""
    err = error_body(status, body)
    return ClientError(str(err["code"]), str(err.get("message", "")))


class HttpClient(Client):
    """SSE / long-poll: commands are `POST <command_path>` on a keep-alive pool."""

    publish_blocks = True

    def __init__(self, url: str, token: str, on_event: OnEvent | None = None,
                 timeout: float = 10.0, resume: Mapping[str, Any] | None = None,
                 tls_ca: str | None = None) -> None:
        super().__init__(url, token, on_event, timeout, resume, tls_ca)
        self.host, self.port = split_url(url, 443 if self.tls else 80)
        self.auth = {"Authorization": f"Bearer {token}"}
        self._http = self._client(COMMAND_CONCURRENCY, timeout)

    def _client(self, concurrency: int, network_timeout: float,
                block_size: int = HTTPClient.BLOCK_SIZE) -> HTTPClient:
        """A keep-alive pool; `block_size`: bytes per `recv` (geventhttpclient's default,
        4 KiB, suits small replies; a long-poll response can be megabytes)."""
        # ssl_options None: plain HTTP; {}: geventhttpclient's default CA bundle. It
        # verifies the certificate and the host name either way (insecure=False)
        tls = {"ca_certs": self.tls_ca} if self.tls_ca else {}
        return HTTPClient(self.host, self.port, concurrency=concurrency,
                          connection_timeout=self.timeout, network_timeout=network_timeout,
                          block_size=block_size, ssl=self.tls,
                          ssl_options=tls if self.tls else None)

    def command_path(self) -> str:
        raise NotImplementedError

    def request(self, method: str, path: str, body: bytes = b"",
                http: HTTPClient | None = None) -> tuple[int, bytes]:
        """One request on the pool; returns (status, full body). Network errors: ClientError."""
        headers = dict(self.auth)
        if body:
            headers["Content-Type"] = "application/json"
        try:
            with (http or self._http).request(method, path, body=body, headers=headers) as resp:
                return int(resp.status_code), resp.read()
        except (OSError, ValueError) as exc:  # socket errors, HTTP parse errors
            raise ClientError("http_failed", f"{method} {path}: {exc!r}") from None

    def call(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return self._post(orjson.dumps(cmd))

    def send(self, frame: bytes) -> None:
        self._post(frame)

    def _post(self, frame: bytes) -> dict[str, Any]:
        if self.closed.is_set():
            raise ClientError("closed", self.close_reason or "connection is closed")
        status, body = self.request("POST", self.command_path(), frame)
        if status != 200:
            raise error_from(status, body)
        reply: dict[str, Any] = orjson.loads(body)
        return reply

    def close_http(self) -> None:
        self._http.close()
