"""`rtbench serve --stack` as a user runs it (servers/stacks/): RTBENCH_STACK picks the
HTTP server when no flag does, and gRPC, which has one server, says it ignores the stack.
What each stack serves is tested by the suites parametrized over tests/cluster.py
TARGETS (test_conformance, test_resume, test_faults) and by test_sse, test_longpoll and
test_ws_slow_consumer."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from servers.core.cursor import encode_cursor
from servers.settings import STACKS, Settings
from servers.testing import ServerProcess, free_port
from tests.cluster import start_all, stop_all, token
from tests.httpclient import Http

pytestmark = pytest.mark.e2e

# what each stack's server says it is in the `Server` response header
SERVER_HEADER = {"starlette": "uvicorn", "aiohttp": "aiohttp/"}


@pytest.mark.parametrize("stack", STACKS)
async def test_the_environment_picks_the_stack_when_no_flag_does(stack: str) -> None:
    proc = ServerProcess("longpoll", free_port(), args=["--broker", "memory"], stack=None,
                         env={"RTBENCH_STACK": stack})
    start_all([proc])
    try:
        async with Http(proc.url, timeout=5) as http:
            resp = await http.get("/healthz")
    finally:
        stop_all([proc])
    assert resp.json()["transport"] == "longpoll"
    assert SERVER_HEADER[stack] in resp.headers["server"]
    assert proc.proc is not None and proc.proc.returncode == 0  # a clean SIGTERM exits 0


@pytest.mark.parametrize("stack", STACKS)
async def test_a_cursor_as_long_as_the_limits_allow_fits_in_the_url_and_a_header(
        stack: str) -> None:
    # the default limits: 100 rooms, long names, and a cursor of about 13 KB, more than
    # aiohttp's 8190-byte default for a request line or a header field
    rooms = {f"room-{i:03d}-" + "x" * 55: [123456, "0123abcd", True] for i in range(100)}
    cursor = encode_cursor({"inbox": [7, "0123abcd"], "rooms": rooms})
    assert 8190 < len(cursor) < Settings().max_frame_bytes
    proc = ServerProcess("longpoll", free_port(), args=["--broker", "memory"], stack=stack)
    start_all([proc])
    try:
        async with Http(proc.url, timeout=10) as http:
            auth = {"authorization": f"Bearer {token('long')}"}
            for resp in (await http.post("/lp/connect", params={"resume": cursor}, headers=auth),
                         await http.post("/lp/connect",
                                         headers={**auth, "x-rtbench-resume": cursor})):
                assert resp.status == 200, resp.text()
                events = resp.json()["events"]
                assert events[0]["type"] == "welcome"
                # this server never saw those epochs: one gap per stream, then live
                assert sum(e["type"] == "gap" for e in events) == 101
    finally:
        stop_all([proc])


def test_grpc_says_it_ignores_the_stack() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        proc = ServerProcess("grpc", free_port(), log_path=log, args=[
            "--broker", "memory", "--metrics-port", str(free_port()), "--stack", "aiohttp"])
        start_all([proc])
        stop_all([proc])
        text = log.read_text()
    assert "--stack aiohttp ignored: gRPC has one server (grpcio)" in text, text
