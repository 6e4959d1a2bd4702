"""TLS for the load generator's clients: verifying client contexts, and `TlsSocket`, TLS
as a sans-I/O layer (ssl.SSLObject over two MemoryBIOs) on a plain socket.

Every client verifies the server's certificate and name against `ca_file` (the
system's trust store when None); nothing here can switch verification off.

Why not ssl.SSLSocket for the gevent clients: their event streams are read by the
process's reactor (loadgen.clients.reactor), which reads raw bytes from the
descriptor. With `TlsSocket` those bytes are decrypted by `decrypt()` (the reactor's
path) or `recv()` (the handshake's path) on the same TLS session; sends encrypt and
write under a lock, so that records leave in the order they were made whatever
greenlets send. It quacks like a socket for websocket-client and the handshakes
(`sendall`, `send`, `recv`, `settimeout`, `fileno`, `shutdown`, `close`).

Importing this module imports no gevent: the asyncio clients use `client_context` too.
"""

from __future__ import annotations

import functools
import socket
import ssl
import threading
from collections.abc import Sequence

RAW_BYTES = 256 * 1024  # bytes per raw read while the caller waits (handshake, recv)
TLS_SCHEMES = ("https", "wss", "grpcs")


def is_tls_url(url: str) -> bool:
    """Whether `url` names a TLS server: https://, wss:// or grpcs://."""
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.lower() in TLS_SCHEMES


@functools.lru_cache(maxsize=16)
def client_context(ca_file: str | None = None, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """A client context that verifies the server's certificate chain against `ca_file`
    (PEM; None: the system's trust store) and the server's name or address, offering
    `alpn`; one per (ca_file, alpn) in a process. OSError / ssl.SSLError for a CA file
    that cannot be read or holds no certificate."""
    context = ssl.create_default_context(cafile=ca_file)  # CERT_REQUIRED, check_hostname
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def read_ca(ca_file: str | None) -> bytes | None:
    """The PEM bytes of `ca_file` for grpc.ssl_channel_credentials (None: grpc's roots)."""
    if ca_file is None:
        return None
    with open(ca_file, "rb") as f:
        return f.read()


def check_ca_file(ca_file: str) -> str:
    """`ca_file` if it holds a PEM CA certificate, else ValueError in one line."""
    try:
        client_context(ca_file)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise ValueError(f"--tls-ca {ca_file}: not a readable PEM CA certificate ({why})"
                         ) from None
    return ca_file


class TlsSocket:
    """A client TLS session on a connected socket; `handshake()` before use.

    `recv`/`send*` block (cooperatively under gevent) like a socket's; `decrypt` takes
    bytes the caller read from `fileno()` itself and returns the plaintext they
    complete (b"" when none yet); ssl.SSLZeroReturnError when the server closed the
    session.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_hostname: str,
                 ) -> None:
        self.raw = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=False,
                                     server_hostname=server_hostname)
        self._plain = bytearray()  # decrypted, not yet handed out (handshake-phase reads)
        self._lock = threading.Lock()  # gevent's when patched: one writer at a time
        self._eof = False

    # ------------------------------------------------------------- session

    def handshake(self) -> None:
        """The TLS handshake (ssl.SSLCertVerificationError when the server's certificate
        does not verify; both are OSErrors)."""
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                if not self._read_raw():
                    raise ConnectionResetError("server closed the connection during "
                                               "the TLS handshake") from None
                continue
            self._flush()
            return

    @property
    def alpn(self) -> str | None:
        """The protocol the server selected by ALPN (None: none)."""
        return self._tls.selected_alpn_protocol()

    def decrypt(self, data: bytes) -> bytes:
        """The plaintext that `data` (raw bytes read from the socket) completes."""
        self._in.write(data)
        return self._drain()

    def pending(self) -> bytes:
        """Plaintext decrypted but not read yet (by `recv`); taken, empty afterwards."""
        data = bytes(self._plain)
        self._plain.clear()
        return data

    def _drain(self) -> bytes:
        """Every whole record's plaintext; answers (key updates) go out at once."""
        chunks = []
        read = self._tls.read
        try:
            while True:
                chunk = read(RAW_BYTES)
                if not chunk:
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self._eof = True
        if self._out.pending:
            self._flush()
        if self._eof and not chunks:
            raise ssl.SSLZeroReturnError(ssl.SSL_ERROR_ZERO_RETURN, "TLS session closed")
        return b"".join(chunks)

    def _read_raw(self) -> bool:
        data = self.raw.recv(RAW_BYTES)
        if not data:
            return False
        self._in.write(data)
        return True

    def _flush(self) -> None:
        with self._lock:
            out = self._out.read()
            if out:
                self.raw.sendall(out)

    # ------------------------------------------------------ socket-like API

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        with self._lock:  # encrypt and write as one step: records leave in order
            view = memoryview(data)
            while view:
                n = self._tls.write(view)
                view = view[n:]
            self.raw.sendall(self._out.read())

    def send(self, data: bytes | bytearray | memoryview) -> int:
        self.sendall(data)
        return len(data)

    def recv(self, n: int) -> bytes:
        """Up to `n` bytes of plaintext, waiting for some; b"" at the end of the stream."""
        while not self._plain:
            if self._eof:
                return b""
            try:
                self._plain += self._drain()
            except ssl.SSLZeroReturnError:
                return b""
            if self._plain:
                break
            if not self._read_raw():
                return b""
        data = bytes(self._plain[:n])
        del self._plain[:n]
        return data

    def fileno(self) -> int:
        return self.raw.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self.raw.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self.raw.gettimeout()

    def setsockopt(self, *args: int) -> None:
        self.raw.setsockopt(*args)

    def shutdown(self, how: int) -> None:
        self.raw.shutdown(how)

    @property
    def _closed(self) -> bool:  # websocket-client looks before it closes
        return bool(getattr(self.raw, "_closed", False))

    def close(self) -> None:
        self.raw.close()


def connect_tls(sock: socket.socket, host: str, ca_file: str | None,
                alpn: Sequence[str] = ()) -> TlsSocket:
    """A TlsSocket over the connected `sock` to `host`, handshake done (verified against
    `ca_file`); OSError (ssl.SSLCertVerificationError among them) when it fails."""
    tls = TlsSocket(sock, client_context(ca_file, tuple(alpn)), host)
    tls.handshake()
    if alpn and tls.alpn not in alpn:
        raise ssl.SSLError(f"server chose ALPN {tls.alpn!r}, expected one of {list(alpn)}")
    return tls
