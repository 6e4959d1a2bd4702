"""Server settings: flags override `RTBENCH_*` environment variables override defaults.

Typed casts with errors that name the variable and the value (Starlette's config.py).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from servers.core.auth import DEV_SECRET
from servers.core.types import Limits

TRANSPORTS = ("ws", "sse", "longpoll", "grpc")
# HTTP server stacks for ws, sse and longpoll (servers/stacks/); gRPC has one (grpcio)
STACKS = ("starlette", "aiohttp")


class SettingsError(ValueError):
    """A setting has a value of the wrong type or out of range."""


@dataclass(frozen=True, slots=True)
class Settings:
    transport: str = "ws"
    stack: str = "starlette"  # ws/sse/longpoll: "starlette" (uvicorn) or "aiohttp"
    host: str = "127.0.0.1"
    port: int = 8000
    metrics_port: int = 0  # gRPC only: Prometheus /metrics port (0: port + 1000)
    broker: str = "redis"  # "redis" or "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "rtb"  # Redis key/channel prefix; replicas that talk share it
    secret: str = DEV_SECRET
    server_id: str = ""  # default: host-pid
    max_frame_bytes: int = 64 * 1024
    max_rooms: int = 100
    outbox_max_events: int = 10_000
    outbox_max_bytes: int = 8 * 1024 * 1024
    # per stream (room, user inbox): keep the last history_size messages, at most
    # history_ttl seconds old, for resume; 0 turns history, offsets and resume off
    history_size: int = 1000
    history_ttl: float = 300.0
    # liveness (docs/protocol.md 6.1): keepalive every `heartbeat` s (WS ping, SSE comment,
    # gRPC keepalive ping; 0: none); an HTTP-transport socket whose sent data stays
    # unacknowledged for `tcp_user_timeout` s is aborted (TCP_USER_TIMEOUT; 0: kernel
    # default, about 15 min); a replica that stops refreshing its presence counts for
    # `presence_ttl` s is taken for dead and its users shown offline (0: never)
    heartbeat: float = 15.0
    tcp_user_timeout: float = 30.0
    presence_ttl: float = 30.0
    poll_timeout: float = 25.0  # long-poll: longest a poll is held open
    session_ttl: float = 30.0  # long-poll/SSE: session kept this long without a client
    log_level: str = "warning"
    ws_impl: str = "websockets-sansio"  # uvicorn --ws implementation (pyproject says why)
    # regress validation only (bench/regress/validate.py): CPU µs burnt per broker message
    inject_work_us: float = 0.0

    def limits(self) -> Limits:
        return Limits(
            max_frame_bytes=self.max_frame_bytes,
            max_rooms=self.max_rooms,
            outbox_max_events=self.outbox_max_events,
            outbox_max_bytes=self.outbox_max_bytes,
            history_size=self.history_size,
            history_ttl=self.history_ttl,
        )


def _in_range(value: float) -> bool:
    """Every number setting is a finite count, size, port or duration."""
    return 0 <= value < math.inf  # False for NaN too


def _cast(name: str, raw: str, default: Any) -> Any:
    kind = type(default)
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind in (int, float):
            value = kind(raw)
            if not _in_range(value):
                raise ValueError(raw)
            return value
        return raw
    except ValueError:
        raise SettingsError(
            f"{name}={raw!r}: expected a non-negative {kind.__name__}"
            if kind is not bool
            else f"{name}={raw!r}: expected true/false"
        ) from None


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from `RTBENCH_<FIELD>` variables (e.g. RTBENCH_REDIS_URL)."""
    env = os.environ if env is None else env
    base = Settings()
    changes: dict[str, Any] = {}
    for f in fields(Settings):
        var = "RTBENCH_" + f.name.upper()
        if var in env:
            changes[f.name] = _cast(var, env[var], getattr(base, f.name))
    return validate(replace(base, **changes))


