"""The regress signal on real processes: the slowdown knob costs CPU, a sample measures sanely."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson
import pytest

from bench.harness.cluster import Cluster
from bench.harness.plan import TRANSPORTS
from bench.regress.samples import Plan, Side, measure
from servers.fanout import make_broker
from servers.fanout.slowdown import SlowBroker


async def test_inject_work_burns_cpu_per_message() -> None:
    got: list[bytes] = []
    broker = make_broker("memory", inject_work_us=2000)
    assert isinstance(broker, SlowBroker)
    await broker.start(lambda topic, payload: got.append(payload))
    try:
        await broker.subscribe("room")
        # the same ns clock the knob burns against (float seconds round it away)
        cpu0, wall0 = time.thread_time_ns(), time.perf_counter_ns()
        for i in range(20):
            await broker.publish("room", b"m%d" % i)
        burnt, wall = time.thread_time_ns() - cpu0, time.perf_counter_ns() - wall0
    finally:
        await broker.close()
    assert got == [b"m%d" % i for i in range(20)]  # delivered, in order, once
    assert burnt >= 20 * 2_000_000  # CPU, not wall time: a sleep would cost ~0 CPU
    assert wall >= burnt * 0.99  # two clocks: CPU accounting may run a hair ahead of wall


def test_knob_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTBENCH_INJECT_WORK_US", raising=False)
    assert not isinstance(make_broker("memory"), SlowBroker)
    monkeypatch.setenv("RTBENCH_INJECT_WORK_US", "150")
    broker = make_broker("memory")
    assert isinstance(broker, SlowBroker) and broker.work_us == 150


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_one_sample_on_a_real_server(transport: str) -> None:
    # ~1000 deliveries in the measured window: the server's CPU over it is well above 0
    plan = Plan((transport,), subscribers=50, rate=20, seconds=1, warmup=0.3, samples=1,
                broker="memory")
    cpus = os.sched_getaffinity(0)
    try:
        rows = measure([Side("head")], plan)["head"]
    finally:
        os.sched_setaffinity(0, cpus)  # measure() pins this process to the load core
    assert len(rows) == 1 and rows[0]["transport"] == transport
    m = rows[0]["metrics"]
    assert m["lost"] == 0 and m["duplicates"] == 0
    assert m["cpu_per_delivery"] > 0 and m["throughput"] > 0
    assert 0 < m["p50"] <= m["p95"] <= m["p99"]


def test_baseline_update_records_what_regress_needs(tmp_path: Path) -> None:
    from bench.regress.baseline import main as baseline_main
    from bench.regress.compare import load_set

    cpus = os.sched_getaffinity(0)
    try:
        assert baseline_main(["update", "--out", str(tmp_path), "--samples", "1",
                              "--broker", "memory", "--transports", "ws"]) == 0
    finally:
        os.sched_setaffinity(0, cpus)
    doc = orjson.loads((tmp_path / "samples.json").read_bytes())
    meta = doc["meta"]
    assert doc["format"] == "rtbench.samples" and len(doc["samples"]) == 1
    assert len(meta["calibration_s"]) == 2 and all(c > 0 for c in meta["calibration_s"])
    assert isinstance(meta["git"]["dirty"], bool) and len(meta["git"]["revision"]) == 40
    assert meta["parameters"]["broker"] == "memory" and meta["parameters"]["transports"] == ["ws"]
    assert load_set(tmp_path).values[("ws", "fanout", "cpu_per_delivery")][0] > 0


def test_servers_start_with_flags_an_older_base_knows() -> None:
    # `rtbench regress --base REV` runs the same command line in REV's tree: a flag newer
    # than REV (such as --stack) would make its servers exit 2 before listening
    with Cluster("sse", broker="memory") as cluster:
        cmd = [str(a) for a in cluster.nodes[0].proc.args]  # type: ignore[union-attr]
    assert "--stack" not in cmd
    assert cmd[cmd.index("servers.serve") + 1:][:2] == ["--transport", "sse"]
