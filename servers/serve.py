"""`rtbench serve`: run one server replica for one transport on one server stack."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from servers import fdtable
from servers import settings as settings_mod
from servers.core.hub import Hub
from servers.fanout import make_broker
from servers.settings import Settings
from servers.startup import StartupError

log = logging.getLogger("rtbench.serve")


def build_hub(s: Settings) -> Hub:
    broker = make_broker(s.broker, s.redis_url, s.namespace, presence_ttl=s.presence_ttl)
    return Hub(broker, s.limits(), s.server_id)


def run(s: Settings) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code."""
    logging.basicConfig(
        level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # accepting the 256th, 512th, ... connection would otherwise stall the loop while
    # the kernel grows the descriptor table (servers/fdtable.py)
    fdtable.grow()
    hub = build_hub(s)
    if s.transport == "grpc":
        from servers.transports import grpc_server

        if s.stack != "starlette":  # the default, which nobody need be told about
            log.warning("--stack %s ignored: gRPC has one server (grpcio)", s.stack)
        return grpc_server.run(s, hub)
    from servers import stacks

    return stacks.run(s, hub)


def main(argv: Sequence[str] | None = None) -> int:
    """`rtbench serve`: 2 and one line on stderr for a setting, a port or a broker the
    user has to fix; a traceback is a bug."""
    try:
        return run(settings_mod.parse(argv))
    except (settings_mod.SettingsError, StartupError) as exc:
        print(f"rtbench serve: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
