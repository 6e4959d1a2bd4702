"""`rtbench serve --stack` as a user runs it (servers/stacks/): RTBENCH_STACK picks the
HTTP server when no flag does, and gRPC, which has one server, says it ignores the stack.
What each stack serves is tested by the suites parametrized over tests/cluster.py
TARGETS (test_conformance, test_resume, test_faults) and by test_sse, test_longpoll and
test_ws_slow_consumer."""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
import pytest

from servers.settings import STACKS
from servers.testing import ServerProcess, free_port
from tests.cluster import start_all, stop_all

pytestmark = pytest.mark.e2e

# what each stack's server says it is in the `Server` response header
SERVER_HEADER = {"starlette": "uvicorn", "aiohttp": "aiohttp/"}


@pytest.mark.parametrize("stack", STACKS)
async def test_the_environment_picks_the_stack_when_no_flag_does(stack: str) -> None:
    proc = ServerProcess("longpoll", free_port(), args=["--broker", "memory"], stack=None,
                         env={"RTBENCH_STACK": stack})
    start_all([proc])
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=5) as http:
            resp = await http.get("/healthz")
    finally:
        stop_all([proc])
    assert resp.json()["transport"] == "longpoll"
    assert SERVER_HEADER[stack] in resp.headers["server"]
    assert proc.proc is not None and proc.proc.returncode == 0  # a clean SIGTERM exits 0


def test_grpc_says_it_ignores_the_stack() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        proc = ServerProcess("grpc", free_port(), log_path=log, args=[
            "--broker", "memory", "--metrics-port", str(free_port()), "--stack", "aiohttp"])
        start_all([proc])
        stop_all([proc])
        text = log.read_text()
    assert "--stack aiohttp ignored: gRPC has one server (grpcio)" in text, text
