"""bench.experiments.latency_floor: the ratios and their medians (plain calls), and its measuring
roles against real processes: the hop floor (relay and echo processes) and the Redis
baseline (a real redis-server)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from bench.experiments import latency_floor as lf
from servers.testing import RedisServer

pytestmark = pytest.mark.timeout(60)


def stream(p50: int, **extra: Any) -> dict[str, Any]:
    return {"count": 10, "sent": 10, "p50_us": p50, "p90_us": p50, "p99_us": p50,
            "max_us": p50, **extra}


def a_round(ws: int, aio: int, redis: int, relay: int, direct: int, lean: int = 0,
            ) -> dict[str, Any]:
    return lf.round_result(stream(redis), stream(ws, missing=0, valid=True), stream(aio),
                           {"relay": stream(relay), "direct": stream(direct)},
                           stream(lean) if lean else None)


def test_round_ratios_and_what_each_side_adds_over_its_hops() -> None:
    r = a_round(ws=1500, aio=1600, redis=600, relay=300, direct=200, lean=500)
    assert r["ratio_p50"] == pytest.approx(2.5)
    assert r["ratio_p50_asyncio_client"] == pytest.approx(1600 / 600)
    assert r["ratio_p50_lean_baseline"] == pytest.approx(3.0)
    assert r["floor_ratio"] == pytest.approx(1.5)
    assert r["above_floor_us"] == {"rtbench": 1200, "rtbench_asyncio_client": 1300, "redis": 400,
                                   "redis_lean": 300}


def test_a_stream_without_samples_gives_no_ratio_instead_of_a_division_error() -> None:
    r = a_round(ws=1500, aio=0, redis=0, relay=300, direct=200)
    assert r["ratio_p50"] is None and r["ratio_p50_asyncio_client"] is None
    s = lf.summarize([r], target=2.0)
    assert s["ratio_p50"] is None and s["ok"] is False


def test_summary_is_the_median_of_the_rounds_and_judges_it_against_the_target() -> None:
    rounds = [a_round(1500, 1500, 600, 300, 200),  # 2.5
              a_round(1100, 1200, 600, 300, 200),  # 1.83
              a_round(3000, 3000, 600, 300, 200)]  # 5.0: one noisy round does not decide
    s = lf.summarize(rounds, target=2.0)
    assert s["ratio_p50"] == pytest.approx(2.5)
    assert s["ok"] is False
    assert s["above_floor_us"]["rtbench"] == 1200
    assert lf.summarize(rounds[1:2], target=2.0)["ok"] is True
    assert s["valid"] is True
    rounds[0]["rtbench"]["missing"] = 1
    assert lf.summarize(rounds, target=2.0)["valid"] is False


def run_role(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.experiments.latency_floor", *args],
                         capture_output=True, timeout=45, check=True, cwd=lf.ROOT)
    return dict(json.loads(out.stdout.decode().strip().splitlines()[-1]))


def test_floor_role_times_every_relay_and_direct_round_trip() -> None:
    # 20/s for 0.5 s after the warm-up: 10 timed round trips on each path
    res = run_role("--role", "floor", "--seconds", "0.5", "--rate", "20", "--t0",
                   repr(time.time() + 0.5), "--server-cpu", "0", "--redis-cpu", "0")
    for name in ("relay", "direct"):
        assert res[name]["count"] == res[name]["sent"] == 10
        assert 0 < res[name]["p50_us"] <= res[name]["max_us"]


@pytest.mark.parametrize("role", ["redis", "redis-lean"])
def test_redis_roles_time_every_publish(redis_server: RedisServer, role: str) -> None:
    res = run_role("--role", role, "--redis-url", redis_server.url, "--seconds", "0.5",
                   "--rate", "20", "--t0", repr(time.time() + 0.5))
    assert res["count"] == res["sent"] == 10
    assert 0 < res["p50_us"] <= res["max_us"]


def test_bad_options_are_refused_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        lf.main(["--redis-cpu", "elsewhere"])
    assert exc.value.code == 2
    assert "--redis-cpu is server, load or none" in capsys.readouterr().err
