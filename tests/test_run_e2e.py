"""`rtbench run` end to end: real Redis, real server replicas, real Locust subprocesses.

The harness runs as a subprocess (Locust is never imported here); every process
it starts is tracked by pid (and start time, so a reused pid is not mistaken
for a survivor) and must be gone when it exits, also after Ctrl-C, SIGTERM or a
replica killed mid-scenario.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import psutil
import pytest

from bench.harness import run as run_mod
from bench.harness.plan import SCENARIOS, TRANSPORTS, default_stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
RTBENCH = [sys.executable, "-c", "import sys; from bench.cli import main; sys.exit(main())"]
PNG = b"\x89PNG\r\n\x1a\n"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Harness:
    """`rtbench run ...` as a child process; remembers every descendant it ever saw."""

    def __init__(self, out: Path, *args: str) -> None:
        self.out = out
        # SIGINT as in a terminal: a test run started in the background (`cmd &`) hands
        # its children SIGINT ignored, and Python then keeps it ignored
        self.proc = subprocess.Popen([*RTBENCH, "run", "--out", str(out), *args], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=_default_sigint)
        self.seen: dict[int, float] = {}

    def watch(self) -> list[psutil.Process]:
        try:
            kids: list[psutil.Process] = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for k in kids:
            try:
                self.seen.setdefault(k.pid, k.create_time())
            except psutil.NoSuchProcess:
                continue
        return kids

    def wait_for(self, pred: Callable[[psutil.Process], bool], timeout: float) -> psutil.Process:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for k in self.watch():
                try:
                    if pred(k):
                        return k
                except psutil.NoSuchProcess:
                    continue
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"no such child process; harness said:\n{self.finish(5)[2]}")

    def finish(self, timeout: float) -> tuple[int, str, str]:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.watch()
            time.sleep(0.2)
        if self.proc.poll() is None:
            self.proc.kill()
        out, err = self.proc.communicate()
        return self.proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def survivors(self) -> list[int]:
        alive = []
        for pid, created in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                continue
        return alive


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _cmd(p: psutil.Process) -> str:
    return " ".join(p.cmdline())


def _is_locust(p: psutil.Process) -> bool:
    return "locust" in _cmd(p) and "taskset" not in p.name()


def _is_server(p: psutil.Process) -> bool:
    return "servers.serve" in _cmd(p) and "taskset" not in p.name()


@pytest.mark.timeout(400)
def test_smoke_run_every_transport_and_scenario(tmp_path: Path) -> None:
    h = Harness(tmp_path / "run", "--smoke")
    rc, out, err = h.finish(300)
    assert rc == 0, out[-3000:] + err[-3000:]
    assert not h.survivors(), "processes left behind"
    assert len(h.seen) >= 4 * (2 + len(SCENARIOS))  # replicas and Locust runs were tracked
    run = tmp_path / "run"
    html = (run / "report.html").read_text()
    rows = _csv(run / "summary.csv")
    assert {(r["transport"], r["stack"], r["scenario"]) for r in rows} == {
        (t, default_stack(t), s) for t in TRANSPORTS for s in SCENARIOS}
    for r in rows:
        assert r["status"] == "ok", r
        if r["scenario"] == "connections":
            assert int(float(r["connects"])) > 0, r
        else:
            assert int(r["samples"]) > 0 and float(r["p50_ms"]) > 0, r
            assert float(r["server_cpu_s"]) > 0 and float(r["cpu_ms_per_1k"]) > 0, r
    for s in SCENARIOS:
        assert f"<h3>{s}</h3>" in html
        if s != "connections":
            assert (run / "plots" / f"cdf_{s}.png").read_bytes().startswith(PNG)
            for t in TRANSPORTS:  # each transport drew its line
                assert (run / "loadgen" / f"{s}-{t}.json").exists()
    for name in ("capacity-knees", "connections", "cost", "latency"):
        assert (run / "plots" / f"{name}.png").read_bytes().startswith(PNG)
    head = _csv(run / "headline.csv")
    assert [(r["transport"], r["stack"]) for r in head] == [
        (t, default_stack(t)) for t in TRANSPORTS]
    assert list(head[0]) == ["transport", "stack", "max_deliveries_per_s", "knee_reached",
                             "knee_reason", "p99_ms_at_knee", "max_held_connections",
                             "kb_per_connection", "cpu_us_per_delivery", "valid"]
    for r in head:  # the smoke ramp is capped below any knee: it says so
        assert r["knee_reason"] and float(r["max_deliveries_per_s"]) > 0, r
    assert "The textbook, checked" in html and "transport" in out
    meta = orjson.loads((run / "meta.json").read_bytes())
    assert meta["status"] == "complete" and meta["redis"]["version"]
    assert meta["placement"]["servers"] == [0]
    assert meta["parameters"]["stacks"] == ["starlette"]
    stats = _csv(run / "process_stats.csv")
    assert {r["role"] for r in stats} >= {"r0", "r1", "redis"}
    assert {(r["transport"], r["stack"]) for r in stats} == {
        (t, default_stack(t)) for t in TRANSPORTS}
    assert list((run / "metrics").glob("chat-ws-r1-after.prom"))


@pytest.mark.timeout(300)
def test_smoke_run_on_two_stacks_reports_every_target(tmp_path: Path) -> None:
    h = Harness(tmp_path / "run", "--smoke", "--stacks", "starlette,aiohttp",
                "--transports", "ws,grpc", "--scenarios", "connections,broadcast,chat")
    rc, out, err = h.finish(240)
    assert rc == 0, out[-3000:] + err[-3000:]
    assert not h.survivors(), "processes left behind"
    assert "3 targets (ws \u00b7 starlette, ws \u00b7 aiohttp, grpc \u00b7 grpcio)" in out
    run = tmp_path / "run"
    targets = [("ws", "starlette"), ("ws", "aiohttp"), ("grpc", "grpcio")]
    rows = _csv(run / "summary.csv")
    assert {(r["transport"], r["stack"]) for r in rows} == set(targets)
    for r in rows:
        assert r["status"] == "ok", r
        if r["scenario"] == "chat":
            assert int(r["samples"]) > 0 and float(r["cpu_ms_per_1k"]) > 0, r
    head = _csv(run / "headline.csv")
    assert [(r["transport"], r["stack"]) for r in head] == targets
    for r in head:
        assert float(r["max_deliveries_per_s"]) > 0 and int(r["max_held_connections"]) > 0, r
    steps = [orjson.loads(x) for x in (run / "steps.jsonl").read_bytes().splitlines()]
    assert [(s["transport"], s["stack"]) for s in steps][::3] == targets
    servers = {s["stack"]: {r["server"] for r in s["replicas"]} for s in steps}
    assert all("aiohttp/" in x for x in servers["aiohttp"])  # what really answered
    assert all("uvicorn" in x for x in servers["starlette"])
    assert (run / "loadgen" / "chat-ws-aiohttp.json").exists()
    assert (run / "loadgen" / "chat-ws.json").exists()
    meta = orjson.loads((run / "meta.json").read_bytes())
    assert meta["version"] == 3 and meta["parameters"]["stacks"] == ["starlette", "aiohttp"]
    assert meta["parameters"]["targets"] == [{"transport": t, "stack": s} for t, s in targets]
    stats = _csv(run / "process_stats.csv")
    assert {(r["transport"], r["stack"]) for r in stats} == set(targets)
    html = (run / "report.html").read_text()
    assert "Framework or transport?" in html and "Framework or transport?" in out
    assert (run / "plots" / "capacity-knees.png").read_bytes().startswith(PNG)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_every_process(tmp_path: Path, sig: signal.Signals) -> None:
    h = Harness(tmp_path / "run", "--smoke", "--transports", "ws", "--scenarios", "chat",
                "--duration", "30")
    locust = h.wait_for(_is_locust, 60)
    assert h.wait_for(_is_server, 5).is_running()
    h.proc.send_signal(sig)  # to the harness alone: it must take its children down itself
    rc, _out, err = h.finish(60)
    assert rc == run_mod.EXIT_INTERRUPTED, err
    assert "interrupted" in err
    assert not locust.is_running()
    assert not h.survivors(), "processes left behind"
    meta = orjson.loads((tmp_path / "run" / "meta.json").read_bytes())
    assert meta["status"] == "interrupted"


@pytest.mark.timeout(150)
def test_crashed_server_ends_its_scenario_and_the_run_goes_on(tmp_path: Path) -> None:
    h = Harness(tmp_path / "run", "--smoke", "--transports", "ws", "--scenarios",
                "chat,direct", "--duration", "15")
    h.wait_for(_is_locust, 60)
    server = h.wait_for(_is_server, 5)
    server.kill()
    rc, out, err = h.finish(90)
    assert rc == 1, out[-2000:] + err[-2000:]  # a step did not finish cleanly
    assert not h.survivors(), "processes left behind"
    steps = [orjson.loads(x) for x in (tmp_path / "run" / "steps.jsonl").read_bytes().split(b"\n")
             if x.strip()]
    by = {s["scenario"]: s for s in steps}
    assert by["chat"]["status"] == "crashed" and "exited" in by["chat"]["error"]
    assert by["chat"]["wall_s"] < 15  # stopped early, not run to the end on half a cluster
    assert by["direct"]["status"] == "ok"  # a fresh cluster for the next scenario
    assert server.pid not in {r["pid"] for r in by["direct"]["replicas"]}
    assert "CRASHED" in out or "crashed" in out


def test_missing_redis_server_says_how_to_install_it(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RTBENCH_REDIS_SERVER", str(tmp_path / "no-such-redis-server"))
    before = set(os.listdir(tmp_path))
    rc = run_mod.main(["--smoke", "--transports", "ws", "--scenarios", "chat",
                       "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "redis-server not found" in err and "apt-get install redis-server" in err
    assert "--broker memory" in err
    assert set(os.listdir(tmp_path)) == before


NET_OK = os.geteuid() == 0 and os.path.exists("/dev/net/tun")
NET_SKIP = "network profiles need root and /dev/net/tun"


@pytest.mark.timeout(180)
@pytest.mark.skipif(not NET_OK, reason=NET_SKIP)
def test_a_run_over_two_network_profiles_compares_them(tmp_path: Path) -> None:
    h = Harness(tmp_path / "run", "--smoke", "--net", "loopback,wan", "--tls",
                "--transports", "ws", "--scenarios", "chat")
    rc, out, err = h.finish(170)
    assert rc == 0, out + err
    run = tmp_path / "run"
    meta = orjson.loads((run / "meta.json").read_bytes())
    assert meta["kind"] == "profiles" and meta["sub_runs"] == ["net-loopback", "net-wan"]
    wan = orjson.loads((run / "net-wan" / "meta.json").read_bytes())
    assert wan["network"]["mechanism"] in ("netem", "delayd") and wan["tls"] is True
    assert 99.0 <= wan["network"]["achieved_rtt_ms"]["p50"] <= 150.0
    rows = {r["profile"]: r for r in _csv(run / "profiles.csv")}
    assert set(rows) == {"loopback", "wan"} and all(r["valid"] == "True" for r in rows.values())
    # publish to delivery crosses the 100 ms RTT link twice (50 ms each way)
    assert float(rows["loopback"]["p50_ms"]) < 50 <= 100 <= float(rows["wan"]["p50_ms"]) < 200
    # the server leg (the hub's ts to receipt) crosses it once
    assert float(rows["loopback"]["server_leg_p50_ms"]) < 25
    assert 50 <= float(rows["wan"]["server_leg_p50_ms"]) < 70
    assert "Across network profiles" in out
    assert (run / "report.html").read_text().count("net-wan/report.html") >= 1
    assert (run / "net-wan" / "report.html").is_file()
    assert not h.survivors()


@pytest.mark.timeout(120)
@pytest.mark.skipif(not NET_OK, reason=NET_SKIP)
def test_a_killed_run_leaves_no_network_behind(tmp_path: Path) -> None:
    from bench.network.namespaces import pids_in

    h = Harness(tmp_path / "run", "--smoke", "--net", "wan", "--transports", "ws",
                "--scenarios", "chat", "--duration", "30")
    locust = h.wait_for(_is_locust, 60)
    inode = os.stat(f"/proc/{locust.pid}/ns/net").st_ino
    assert inode != os.stat("/proc/self/ns/net").st_ino  # it runs in a namespace of its own
    h.proc.send_signal(signal.SIGKILL)  # no cleanup code runs
    h.finish(5)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (h.survivors() or pids_in({inode})):
        time.sleep(0.1)
    assert not h.survivors() and not pids_in({inode})
