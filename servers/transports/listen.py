"""The listening socket of the HTTP stacks, bound here so that both carry the same options."""

from __future__ import annotations

import socket

from servers.startup import cannot_listen

BACKLOG = 4096  # pending connections: a benchmark opens thousands at once


def set_user_timeout(sock: socket.socket, seconds: float) -> None:
    """TCP_USER_TIMEOUT on `sock` when `seconds` > 0 (Linux; elsewhere nothing).

    Set on a listening socket, accepted sockets inherit it: a peer that vanished (no ACK
    for what the server sent, such as a heartbeat) or that advertises a zero window is
    aborted after `seconds` instead of ~15 minutes of retransmissions, and its
    connection closed (docs/protocol.md 6.1).
    """
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if seconds > 0 and option is not None:
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1, int(seconds * 1000)))


def server_socket(host: str, port: int, user_timeout: float, flag: str = "--port",
                  ) -> socket.socket:
    """A TCP socket bound to `host:port` (SO_REUSEADDR) with TCP_USER_TIMEOUT, not yet
    listening: the server listens once its startup (the hub's) is done, so a port that
    accepts connections means a server ready to serve, which is what the harness and
    the tests wait for.

    Raises StartupError (one line: the address, and the fix naming `flag`) when
    `host:port` cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise cannot_listen(host, port, exc, flag) from None
        set_user_timeout(sock, user_timeout)
    except BaseException:
        sock.close()
        raise
    return sock
