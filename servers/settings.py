"""Server settings: flags override `RTBENCH_*` environment variables override defaults.

Typed casts with errors that name the variable and the value (Starlette's config.py).
Each field of `Settings` carries its own help: it is the one source of
`rtbench serve --help` and of README's configuration table (`markdown_table`, printed by
`python -m servers.settings --markdown`; tests/test_serve_cli.py checks README has it).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from servers.core.auth import DEV_SECRET
from servers.core.types import Limits

TRANSPORTS = ("ws", "sse", "longpoll", "grpc")
# HTTP server stacks for ws, sse and longpoll (servers/stacks/); gRPC has one (grpcio)
STACKS = ("starlette", "aiohttp")
BROKERS = ("redis", "memory")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")  # both stdlib's and uvicorn's
WS_IMPLS = ("websockets-sansio", "wsproto", "websockets", "auto")  # uvicorn's --ws values
REDIS_URL_FORMS = "redis://[user:password@]host[:port][/db], rediss://... or unix:///path[?db=N]"


def _setting(default: Any, help: str, *, choices: Sequence[str] = (), shown: str = "",
             metavar: str | None = None, flag: bool = True) -> Any:
    """A Settings field with its documentation: `help` (one sentence or two), `shown` (the
    default as a reader should see it, when the value alone would mislead), `flag`
    (False: environment only)."""
    return field(default=default, metadata={
        "help": help, "choices": tuple(choices), "shown": shown, "metavar": metavar,
        "flag": flag})


@dataclass(frozen=True, slots=True)
class Settings:
    transport: str = _setting("ws", "the transport this replica serves", choices=TRANSPORTS)
    stack: str = _setting(
        "starlette", "HTTP server for ws, sse and longpoll (Starlette on uvicorn, or "
        "aiohttp.web: same endpoints and wire protocol); ignored by --transport grpc, "
        "which has one server (grpcio)", choices=STACKS)
    host: str = _setting("127.0.0.1", "address to listen on (0.0.0.0: every interface)",
                         metavar="ADDR")
    port: int = _setting(8000, "TCP port to listen on", metavar="PORT")
    metrics_port: int = _setting(
        0, "gRPC only: port of the Prometheus /metrics and /healthz endpoint (the HTTP "
        "transports serve both on --port)", shown="port + 1000", metavar="PORT")
    tls_cert: str = _setting(
        "", "PEM certificate chain, the server's certificate first: serve over TLS (wss:// "
        "and https:// for ws, sse and longpoll, gRPC over TLS; gRPC's --metrics-port stays "
        "plain HTTP); needs --tls-key", shown="none (no TLS)", metavar="FILE")
    tls_key: str = _setting("", "PEM private key of --tls-cert", shown="none",
                            metavar="FILE")
    broker: str = _setting(
        "redis", "fanout between replicas (memory: a single node, no Redis)", choices=BROKERS)
    redis_url: str = _setting("redis://127.0.0.1:6379/0",
                              f"the Redis of the redis broker: {REDIS_URL_FORMS}", metavar="URL")
    namespace: str = _setting("rtb", "Redis key and channel prefix; replicas that talk to "
                              "each other share it", metavar="PREFIX")
    secret: str = _setting(DEV_SECRET, "HMAC secret that signs and checks tokens; environment "
                           "only, since a flag would show in `ps`", flag=False)
    server_id: str = _setting("", "this replica's name in /healthz, metrics and presence",
                              shown="host-pid", metavar="NAME")
    max_frame_bytes: int = _setting(64 * 1024, "largest command a client may send, in bytes",
                                    metavar="BYTES")
    max_rooms: int = _setting(100, "rooms one connection may join", metavar="N")
    outbox_max_events: int = _setting(
        10_000, "events queued for one connection before it is dropped as a slow consumer "
        "(close 4408)", metavar="N")
    outbox_max_bytes: int = _setting(
        8 * 1024 * 1024, "bytes queued for one connection before it is dropped as a slow "
        "consumer (close 4408)", shown="8388608 (8 MiB)", metavar="BYTES")
    # per stream (room, user inbox): keep the last history_size messages, at most
    # history_ttl seconds old, for resume; 0 turns history, offsets and resume off
    history_size: int = _setting(
        1000, "messages kept per room and per user inbox for resume (0: history, offsets "
        "and resume off)", metavar="N")
    history_ttl: float = _setting(300.0, "seconds a message stays in history",
                                  metavar="SECONDS")
    # liveness (docs/protocol.md 6.1)
    heartbeat: float = _setting(
        15.0, "seconds between keepalives (WS ping, SSE comment, gRPC keepalive ping); a peer "
        "that does not answer within it is dropped (0: off)", metavar="SECONDS")
    tcp_user_timeout: float = _setting(
        30.0, "ws, sse, longpoll: abort a socket whose sent data stays unacknowledged this "
        "many seconds (TCP_USER_TIMEOUT; 0: the kernel's, about 15 min)", metavar="SECONDS")
    presence_ttl: float = _setting(
        30.0, "redis broker: seconds after which a replica that stopped refreshing its "
        "presence counts is taken for dead and its users shown offline (0: never)",
        metavar="SECONDS")
    poll_timeout: float = _setting(25.0, "longpoll: longest a poll is held open, in seconds",
                                   metavar="SECONDS")
    session_ttl: float = _setting(30.0, "sse, longpoll: seconds a session is kept without a "
                                  "client, for it to come back", metavar="SECONDS")
    log_level: str = _setting("warning", "server log level", choices=LOG_LEVELS)
    ws_impl: str = _setting(
        "websockets-sansio", "uvicorn's WebSocket implementation (pyproject.toml says why "
        "this one); --stack starlette only", choices=WS_IMPLS)
    inject_work_us: float = _setting(
        0.0, "regress validation only (bench/regress/validate.py): CPU microseconds burnt "
        "per broker message", flag=False)

    def limits(self) -> Limits:
        return Limits(
            max_frame_bytes=self.max_frame_bytes,
            max_rooms=self.max_rooms,
            outbox_max_events=self.outbox_max_events,
            outbox_max_bytes=self.outbox_max_bytes,
            history_size=self.history_size,
            history_ttl=self.history_ttl,
        )


def env_var(f: Field[Any]) -> str:
    """The environment variable of a setting: RTBENCH_<FIELD>."""
    return "RTBENCH_" + f.name.upper()


def flag_name(f: Field[Any]) -> str:
    return "--" + f.name.replace("_", "-")


def shown_default(f: Field[Any]) -> str:
    """A setting's built-in default as the help and the README show it."""
    if f.metadata["shown"]:
        return str(f.metadata["shown"])
    value = f.default
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def redact_url(url: str) -> str:
    """`url` with its password, if any, replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def _check_redis_url(url: str) -> None:
    """Refuse a URL the Redis broker cannot use, before anything connects."""
    parts = urlsplit(url)
    try:
        if parts.scheme == "unix":
            int(parse_qs(parts.query).get("db", ["0"])[0])
            ok = bool(parts.path)
        else:
            _ = parts.port  # ValueError when not a number in 0-65535
            int(parts.path.lstrip("/") or 0)
            ok = parts.scheme in ("redis", "rediss") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise SettingsError(f"redis_url {redact_url(url)!r}: expected {REDIS_URL_FORMS}")


class SettingsError(ValueError):
    """A setting has a value of the wrong type or out of range."""


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
        var = env_var(f)
        if var in env:
            changes[f.name] = _cast(var, env[var], getattr(base, f.name))
    return validate(replace(base, **changes))


def validate(s: Settings) -> Settings:
    for f in fields(Settings):
        value = getattr(s, f.name)
        choices = f.metadata["choices"]
        if choices and value not in choices:
            raise SettingsError(f"{f.name} {value!r}: expected one of {', '.join(choices)}")
        # flags arrive here without passing _cast: same range rule for them
        if isinstance(value, int | float) and not _in_range(value):
            raise SettingsError(
                f"{f.name}={value!r}: expected a non-negative {type(value).__name__}"
            )
    for name in ("port", "metrics_port"):
        if getattr(s, name) > 65535:
            raise SettingsError(f"{name}={getattr(s, name)}: expected a TCP port (0-65535)")
    if s.transport == "grpc" and not s.metrics_port and s.port + 1000 > 65535:
        raise SettingsError(f"port={s.port}: the metrics port would be port + 1000 = "
                            f"{s.port + 1000}; pass --metrics-port")
    if bool(s.tls_cert) != bool(s.tls_key):
        raise SettingsError("tls_cert and tls_key go together: pass both --tls-cert and "
                            "--tls-key (RTBENCH_TLS_CERT, RTBENCH_TLS_KEY) or neither")
    if s.broker == "redis":
        _check_redis_url(s.redis_url)
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


def _flag_help(f: Field[Any], env: Mapping[str, str]) -> str:
    """A flag's help: what it does, its default and its variable (set or not)."""
    var = env_var(f)
    where = (f"{var}={env[var]!r} is set; built-in default: {shown_default(f)}" if var in env
             else f"default: {shown_default(f)}; env {var}")
    return f"{f.metadata['help']} ({where})".replace("%", "%%")


