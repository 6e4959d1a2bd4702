"""bench.experiments.guarantees end to end with tiny parameters: real servers, real Redis,
the JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.experiments.guarantees import FORMAT, main

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

SUBSCRIBERS, RATE, SECONDS, ROUNDS = 3, 40.0, 0.5, 1


@pytest.fixture
def keep_affinity() -> Iterator[None]:
    """The benchmark pins this process to the load cores; give the suite its cores back."""
    cpus = os.sched_getaffinity(0)
    try:
        yield
    finally:
        os.sched_setaffinity(0, cpus)


def test_tiny_run_writes_sane_results(tmp_path: Path, keep_affinity: None,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "g.json"
    assert main(["--transports", "ws", "--subscribers", str(SUBSCRIBERS), "--rate", str(RATE),
                 "--seconds", str(SECONDS), "--rounds", str(ROUNDS), "--warmup", "0.2",
                 "--outage", "0.5", "--repeats", "2", "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    assert (r["format"], r["transport"], r["subscribers"]) == (FORMAT, "ws", SUBSCRIBERS)
    assert set(r["history"]) == {"on", "off"}
    published = int(RATE * SECONDS) * 2 * ROUNDS  # two windows per side per ABBA round
    for side in r["history"].values():
        assert side["published"] == published
        assert side["expected"] == published * (SUBSCRIBERS + 1)  # the publisher too
        assert side["delivered"] == side["expected"] and side["complete"] is True
        assert 0 < side["p50_us"] <= side["p99_us"] <= side["max_us"] < 10_000_000
        assert side["deliveries_per_s"] > 0 and side["offered_per_s"] == RATE * (SUBSCRIBERS + 1)
        assert isinstance(side["kept_up"], bool)
        assert side["server_cpu_us_per_delivery"] > 0
        assert side["redis_cpu_us_per_message"] > 0
        assert side["redis_net_cpu_us_per_message"] <= side["redis_cpu_us_per_message"]
        assert 0 < side["server_cpu_percent"] < 200
    assert len(r["outages"]) == 2
    for o in (*r["outages"], r["outage"]):
        assert o["lost"] == o["duplicates"] == o["gaps"] == 0 and o["in_order"] is True
        assert o["missed"] >= RATE * 0.5 * 0.5  # half a second of messages, half sent at least
        # the replay may arrive with the welcome, before connect() has returned
        assert o["connect_ms"] > 0 and 0 < o["catch_up_ms"] < 20_000
    assert all(o["caught_up"] is True for o in r["outages"]) and r["outage"]["caught_up"] == 2
    assert r["outage"]["catch_up_ms_min"] <= r["outage"]["catch_up_ms"] \
        <= r["outage"]["catch_up_ms_max"]
    table = capsys.readouterr().out
    assert "caught-up ms" in table and "\nws        on " in table