def validate(s: Settings) -> Settings:
    if s.transport not in TRANSPORTS:
        raise SettingsError(f"transport {s.transport!r}: expected one of {', '.join(TRANSPORTS)}")
    if s.stack not in STACKS:
        raise SettingsError(f"stack {s.stack!r}: expected one of {', '.join(STACKS)}")
    if s.broker not in ("redis", "memory"):
        raise SettingsError(f"broker {s.broker!r}: expected 'redis' or 'memory'")
    # flags arrive here without passing _cast: same range rule for them
    for f in fields(Settings):
        value = getattr(s, f.name)
        if isinstance(value, int | float) and not _in_range(value):
            raise SettingsError(
                f"{f.name}={value!r}: expected a non-negative {type(value).__name__}"
            )
    for name in ("port", "metrics_port"):
        if getattr(s, name) > 65535:
            raise SettingsError(f"{name}={getattr(s, name)}: expected a TCP port (0-65535)")
    if s.max_frame_bytes < 256:
        raise SettingsError("max_frame_bytes must be at least 256")
    if s.outbox_max_events < 2 or s.outbox_max_bytes < s.max_frame_bytes:
        raise SettingsError("outbox_max_events must be at least 2 and outbox_max_bytes at "
                            "least max_frame_bytes (or every client is dropped at once)")
    if 0 < s.presence_ttl < 0.3:
        raise SettingsError(f"presence_ttl={s.presence_ttl}: expected 0 (off) or at least 0.3 s "
                            "(replicas refresh their presence every presence_ttl / 3)")
    if 0 < s.tcp_user_timeout < 0.001:
        raise SettingsError(f"tcp_user_timeout={s.tcp_user_timeout}: expected 0 (off) or at "
                            "least 0.001 s (a whole number of milliseconds)")
    if s.history_size > 0 and s.history_ttl <= 0:
        raise SettingsError("history_ttl must be > 0 while history is on (history_size > 0)")
    return s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for `rtbench serve`; each defaults to its environment variable."""
    d = from_env()
    parser.add_argument("--transport", choices=TRANSPORTS, default=d.transport)
    parser.add_argument("--stack", choices=STACKS, default=d.stack,
                        help="HTTP server for ws/sse/longpoll: starlette (on uvicorn) or aiohttp "
                             "(aiohttp.web), same endpoints and wire protocol; ignored by "
                             "--transport grpc, which has one server (grpcio) (RTBENCH_STACK)")
    parser.add_argument("--host", default=d.host)
    parser.add_argument("--port", type=int, default=d.port)
    parser.add_argument("--metrics-port", type=int, default=d.metrics_port,
                        help="gRPC only: port of the Prometheus /metrics endpoint (0: port+1000)")
    parser.add_argument("--broker", choices=("redis", "memory"), default=d.broker)
    parser.add_argument("--redis-url", default=d.redis_url)
    parser.add_argument("--namespace", default=d.namespace)
    parser.add_argument("--server-id", default=d.server_id)
    parser.add_argument("--max-frame-bytes", type=int, default=d.max_frame_bytes)
    parser.add_argument("--max-rooms", type=int, default=d.max_rooms)
    parser.add_argument("--outbox-max-events", type=int, default=d.outbox_max_events)
    parser.add_argument("--outbox-max-bytes", type=int, default=d.outbox_max_bytes)
    parser.add_argument("--history-size", type=int, default=d.history_size,
                        help="messages kept per room/inbox for resume (0: history off)")
    parser.add_argument("--history-ttl", type=float, default=d.history_ttl,
                        help="seconds a message stays in history")
    parser.add_argument("--heartbeat", type=float, default=d.heartbeat,
                        help="seconds between keepalives: WS ping, SSE comment, gRPC ping "
                             "(a peer that does not answer within it is dropped; 0: off)")
    parser.add_argument("--tcp-user-timeout", type=float, default=d.tcp_user_timeout,
                        help="ws/sse/longpoll: abort a socket whose sent data is unacknowledged "
                             "this many seconds (TCP_USER_TIMEOUT; 0: kernel default)")
    parser.add_argument("--presence-ttl", type=float, default=d.presence_ttl,
                        help="seconds after which a dead replica's users are shown offline "
                             "(Redis broker; 0: never)")
    parser.add_argument("--poll-timeout", type=float, default=d.poll_timeout)
    parser.add_argument("--session-ttl", type=float, default=d.session_ttl)
    parser.add_argument("--log-level", default=d.log_level)
    parser.add_argument("--ws-impl", default=d.ws_impl,
                        help="uvicorn WebSocket implementation (websockets-sansio, wsproto, "
                             "websockets, auto); --stack starlette only")


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    base = from_env(env)
    names = {f.name for f in fields(Settings)}
    changes = {k: v for k, v in vars(args).items() if k in names}
    return validate(replace(base, **changes))


def parse(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="rtbench serve")
    add_arguments(parser)
    return from_args(parser.parse_args(argv))