def add_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str] | None = None,
                  ) -> None:
    """Flags for `rtbench serve`, one per setting but the environment-only ones; each
    defaults to its environment variable, else to the built-in default."""
    env = os.environ if env is None else env
    d = from_env(env)
    for f in fields(Settings):
        if not f.metadata["flag"]:
            continue
        kind = type(f.default)
        parser.add_argument(
            flag_name(f), default=getattr(d, f.name), help=_flag_help(f, env),
            choices=f.metadata["choices"] or None, metavar=f.metadata["metavar"],
            type=kind if kind in (int, float) else str)


def _environment_only() -> str:
    return "; ".join(f"{env_var(f)}: {f.metadata['help']} (default: {shown_default(f)})"
                     for f in fields(Settings) if not f.metadata["flag"])


def make_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The `rtbench serve` parser."""
    parser = argparse.ArgumentParser(
        prog="rtbench serve",
        description="Run one server replica: one transport on one server stack, fanning out "
                    "through Redis (or in memory for a single node). Every flag has an "
                    "RTBENCH_* environment variable; a flag wins over it.",
        epilog=("Environment only: " + _environment_only()).replace("%", "%%"))
    add_arguments(parser, env)
    return parser


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    base = from_env(env)
    names = {f.name for f in fields(Settings)}
    changes = {k: v for k, v in vars(args).items() if k in names}
    return validate(replace(base, **changes))


def parse(argv: Sequence[str] | None = None) -> Settings:
    return from_args(make_parser().parse_args(argv))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table() -> str:
    """README's configuration table: every setting with its flag, variable, built-in
    default and meaning (the environment of the caller plays no part)."""
    rows = ["| flag | variable | default | meaning |", "|---|---|---|---|"]
    for f in fields(Settings):
        flag = f"`{flag_name(f)}`" if f.metadata["flag"] else "(env only)"
        meaning = f.metadata["help"]
        if f.metadata["choices"]:
            meaning += "; one of " + ", ".join(f"`{c}`" for c in f.metadata["choices"])
        # strings in backquotes, to be typed as they are; numbers and descriptions plain
        literal = isinstance(f.default, str) and not f.metadata["shown"]
        default = f"`{f.default}`" if literal else shown_default(f)
        rows.append(f"| {flag} | `{env_var(f)}` | {_cell(default)} | {_cell(meaning)} |")
    return "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m servers.settings",
        description="Print the settings of `rtbench serve` as README's configuration table.")
    parser.add_argument("--markdown", action="store_true", required=True,
                        help="the Markdown table (flag, variable, default, meaning)")
    parser.parse_args(argv)
    sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
