"""Settings: defaults < RTBENCH_* environment < flags, with errors naming the culprit."""

from __future__ import annotations

import pytest

from servers.core.auth import DEV_SECRET
from servers.core.types import Limits
from servers.settings import Settings, SettingsError, from_env, parse, validate


def test_defaults_match_the_documented_limits() -> None:
    s = from_env({})
    assert s == Settings()
    assert s.limits() == Limits()
    assert (s.transport, s.broker, s.secret, s.host) == ("ws", "redis", DEV_SECRET, "127.0.0.1")


def test_environment_values_are_cast() -> None:
    s = from_env({
        "RTBENCH_TRANSPORT": "sse",
        "RTBENCH_PORT": "9001",
        "RTBENCH_HEARTBEAT": "2.5",
        "RTBENCH_REDIS_URL": "redis://127.0.0.1:7000/1",
        "RTBENCH_SECRET": "s3cret",
        "RTBENCH_MAX_ROOMS": "7",
        "RTBENCH_OUTBOX_MAX_EVENTS": "10",
        "RTBENCH_OUTBOX_MAX_BYTES": "4096",
        "RTBENCH_MAX_FRAME_BYTES": "1024",
        "RTBENCH_UNKNOWN": "ignored",
        "PORT": "1",  # not ours
    })
    assert (s.transport, s.port, s.heartbeat) == ("sse", 9001, 2.5)
    assert isinstance(s.port, int) and isinstance(s.heartbeat, float)
    assert (s.redis_url, s.secret, s.max_rooms) == ("redis://127.0.0.1:7000/1", "s3cret", 7)
    assert s.limits() == Limits(max_frame_bytes=1024, max_rooms=7, outbox_max_events=10,
                                outbox_max_bytes=4096)


@pytest.mark.parametrize(
    ("var", "raw", "expected"),
    [
        ("RTBENCH_PORT", "abc", "expected a non-negative int"),
        ("RTBENCH_PORT", "-1", "expected a non-negative int"),
        ("RTBENCH_PORT", "1.5", "expected a non-negative int"),
        ("RTBENCH_MAX_ROOMS", "", "expected a non-negative int"),
        ("RTBENCH_HEARTBEAT", "soon", "expected a non-negative float"),
        ("RTBENCH_HEARTBEAT", "-0.5", "expected a non-negative float"),
        ("RTBENCH_HEARTBEAT", "nan", "expected a non-negative float"),
        ("RTBENCH_POLL_TIMEOUT", "inf", "expected a non-negative float"),
    ],
)
def test_bad_environment_values_name_the_variable_and_value(
        var: str, raw: str, expected: str) -> None:
    with pytest.raises(SettingsError) as info:
        from_env({var: raw})
    msg = str(info.value)
    assert msg.startswith(f"{var}={raw!r}:")
    assert expected in msg


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RTBENCH_TRANSPORT": "carrier-pigeon"}, "transport 'carrier-pigeon'"),
        ({"RTBENCH_BROKER": "kafka"}, "broker 'kafka'"),
        ({"RTBENCH_MAX_FRAME_BYTES": "100"}, "max_frame_bytes must be at least 256"),
        ({"RTBENCH_PORT": "70000"}, "port=70000"),
        ({"RTBENCH_PRESENCE_TTL": "0.1"}, "presence_ttl=0.1: expected 0 .off. or at least 0.3"),
        ({"RTBENCH_TCP_USER_TIMEOUT": "0.0001"}, "tcp_user_timeout=0.0001"),
    ],
)
def test_invalid_values_are_refused(env: dict[str, str], expected: str) -> None:
    with pytest.raises(SettingsError, match=expected):
        from_env(env)


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTBENCH_PORT", "9001")
    monkeypatch.setenv("RTBENCH_BROKER", "memory")
    monkeypatch.setenv("RTBENCH_SECRET", "from-env")
    s = parse([])
    assert (s.port, s.broker, s.secret) == (9001, "memory", "from-env")
    s = parse(["--port", "9100", "--transport", "longpoll", "--heartbeat", "0.5",
               "--max-rooms", "3", "--redis-url", "redis://127.0.0.1:1/0"])
    assert (s.port, s.transport, s.heartbeat, s.max_rooms) == (9100, "longpoll", 0.5, 3)
    assert (s.broker, s.secret, s.redis_url) == ("memory", "from-env", "redis://127.0.0.1:1/0")


