"""rtbench's Locust options, registered through `init_command_line_parser`.

So `locust -f loadgen/broadcast.py --help` lists them, `LOCUST_<NAME>`
environment variables and locust.conf work, and the web UI shows them.
`Params.from_options` turns the parsed namespace into typed, checked values.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

from loadgen.clients import GRPC_CLIENTS  # imports no client (nor gevent) itself
from servers.core.auth import DEV_SECRET

TRANSPORTS = ("ws", "sse", "longpoll", "grpc")


def add_options(parser: Any) -> None:
    """Listener for `events.init_command_line_parser`."""
    g = parser  # not a group: only the parser itself takes Locust's UI keywords
    g.add_argument("--transport", choices=TRANSPORTS, default="ws", env_var="LOCUST_TRANSPORT",
                   help="transport of every client (default ws)")
    g.add_argument("--grpc-client", choices=GRPC_CLIENTS, default="h2",
                   env_var="LOCUST_GRPC_CLIENT",
                   help="gRPC client: h2 (HTTP/2 by h2 on a gevent socket, default) or grpcio "
                        "(its gevent mode: a thread-pool round trip per message, ~6x slower)")
    g.add_argument("--servers", default="", env_var="LOCUST_SERVERS",
                   help="comma-separated base URLs of every replica (http://host:port; "
                        "gRPC: grpc://host:port; over TLS https://, wss:// or grpcs://, see "
                        "--tls-ca); users are spread round-robin. Default: --host")
    g.add_argument("--tls-ca", default="", env_var="LOCUST_TLS_CA",
                   help="PEM file of the CA that signed the servers' certificates: every "
                        "client verifies https://, wss:// and grpcs:// servers against it "
                        "(default: the system's trust store; verification is never off)")
    g.add_argument("--secret", default=DEV_SECRET, env_var="LOCUST_SECRET", is_secret=True,
                   help="token signing secret of the servers (RTBENCH_SECRET)")
    g.add_argument("--room-size", type=int, default=10, env_var="LOCUST_ROOM_SIZE",
                   help="chat: members per room (default 10)")
    g.add_argument("--publishers", type=int, default=1, env_var="LOCUST_PUBLISHERS",
                   help="broadcast/churn: publisher users (default 1)")
    g.add_argument("--publish-rate", type=float, default=1.0, env_var="LOCUST_PUBLISH_RATE",
                   help="messages per second per publisher (chat/direct: per user), default 1")
    g.add_argument("--payload-bytes", type=int, default=100, env_var="LOCUST_PAYLOAD_BYTES",
                   help="size of each message's JSON `data` (the stamp is ~60 B), default 100")
    g.add_argument("--max-messages", type=int, default=1_000_000, env_var="LOCUST_MAX_MESSAGES",
                   help="hard cap on sends per publisher (every load loop is bounded)")
    g.add_argument("--warmup", type=float, default=0.0, env_var="LOCUST_WARMUP",
                   help="seconds after the start whose latencies are left out of the histograms")
    g.add_argument("--drain", type=float, default=2.0, env_var="LOCUST_DRAIN",
                   help="publishers stop this many seconds before --run-time ends; messages "
                        "sent this close to a receiver's end are not judged (default 2)")
    g.add_argument("--step-users", type=int, default=0, env_var="LOCUST_STEP_USERS",
                   help="broadcast: add this many subscribers per step (0: no steps, use -u)")
    g.add_argument("--step-seconds", type=float, default=10.0, env_var="LOCUST_STEP_SECONDS",
                   help="broadcast: length of each step (default 10)")
    g.add_argument("--p99-limit-ms", type=float, default=250.0, env_var="LOCUST_P99_LIMIT_MS",
                   help="broadcast: stop stepping once a step's p99 latency exceeds this")
    g.add_argument("--ramp-factor", type=float, default=0.0, env_var="LOCUST_RAMP_FACTOR",
                   help="broadcast: capacity ramp by publish rate, each step at most this many "
                        "times the last (0: off; see loadgen/steps.py)")
    g.add_argument("--step-settle", type=float, default=1.0, env_var="LOCUST_STEP_SETTLE",
                   help="rate ramp: seconds at each new rate before the step is measured")
    g.add_argument("--max-server-cpu", type=float, default=90.0, env_var="LOCUST_MAX_SERVER_CPU",
                   help="rate ramp: the servers' CPU (percent of --server-cores) that counts "
                        "as their knee (default 90)")
    g.add_argument("--server-cores", type=int, default=1, env_var="LOCUST_SERVER_CORES",
                   help="rate ramp: cores the servers (all replicas) run on (default 1)")
    g.add_argument("--server-cpus", default="", env_var="LOCUST_SERVER_CPUS",
                   help="rate ramp, servers on this host: the cores they are pinned to "
                        "(e.g. 0); the knee's CPU signal is then those cores' busy time "
                        "(/proc/stat: servers, Redis, kernel) instead of the servers' own")
    g.add_argument("--max-publish-rate", type=float, default=100_000.0,
                   env_var="LOCUST_MAX_PUBLISH_RATE",
                   help="rate ramp: stop (no knee) before a step would pass this rate")
    g.add_argument("--conns-per-user", type=int, default=2, env_var="LOCUST_CONNS_PER_USER",
                   help="direct: connections held by each user name (default 2)")
    g.add_argument("--churn-interval", type=float, default=3.0, env_var="LOCUST_CHURN_INTERVAL",
                   help="churn: seconds between two reconnects of one subscriber (default 3)")
    g.add_argument("--connect-timeout", type=float, default=10.0, env_var="LOCUST_CONNECT_TIMEOUT",
                   help="seconds to wait for a welcome or a command reply (default 10)")
    g.add_argument("--request-events", choices=("batched", "on", "off"), default="batched",
                   env_var="LOCUST_REQUEST_EVENTS",
                   help="deliveries in Locust's UI/CSV stats: logged in batches (default), "
                        "one request event each (on: other listeners see them), or not (off)")
    g.add_argument("--max-connect-failures", type=int, default=10,
                   env_var="LOCUST_MAX_CONNECT_FAILURES",
                   help="connections: stop spawning after this many failed connects "
                        "(default 10)")
    g.add_argument("--max-connect-ms", type=float, default=1000.0,
                   env_var="LOCUST_MAX_CONNECT_MS",
                   help="connections: stop spawning once a second's connects have a p99 "
                        "above this (default 1000)")
    g.add_argument("--max-server-rss-mb", type=float, default=4096.0,
                   env_var="LOCUST_MAX_SERVER_RSS_MB",
                   help="connections: stop spawning once a replica's RSS passes this")
    g.add_argument("--metrics-urls", default="", env_var="LOCUST_METRICS_URLS",
                   help="connections: comma-separated /metrics URLs of the servers "
                        "(default: <server>/metrics; gRPC: port + 1000)")
    g.add_argument("--result-file", default="", env_var="LOCUST_RESULT_FILE",
                   help="where to write the JSON result (default results/loadgen-<scenario>-"
                        "<transport>-<time>.json)")
    g.add_argument("--max-cpu", type=float, default=90.0, env_var="LOCUST_MAX_CPU",
                   help="saturation: mean CPU percent of one core above which a run is invalid")
    g.add_argument("--max-lag-ms", type=float, default=20.0, env_var="LOCUST_MAX_LAG_MS",
                   help="saturation: p99 greenlet/schedule lag above which a run is invalid")
    g.add_argument("--invalid-exit-code", type=int, default=3, env_var="LOCUST_INVALID_EXIT_CODE",
                   help="exit code of a run marked invalid or that lost messages (0: ignore)")


def _cpus(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in str(text or "").replace(" ", "").split(",") if x)
    except ValueError:
        raise ValueError(f"--server-cpus: expected core numbers like 0 or 0,2; got {text!r}"
                         ) from None


@dataclass(slots=True, frozen=True)
class Params:
    """The checked rtbench options of one run."""

    transport: str
    servers: tuple[str, ...]
    secret: str
    room_size: int
    publishers: int
    publish_rate: float
    payload_bytes: int
    max_messages: int
    warmup: float
    drain: float
    step_users: int
    step_seconds: float
    p99_limit_ms: float
    conns_per_user: int
    churn_interval: float
    connect_timeout: float
    request_events: str  # batched | on | off
    result_file: str
    metrics_urls: str
    max_connect_failures: int
    max_cpu: float
    max_lag_ms: float
    invalid_exit_code: int
    run_time: float | None
    grpc_client: str = "h2"
    ramp_factor: float = 0.0  # the rate ramp (loadgen.steps); 0: off
    step_settle: float = 1.0
    max_server_cpu: float = 90.0
    server_cores: int = 1
    max_publish_rate: float = 100_000.0
    server_cpus: tuple[int, ...] = ()
    max_connect_ms: float = 1000.0
    max_server_rss_mb: float = 4096.0
    tls_ca: str = ""  # the CA file of https/wss/grpcs servers ("": the system's)

    @classmethod
    def from_options(cls, opts: argparse.Namespace) -> Params:
        servers = tuple(s.strip().rstrip("/") for s in (opts.servers or "").split(",")
                        if s.strip())
        if not servers:
            host = getattr(opts, "host", None)
            servers = (host.rstrip("/"),) if host else ("http://127.0.0.1:8000",)
        p = cls(
            transport=opts.transport, servers=servers, secret=opts.secret,
            room_size=opts.room_size, publishers=opts.publishers,
            publish_rate=opts.publish_rate, payload_bytes=opts.payload_bytes,
            max_messages=opts.max_messages, warmup=opts.warmup, drain=opts.drain,
            step_users=opts.step_users, step_seconds=opts.step_seconds,
            p99_limit_ms=opts.p99_limit_ms, ramp_factor=opts.ramp_factor,
            step_settle=opts.step_settle, max_server_cpu=opts.max_server_cpu,
            server_cores=opts.server_cores, max_publish_rate=opts.max_publish_rate,
            server_cpus=_cpus(getattr(opts, "server_cpus", "")),
            max_connect_ms=opts.max_connect_ms, max_server_rss_mb=opts.max_server_rss_mb,
            conns_per_user=opts.conns_per_user,
            churn_interval=opts.churn_interval, connect_timeout=opts.connect_timeout,
            request_events=opts.request_events, result_file=opts.result_file,
            metrics_urls=opts.metrics_urls, max_connect_failures=opts.max_connect_failures,
            max_cpu=opts.max_cpu, max_lag_ms=opts.max_lag_ms,
            invalid_exit_code=opts.invalid_exit_code,
            run_time=float(opts.run_time) if getattr(opts, "run_time", None) else None,
            grpc_client=getattr(opts, "grpc_client", "h2"),
            tls_ca=getattr(opts, "tls_ca", "") or "",
        )
        p.check()
        return p

    def check(self) -> None:
        for name in ("room_size", "publishers", "conns_per_user", "max_messages"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("publish_rate", "step_seconds", "churn_interval", "connect_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.ramp_factor and self.ramp_factor <= 1:
            raise ValueError("--ramp-factor must be above 1 (or 0: no rate ramp)")
        if self.server_cores < 1 or self.step_settle < 0:
            raise ValueError("--server-cores must be at least 1, --step-settle not negative")
        if self.grpc_client not in GRPC_CLIENTS:
            raise ValueError(f"--grpc-client must be one of {', '.join(GRPC_CLIENTS)}")
        if self.payload_bytes < 0 or self.drain < 0 or self.warmup < 0:
            raise ValueError("--payload-bytes, --drain and --warmup must not be negative")
        if self.tls_ca:
            from loadgen.clients.tls import check_ca_file

            check_ca_file(self.tls_ca)

    @property
    def ca_file(self) -> str | None:
        """`tls_ca` as the clients take it (None: the system's trust store)."""
        return self.tls_ca or None

    def server_for(self, index: int) -> str:
        """Replica of the `index`-th connection (round-robin)."""
        return self.servers[index % len(self.servers)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["secret"] = "<dev>" if self.secret == DEV_SECRET else "<set>"
        d["servers"] = list(self.servers)
        return d


def main(argv: list[str] | None = None) -> int:
    """`python -m loadgen.options`: rtbench's Locust options with their help.

    `locust -f loadgen/broadcast.py --help` cannot list them: Locust 2.x prints
    --help before it imports the locustfile (locust issue #2917).
    """
    from locust.argument_parser import LocustArgumentParser

    parser = LocustArgumentParser(
        prog="locust -f loadgen/<scenario>.py",
        description="rtbench options (plus every Locust option: locust --help). Each is also "
                    "a LOCUST_<NAME> environment variable, a locust.conf key and a web UI field.")
    add_options(parser)
    parser.parse_args(argv if argv is not None else ["--help"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
