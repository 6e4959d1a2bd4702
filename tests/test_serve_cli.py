"""`rtbench serve` as a newcomer meets it: a start-up failure the user can fix (Redis not
running, a port taken, a bad --redis-url) is one line on stderr naming the address and
the fix, exit 2, on every transport and stack; `--help` gives every flag its help, default
and variable; README's configuration table is the one generated from the settings."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from servers.settings import (
    STACKS,
    Settings,
    SettingsError,
    env_var,
    flag_name,
    from_env,
    make_parser,
    markdown_table,
    redact_url,
    validate,
)
from servers.testing import RedisServer, ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
TABLE_HEADER = "| flag | variable | default | meaning |"

# every transport on every server stack; gRPC has one server
TARGETS = [
    *(pytest.param(t, stack, id=f"{t}-{stack}")
      for stack in STACKS for t in ("ws", "sse", "longpoll")),
    pytest.param("grpc", None, id="grpc"),
]


def _ports(transport: str) -> list[str]:
    """gRPC's metrics port on a free port too (its default, port + 1000, may be taken)."""
    return ["--metrics-port", str(free_port())] if transport == "grpc" else []


def _one_line(output: str) -> str:
    assert "Traceback" not in output
    lines = output.splitlines()
    assert len(lines) == 1, output
    return lines[0]


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    """`rtbench serve ARGS` as a user types it, run to its exit."""
    return subprocess.run([sys.executable, "-m", "bench.cli", "serve", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield int(listener.getsockname()[1])


# ------------------------------------------------------------------ start-up failures


@pytest.mark.e2e
@pytest.mark.parametrize(("transport", "stack"), TARGETS)
def test_unreachable_redis_is_one_line_naming_the_url_and_the_fix_exit_2(
        transport: str, stack: str | None, tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # a free port: nothing listens there
    log = tmp_path / "serve.log"  # the server's stdout and stderr
    server = ServerProcess(transport, free_port(), stack=stack, log_path=log,
                           args=["--broker", "redis", "--redis-url", url, *_ports(transport)])
    # start() returns once the port accepts: the server must exit without ever listening
    with pytest.raises(RuntimeError, match="process exited with 2 before listening"):
        server.start()
    line = _one_line(log.read_text())
    assert line.startswith(f"rtbench serve: cannot reach Redis at {url}: ")
    assert "start redis-server" in line and "--broker memory" in line


@pytest.mark.e2e
@pytest.mark.parametrize(("transport", "stack"), TARGETS)
def test_with_redis_running_the_same_server_starts_and_stops_cleanly(
        transport: str, stack: str | None, redis_server: RedisServer) -> None:
    server = ServerProcess(transport, free_port(), stack=stack,
                           args=["--broker", "redis", "--redis-url", redis_server.url,
                                 *_ports(transport)])
    server.start()
    assert server.stop() == 0


@pytest.mark.e2e
def test_the_redis_password_is_not_printed() -> None:
    url = f"redis://rtb:hunter2@127.0.0.1:{free_port()}/0"
    run = _serve("--transport", "sse", "--port", str(free_port()), "--redis-url", url)
    assert run.returncode == 2 and run.stdout == ""
    line = _one_line(run.stderr)
    assert "hunter2" not in line
    assert f"cannot reach Redis at {redact_url(url)}: " in line


@pytest.mark.e2e
@pytest.mark.parametrize(("transport", "stack"), TARGETS)
def test_a_taken_port_is_one_line_naming_host_and_port_exit_2(
        transport: str, stack: str | None, taken_port: int) -> None:
    # Redis unreachable as well: the port is checked first
    run = _serve("--transport", transport, *(["--stack", stack] if stack else []),
                 "--port", str(taken_port), *_ports(transport),
                 "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert run.returncode == 2 and run.stdout == ""
    assert _one_line(run.stderr) == (
        f"rtbench serve: cannot listen on 127.0.0.1:{taken_port}: address already in use; "
        "stop the process that holds it or pick another --port")


@pytest.mark.e2e
def test_a_taken_grpc_metrics_port_names_its_flag(taken_port: int) -> None:
    run = _serve("--transport", "grpc", "--broker", "memory", "--port", str(free_port()),
                 "--metrics-port", str(taken_port))
    assert run.returncode == 2 and run.stdout == ""
    assert _one_line(run.stderr) == (
        f"rtbench serve: cannot listen on 127.0.0.1:{taken_port}: address already in use; "
        "stop the process that holds it or pick another --metrics-port")


@pytest.mark.e2e
def test_a_redis_url_of_the_wrong_form_is_one_line_exit_2() -> None:
    run = _serve("--transport", "ws", "--port", str(free_port()), "--redis-url",
                 "localhost:6379")
    assert run.returncode == 2 and run.stdout == ""
    assert _one_line(run.stderr) == (
        "rtbench serve: redis_url 'localhost:6379': expected "
        "redis://[user:password@]host[:port][/db], rediss://... or unix:///path[?db=N]")


@pytest.mark.parametrize("url", [
    "localhost:6379", "http://127.0.0.1:6379", "redis://127.0.0.1:port/0",
    "redis://127.0.0.1:6379/zero", "redis://:6379/0", "unix://", "unix:///tmp/r.sock?db=x",
    "redis://127.0.0.1:70000", "",
])
def test_redis_urls_the_broker_cannot_use_are_refused(url: str) -> None:
    with pytest.raises(SettingsError, match=r"^redis_url .*: expected redis://"):
        validate(Settings(redis_url=url))
    # the memory broker never reads it
    assert validate(Settings(redis_url=url, broker="memory")).redis_url == url


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0", "redis://localhost", "rediss://cache.example:6380/2",
    "redis://user:pw@10.0.0.1:6379/1", "redis://:pw@[::1]:6379", "unix:///tmp/r.sock",
    "unix:///tmp/r.sock?db=3",
])
def test_redis_urls_the_broker_uses_pass(url: str) -> None:
    assert validate(Settings(redis_url=url)).redis_url == url


def test_a_password_in_a_refused_url_is_hidden() -> None:
    with pytest.raises(SettingsError) as info:
        from_env({"RTBENCH_REDIS_URL": "redis://rtb:hunter2@host:port/0"})
    assert "hunter2" not in str(info.value) and "rtb:***@host:port" in str(info.value)


# ------------------------------------------------------------------ --help and README


def test_every_flag_has_help_its_default_and_its_variable() -> None:
    parser = make_parser(env={})
    flags = [a for a in parser._actions if a.dest != "help"]
    assert {a.dest for a in flags} == {f.name for f in fields(Settings) if f.metadata["flag"]}
    for action in flags:
        assert action.help, action.dest
        assert f"; env RTBENCH_{action.dest.upper()})" in action.help
        assert "(default: " in action.help
    text = " ".join(parser.format_help().split())
    assert "--history-ttl SECONDS seconds a message stays in history (default: 300; env " \
           "RTBENCH_HISTORY_TTL)" in text
    assert "--server-id NAME this replica's name in /healthz, metrics and presence " \
           "(default: host-pid; env RTBENCH_SERVER_ID)" in text
    # what has no flag is in the epilog, with its variable
    for f in fields(Settings):
        if not f.metadata["flag"]:
            assert env_var(f) in text


def test_help_says_which_variable_is_set_and_uses_it_as_the_default() -> None:
    parser = make_parser(env={"RTBENCH_PORT": "9001", "RTBENCH_STACK": "aiohttp"})
    text = " ".join(parser.format_help().split())
    assert "RTBENCH_PORT='9001' is set; built-in default: 8000" in text
    assert "RTBENCH_STACK='aiohttp' is set; built-in default: starlette" in text
    args = parser.parse_args([])
    assert (args.port, args.stack) == (9001, "aiohttp")


@pytest.mark.e2e
def test_rtbench_serve_help_exits_0() -> None:
    run = _serve("--help")
    assert run.returncode == 0 and run.stderr == ""
    assert "--tcp-user-timeout SECONDS" in run.stdout and "RTBENCH_LOG_LEVEL" in run.stdout


def test_the_table_has_one_row_per_setting() -> None:
    rows = markdown_table().splitlines()
    assert rows[0] == TABLE_HEADER
    assert len(rows) == 2 + len(fields(Settings))
    for f, row in zip(fields(Settings), rows[2:], strict=True):
        flag = f"`{flag_name(f)}`" if f.metadata["flag"] else "(env only)"
        assert row.startswith(f"| {flag} | `{env_var(f)}` | ")


def _readme_table() -> str:
    """The configuration table of README.md: the table that starts with TABLE_HEADER."""
    lines = (ROOT / "README.md").read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == TABLE_HEADER]
    assert len(starts) == 1, f"README.md should have one table headed {TABLE_HEADER!r}"
    table = []
    for line in lines[starts[0]:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return "\n".join(table) + "\n"


def test_readme_configuration_table_is_the_generated_one() -> None:
    assert _readme_table() == markdown_table(), (
        "README.md's configuration table differs from the settings (servers/settings.py): "
        "replace it with the output of `python -m servers.settings --markdown`")


def test_the_markdown_command_prints_the_table() -> None:
    run = subprocess.run([sys.executable, "-m", "servers.settings", "--markdown"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stderr == ""
    assert run.stdout == markdown_table()
    assert re.search(r"^\| `--presence-ttl` \| `RTBENCH_PRESENCE_TTL` \| 30 \| ", run.stdout,
                     re.MULTILINE)
