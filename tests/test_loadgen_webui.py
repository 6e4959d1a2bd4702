"""The scenarios in Locust's web-UI mode: sensible users and host before Start is pressed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers.testing import free_port, stop_process, wait_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def web_ui(request: pytest.FixtureRequest) -> Iterator[dict[str, object]]:
    scenario, extra = request.param
    port = free_port()
    server = "http://127.0.0.1:9"  # never contacted: nobody presses Start
    proc = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadgen" / f"{scenario}.py"),
         "--web-host", "127.0.0.1", "--web-port", str(port), "--transport", "ws",
         "--servers", server, *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port, 30, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            page = resp.read().decode()
        match = re.search(r"templateArgs\s*=\s*(\{.*?\})\s*</script>", page, re.S)
        assert match, "no templateArgs in Locust's index page"
        args = json.loads(match.group(1))
        yield {"server": server, **args}
    finally:
        stop_process(proc)


@pytest.mark.parametrize("web_ui", [("broadcast", [])], indirect=True)
def test_broadcast_opens_with_publisher_and_subscribers_and_the_servers_as_host(
        web_ui: dict[str, object]) -> None:
    assert web_ui["num_users"] == 21  # 1 publisher + 20 subscribers
    assert web_ui["spawn_rate"] == 10
    assert web_ui["host"] == web_ui["server"]
    assert not web_ui.get("missing_host_warning")


@pytest.mark.parametrize("web_ui", [("chat", ["--room-size", "5", "-u", "7"])], indirect=True)
def test_given_options_win_over_scenario_defaults(web_ui: dict[str, object]) -> None:
    assert web_ui["num_users"] == 7
    assert web_ui["spawn_rate"] == 10
