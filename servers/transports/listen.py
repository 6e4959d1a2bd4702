"""The listening socket of the HTTP stacks, bound here so that both carry the same options."""

from __future__ import annotations

import socket

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


def listen_socket(host: str, port: int, user_timeout: float) -> socket.socket:
    """A listening TCP socket on `host:port` (SO_REUSEADDR), with TCP_USER_TIMEOUT."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    try:
        set_user_timeout(sock, user_timeout)
    except BaseException:
        sock.close()
        raise
    return sock