def test_every_setting_but_the_secret_has_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RTBENCH_PORT", "RTBENCH_SECRET"):
        monkeypatch.delenv(var, raising=False)
    s = parse(["--namespace", "ns", "--server-id", "r1", "--max-frame-bytes", "512",
               "--outbox-max-events", "5", "--outbox-max-bytes", "999", "--poll-timeout", "3",
               "--session-ttl", "4", "--log-level", "info", "--ws-impl", "wsproto",
               "--metrics-port", "9999", "--host", "127.0.0.2", "--presence-ttl", "2.5",
               "--tcp-user-timeout", "0"])
    assert (s.namespace, s.server_id, s.max_frame_bytes) == ("ns", "r1", 512)
    assert (s.outbox_max_events, s.outbox_max_bytes) == (5, 999)
    assert (s.poll_timeout, s.session_ttl, s.log_level, s.ws_impl) == (3.0, 4.0, "info", "wsproto")
    assert (s.metrics_port, s.host) == (9999, "127.0.0.2")
    assert (s.presence_ttl, s.tcp_user_timeout) == (2.5, 0.0)
    with pytest.raises(SystemExit):  # a secret on the command line would show in `ps`
        parse(["--secret", "x"])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--port", "-5"], "port=-5"),
        (["--heartbeat", "-1"], "heartbeat=-1.0"),
        (["--heartbeat", "nan"], "heartbeat=nan"),
        (["--max-rooms", "-1"], "max_rooms=-1"),
        (["--metrics-port", "65536"], "metrics_port=65536"),
        (["--max-frame-bytes", "10"], "max_frame_bytes must be at least 256"),
        (["--presence-ttl", "-1"], "presence_ttl=-1.0"),
        (["--presence-ttl", "0.2"], "presence_ttl=0.2"),
    ],
)
def test_flags_are_validated_like_the_environment(
        argv: list[str], expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTBENCH_PORT", raising=False)
    with pytest.raises(SettingsError, match=expected):
        parse(argv)


def test_flag_type_errors_exit_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(["--port", "eighty"])
    assert info.value.code == 2
    assert "--port" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--transport", "smoke-signals"])


def test_validate_passes_good_settings_through() -> None:
    s = Settings(transport="grpc", broker="memory", port=0, heartbeat=0.0)
    assert validate(s) is s
    off = Settings(presence_ttl=0.0, tcp_user_timeout=0.0)  # 0 turns each off
    assert validate(off) is off


def test_liveness_defaults() -> None:
    s = Settings()
    assert (s.heartbeat, s.tcp_user_timeout, s.presence_ttl) == (15.0, 30.0, 30.0)


def test_history_settings_reach_the_limits() -> None:
    s = from_env({"RTBENCH_HISTORY_SIZE": "0", "RTBENCH_HISTORY_TTL": "12.5"})
    assert (s.limits().history_size, s.limits().history_ttl) == (0, 12.5)
    assert not s.limits().history and Limits().history  # 0 turns history off
    s = parse(["--history-size", "50", "--history-ttl", "9"])
    assert (s.limits().history_size, s.limits().history_ttl) == (50, 9.0)
    with pytest.raises(SettingsError, match="history_ttl"):
        parse(["--history-ttl", "0"])
    assert parse(["--history-size", "0", "--history-ttl", "0"]).history_ttl == 0  # off: unused


def test_the_stack_is_starlette_unless_a_flag_or_the_environment_says_aiohttp(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("RTBENCH_STACK", raising=False)
    assert parse([]).stack == "starlette" == Settings().stack
    assert parse(["--stack", "aiohttp", "--transport", "sse"]).stack == "aiohttp"
    assert from_env({"RTBENCH_STACK": "aiohttp"}).stack == "aiohttp"
    monkeypatch.setenv("RTBENCH_STACK", "aiohttp")
    assert parse([]).stack == "aiohttp"
    assert parse(["--stack", "starlette"]).stack == "starlette"  # the flag wins
    # gRPC has one server: any stack is accepted there (servers/serve.py says it is ignored)
    assert parse(["--transport", "grpc"]).stack == "aiohttp"
    with pytest.raises(SettingsError, match="stack 'tornado': expected one of starlette, aiohttp"):
        from_env({"RTBENCH_STACK": "tornado"})
    with pytest.raises(SystemExit):
        parse(["--stack", "tornado"])
    assert "invalid choice: 'tornado'" in capsys.readouterr().err


def test_the_stack_flag_says_what_it_does_and_its_variable(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--stack {starlette,aiohttp}" in text
    assert "ignored by --transport grpc" in text and "RTBENCH_STACK" in text
