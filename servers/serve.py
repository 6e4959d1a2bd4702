"""`rtbench serve`: run one server replica for one transport."""

from __future__ import annotations

import logging
import signal
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from servers import settings as settings_mod
from servers.core.hub import Hub
from servers.fanout import make_broker
from servers.settings import Settings

if TYPE_CHECKING:
    import uvicorn


def build_hub(s: Settings) -> Hub:
    broker = make_broker(s.broker, s.redis_url, s.namespace, presence_ttl=s.presence_ttl)
    return Hub(broker, s.limits(), s.server_id)


def listen_socket(config: uvicorn.Config, user_timeout: float) -> socket.socket:
    """uvicorn's listening socket, with TCP_USER_TIMEOUT set when `user_timeout` > 0.

    Accepted sockets inherit it (Linux): a peer that vanished (no ACK for what the
    server sent, such as a heartbeat) is aborted after `user_timeout` seconds instead
    of ~15 minutes of retransmissions, and its connection closed.
    """
    sock = config.bind_socket()
    option = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux only
    if user_timeout > 0 and option is not None:
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1, int(user_timeout * 1000)))
    return sock


def run(s: Settings) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code."""
    logging.basicConfig(
        level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    hub = build_hub(s)
    if s.transport == "grpc":
        from servers.transports import grpc_server

        return grpc_server.run(s, hub)
    import uvicorn

    from servers.transports.http import build_app

    config = uvicorn.Config(
        build_app(s, hub),
        host=s.host,
        port=s.port,
        loop="auto",  # uvloop when installed
        http="auto",  # httptools when installed
        ws=s.ws_impl,
        ws_max_size=max(4 * s.max_frame_bytes, 1 << 20),  # bigger frames: error event, not close
        # per-connection deflate would compress each broadcast once per recipient; off,
        # like the reference fanout, so both sides do the same work
        ws_per_message_deflate=False,
        ws_ping_interval=s.heartbeat or None,
        ws_ping_timeout=s.heartbeat or None,
        lifespan="on",
        log_level=s.log_level,
        access_log=False,
        backlog=4096,
        timeout_keep_alive=max(int(s.poll_timeout) + 10, 5),
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    sock = listen_socket(config, s.tcp_user_timeout)
    # uvicorn re-raises the signal it caught once its graceful shutdown is done; with
    # SIGTERM ignored by then, a clean shutdown exits 0 as process managers expect
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=[sock])
    return 0 if server.started else 1


def main(argv: Sequence[str] | None = None) -> int:
    try:
        s = settings_mod.parse(argv)
    except settings_mod.SettingsError as exc:
        print(f"rtbench serve: {exc}", file=sys.stderr)
        return 2
    return run(s)


if __name__ == "__main__":
    sys.exit(main())

