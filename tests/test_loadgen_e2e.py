"""The Locust scenarios, headless, against real server processes (and a private Redis).

Locust monkey-patches the process with gevent, which would break the asyncio
tests, so every Locust run here is a subprocess; the assertions read the
result file it writes.
"""

from __future__ import annotations

import contextlib
import csv as _csv
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from servers.testing import RedisServer, ServerProcess, free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
TRANSPORTS = ("ws", "sse", "longpoll", "grpc")
INVALID = 3  # --invalid-exit-code default


def _server(transport: str, *args: str) -> ServerProcess:
    extra = ["--metrics-port", str(free_port())] if transport == "grpc" else []
    return ServerProcess(transport, free_port(), args=[*args, *extra])


@contextlib.contextmanager
def servers(transport: str, n: int = 1, redis: RedisServer | None = None,
            ) -> Iterator[list[ServerProcess]]:
    if redis is None:
        args = ["--broker", "memory"]
    else:
        args = ["--broker", "redis", "--redis-url", redis.url,
                "--namespace", f"lg-{uuid.uuid4().hex[:8]}"]
    procs = [_server(transport, *args) for _ in range(n)]
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.stop()


@dataclass
class Outcome:
    rc: int
    result: dict[str, Any]
    output: str

    @property
    def delivery(self) -> dict[str, Any]:
        return dict(self.result["delivery"])

    def counter(self, name: str) -> int:
        return int(self.result["counters"].get(name, 0))


def locust(scenario: str, procs: Sequence[ServerProcess], tmp_path: Path, *args: str,
           transport: str = "ws", users: int = 4, seconds: float = 4, rate: float = 20,
           locustfile: Path | None = None, popen_hook: Any = None,
           nofile: int | None = None) -> Outcome:
    out = tmp_path / f"{scenario}-{transport}-{uuid.uuid4().hex[:6]}.json"
    cmd = [sys.executable, "-m", "locust", "-f",
           str(locustfile or ROOT / "loadgen" / f"{scenario}.py"),
           "--headless", "-u", str(users), "-r", "50", "-t", f"{seconds}s",
           "--servers", ",".join(p.url for p in procs), "--transport", transport,
           "--publish-rate", str(rate), "--drain", "1", "--result-file", str(out),
           "--only-summary", "--exit-code-on-error", "0", *args]
    def limit_files() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"},
                          preexec_fn=limit_files) as proc:
        if popen_hook is not None:
            popen_hook(proc)
        try:
            stdout, _ = proc.communicate(timeout=seconds + 40)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, _ = proc.communicate()
            pytest.fail(f"locust {scenario} did not finish:\n{stdout.decode()[-3000:]}")
    text = stdout.decode(errors="replace")
    assert out.exists(), f"no result file; locust said:\n{text[-3000:]}"
    return Outcome(proc.returncode, orjson.loads(out.read_bytes()), text)


def assert_all_delivered(o: Outcome, min_expected: int) -> None:
    d = o.delivery
    assert d["missing"] == 0, (d, o.output[-2000:])
    assert d["duplicates"] == 0
    assert d["expected"] >= min_expected, d
    assert d["delivered"] == d["expected"]
    assert o.result["latency_us"]["all"]["count"] >= d["delivered"]
    assert not o.result["validity"]["lost_messages"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_broadcast_delivers_everything(transport: str, tmp_path: Path) -> None:
    csv = tmp_path / "locust"
    with servers(transport) as procs:
        o = locust("broadcast", procs, tmp_path, "--csv", str(csv), transport=transport, users=4)
    # 1 publisher + 3 subscribers, all members; ~20 msg/s for ~3 s each
    assert_all_delivered(o, min_expected=4 * 40)
    # Locust's own stats (batched, loadgen/locuststats.py) saw every delivery
    with open(f"{csv}_stats.csv", newline="") as f:
        rows = {(r["Type"], r["Name"]): r for r in _csv.DictReader(f)}
    # (also deliveries outside the accounting windows: those the publisher sent at the end)
    logged = int(rows[(transport, "message")]["Request Count"])
    assert o.delivery["delivered"] <= logged <= o.counter("received"), (logged, o.delivery)
    assert o.delivery["windows"] == 4
    assert o.counter("connects") == 4 and o.counter("connect_failures") == 0
    assert o.result["timings_us"]["connect"]["count"] == 4
    assert o.result["wire_bytes_per_delivery"] > 100  # payload (100 B) plus framing
    assert o.result["transport"] == transport and o.result["version"] == 2


def test_broadcast_steps_draw_a_capacity_curve(tmp_path: Path) -> None:
    with servers("ws") as procs:
        capped = locust("broadcast", procs, tmp_path, "--step-users", "5", "--step-seconds",
                        "2", users=11, seconds=20)
        limited = locust("broadcast", procs, tmp_path, "--step-users", "5", "--step-seconds",
                         "2", "--p99-limit-ms", "0.001", users=11, seconds=20)
    # -u 11 = 1 publisher + at most 10 subscribers: steps of 5 and 10, then stop (not at -t)
    assert [s["subscribers"] for s in capped.result["steps"]] == [5, 10]
    assert all(s["deliveries"] > 0 for s in capped.result["steps"])
    assert capped.result["duration_s"] < 10
    assert capped.delivery["missing"] == 0
    # a limit no real system meets: one step, and the reason it stopped
    (only,) = limited.result["steps"]
    assert only["stopped_because"].startswith("p99")


def test_direct_across_replicas_with_several_connections(redis_server: RedisServer,
                                                         tmp_path: Path) -> None:
    with servers("ws", 2, redis_server) as procs:
        o = locust("direct", procs, tmp_path, "--conns-per-user", "2", users=4)
    # 4 users x 2 connections, each connection gets every message to its user
    assert o.delivery["windows"] == 8
    assert_all_delivered(o, min_expected=8 * 40)
    assert o.rc == 0 or o.result["validity"]["saturated"], o.result["validity"]


def test_chat_rooms_span_replicas_over_sse(redis_server: RedisServer, tmp_path: Path) -> None:
    with servers("sse", 2, redis_server) as procs:
        o = locust("chat", procs, tmp_path, "--room-size", "3", transport="sse", users=6,
                   rate=10)
    assert o.delivery["windows"] == 6
    assert_all_delivered(o, min_expected=6 * 3 * 15)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_churn_resumes_without_loss_or_duplicates(transport: str, tmp_path: Path) -> None:
    with servers(transport) as procs:
        o = locust("churn", procs, tmp_path, "--churn-interval", "0.4", transport=transport,
                   users=4, rate=100)
    d = o.delivery
    assert o.counter("reconnects") >= 6, (o.result["counters"], o.output[-2000:])
    assert o.counter("reconnect_failures") == 0
    assert o.result["timings_us"]["rejoin"]["count"] == o.counter("reconnects")
    # reconnects resume with the cursor: what was published while away is replayed
    assert d["missing"] == 0 and d["duplicates"] == 0, (d, o.output[-2000:])
    assert d["delivered"] == d["expected"] > 0
    assert not o.result["validity"]["lost_messages"]


def test_connections_reports_server_memory(tmp_path: Path) -> None:
    with servers("ws") as procs:
        o = locust("connections", procs, tmp_path, users=20, seconds=4)
    assert o.counter("connects") == 20
    (stats,) = o.result["extra"]["servers"].values()
    assert stats["connections_peak"] == 20
    assert stats["rss_per_connection_bytes"] is not None
    assert stats["idle_cpu_percent"] is not None


def test_connections_stop_spawning_at_the_open_files_limit(tmp_path: Path) -> None:
    with servers("ws") as procs:
        o = locust("connections", procs, tmp_path, "--max-connect-failures", "5",
                   users=600, seconds=9, nofile=400)
    stop = o.result["extra"]["connections_stop"]
    assert stop["limit_reached"] and stop["reason"].startswith("open-files limit"), stop
    assert o.result["extra"]["nofile_limit"]["soft"] == 400
    (stats,) = o.result["extra"]["servers"].values()
    # the ramp stopped short of the limit and held what it had: a plateau to measure on
    assert 0 < stats["connections_peak"] < 400, stats
    assert stats["rss_per_connection_bytes"] is not None


@pytest.mark.parametrize(("limits", "knee"), [
    (["--max-server-cpu", "0.001"], True),  # any CPU at all is "saturated": a knee at once
    (["--max-server-cpu", "100", "--max-publish-rate", "50"], False),  # no knee, a cap
])
def test_rate_ramp_stops_at_a_knee_or_says_why_not(limits: list[str], knee: bool,
                                                    tmp_path: Path) -> None:
    with servers("ws") as procs:
        o = locust("broadcast", procs, tmp_path, "--ramp-factor", "2", "--step-seconds", "1",
                   "--step-settle", "0", *limits, users=4, rate=20, seconds=30)
    ramp = o.result["extra"]["ramp"]
    steps = o.result["steps"]
    assert ramp["knee_reached"] is knee, ramp
    if knee:
        assert ramp["stopped_because"].startswith("server CPU"), ramp
    else:
        assert [s["publish_rate"] for s in steps] == [20, 40], steps
        assert ramp["stopped_because"] == "--max-publish-rate 50 reached before a knee"
    assert o.result["duration_s"] < 20  # the ramp ended the run, not -t
    for s in steps:
        assert s["delivered_per_s"] > 0 and s["server_cpu_percent"] is not None, s
        assert s["loadgen"]["valid"], s
    assert_all_delivered(o, 20)  # publishing stopped before the end: nothing cut off


STARVED = """
import time

import gevent

from loadgen import hooks
from loadgen.broadcast import Publisher, Steps, Subscriber  # noqa: F401


def _hog(run):
    def burn():  # holds the gevent hub 150 ms at a time: a starved load generator
        while not run.stop.is_set():
            t = time.perf_counter()
            while time.perf_counter() - t < 0.15:
                pass
            gevent.sleep(0.005)
    gevent.spawn(burn)


hooks.current().on_start.append(_hog)
"""


def test_saturation_marks_a_starved_generator_invalid(tmp_path: Path) -> None:
    starved = tmp_path / "starved.py"
    starved.write_text(STARVED)
    with servers("ws") as procs:
        o = locust("broadcast", procs, tmp_path, users=3, locustfile=starved)
    v = o.result["validity"]
    assert v["saturated"] and not v["valid"], v
    assert any("lag" in r for r in v["reasons"])
    assert o.rc == INVALID
    assert o.delivery["missing"] == 0  # slow is not lost: the verdict keeps them apart


def _wait_connections(url: str, n: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
            if orjson.loads(resp.read())["connections"] >= n:
                return
        time.sleep(0.05)
    pytest.fail(f"{url} never held {n} connections")


@pytest.mark.parametrize("transport", ["ws", "longpoll"])
def test_open_loop_schedule_survives_a_paused_server(transport: str, tmp_path: Path) -> None:
    rate, seconds, pause = 50, 5, 1.0
    with servers(transport) as procs:
        server = procs[0]
        assert server.proc is not None
        pid = server.proc.pid

        def stall(proc: subprocess.Popen[bytes]) -> None:
            _wait_connections(server.url, 2)
            time.sleep(0.5)  # let deliveries flow first: the stall must hit a running schedule
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(pause)
            finally:
                os.kill(pid, signal.SIGCONT)

        o = locust("broadcast", procs, tmp_path, transport=transport, users=2, rate=rate,
                   seconds=seconds, popen_hook=stall)
    d = o.delivery
    # the schedule ran through the stall: ~rate x (seconds - drain) sends, not rate x 3 s
    assert d["published"] >= rate * (seconds - 1) * 0.85, d
    assert d["missing"] == 0, d
    lat = o.result["latency_us"]["all"]
    # counted from the intended send time, the stall shows up in full
    assert lat["max"] >= pause * 0.8e6, lat


def test_distributed_workers_merge_into_one_result(tmp_path: Path) -> None:
    with servers("ws") as procs:
        o = locust("broadcast", procs, tmp_path, "--processes", "2", users=5, seconds=5)
    assert len(o.result["processes"]) == 2, o.result["processes"]
    assert o.delivery["windows"] == 5
    assert_all_delivered(o, min_expected=5 * 40)
    hosts = o.result["latency_by_host_us"]
    assert sum(h["message"]["count"] for h in hosts.values()) == o.result["latency_us"][
        "message"]["count"]


GRPC_NO_HANG = """
import sys
from gevent import monkey; monkey.patch_all()
import gevent
from loadgen.clients import client_class
from loadgen.measure import build_payload, now_us
from servers.core.auth import DEV_SECRET, make_token

url = sys.argv[1]
C = client_class("grpc")
got = []
for i in range(15):  # open, use and close many streams: none may hang
    c = C(url, make_token(f"u{i}", DEV_SECRET), lambda e, n, t: got.append(e), 5.0)
    c.connect()
    c.join("r")
    c.publish("r", build_payload("u", i, now_us(), 80))
    c.ping()
    c.close()
    assert c.closed.is_set()
# more live streams than gevent's default 10 pool threads: each channel holds one
many = [C(url, make_token(f"m{i}", DEV_SECRET), lambda e, n, t: got.append(e), 5.0)
        for i in range(24)]
gevent.joinall([gevent.spawn(m.connect) for m in many], raise_error=True)
gevent.joinall([gevent.spawn(m.join, "many") for m in many], raise_error=True)
before = len(got)
many[0].publish("many", build_payload("m0", 0, now_us(), 80))
deadline = now_us() + 5_000_000
while len(got) < before + 24 and now_us() < deadline:
    gevent.sleep(0.01)
assert len(got) == before + 24, len(got) - before
gevent.joinall([gevent.spawn(m.close) for m in many], timeout=10)
assert all(m.closed.is_set() for m in many)
watcher = C(url, make_token("w", DEV_SECRET), lambda e, n, t: None, 5.0)
watcher.connect()
print("READY", len(got), flush=True)
sys.stdin.readline()  # the test stops the server now
ok = watcher.closed.wait(timeout=10)
print("ENDED", ok, watcher.close_code, flush=True)
"""


def test_grpc_client_never_hangs_under_gevent(tmp_path: Path) -> None:
    script = tmp_path / "grpc_no_hang.py"
    script.write_text(GRPC_NO_HANG)
    with servers("grpc") as procs, subprocess.Popen(
        [sys.executable, str(script), procs[0].url], cwd=ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            line = proc.stdout.readline().decode()
            assert line.startswith("READY"), line + proc.stdout.read().decode()
            procs[0].stop()  # server goes away under an open stream
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            out, _ = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "ENDED True" in out.decode(), out.decode()
    assert proc.returncode == 0


LONGPOLL_FAILURES = """
import socket, sys
from gevent import monkey; monkey.patch_all()
import gevent
from loadgen.clients import client_class
from loadgen.clients import longpoll
from loadgen.clients.reactor import reactor
from loadgen.measure import build_payload, now_us, parse_stamp
from servers.core.auth import DEV_SECRET, make_token

url = sys.argv[1]
C = client_class("longpoll")
got = []

def wait_for(n):
    deadline = now_us() + 5_000_000
    while len(got) < n and now_us() < deadline:
        gevent.sleep(0.01)
    return " ".join(str(s) for s in got)

def on_event(ev, nbytes, recv_us):
    if ev.get("type") == "message":
        got.append(parse_stamp(ev["data"]).seq)

pub = C(url, make_token("pub", DEV_SECRET), None, 5.0)
pub.connect()
pub.join("r")
sub = C(url, make_token("sub", DEV_SECRET), on_event, 5.0)
sub.connect()
sub.join("r")
pub.publish("r", build_payload("pub", 0, now_us(), 80))
print("LIVE", wait_for(1), flush=True)
for k in (1, 2):  # the held poll's socket breaks: polled again on a new one, nothing lost
    sub._sock.shutdown(socket.SHUT_RDWR)
    gevent.sleep(0.2)
    pub.publish("r", build_payload("pub", k, now_us(), 80))
    print("AFTER_BREAK", wait_for(k + 1), sub.closed.is_set(), flush=True)
sub._poll = sub._poll.replace(sub.conn_id.encode(), b"gone")  # next poll: 404
sub._sock.shutdown(socket.SHUT_RDWR)
print("HTTP_ERROR", sub.closed.wait(5), sub.close_code, sub.close_reason, flush=True)
sub.close()
longpoll.POLL_SLACK = 0.3 - longpoll.POLL_TIMEOUT  # a held poll now counts as lost
slow = C(url, make_token("slow", DEV_SECRET), None, 5.0)
slow.connect()
print("UNANSWERED", slow.closed.wait(5), slow.close_code, slow.close_reason, flush=True)
slow.close()
longpoll.POLL_SLACK = 10.0
pub.close()
print("READERS", len(reactor()), flush=True)
"""


def test_longpoll_client_polls_again_after_network_failures(tmp_path: Path) -> None:
    script = tmp_path / "longpoll_failures.py"
    script.write_text(LONGPOLL_FAILURES)
    with servers("longpoll") as procs:
        proc = subprocess.run([sys.executable, str(script), procs[0].url], cwd=ROOT,
                              capture_output=True, text=True, timeout=40)
    out = proc.stdout + proc.stderr
    said = {ln.split()[0]: ln.split()[1:] for ln in proc.stdout.splitlines() if ln.strip()}
    assert proc.returncode == 0, out
    assert said["LIVE"] == ["0"], out
    assert "AFTER_BREAK 0 1 2 False" in proc.stdout, out
    # an HTTP error ends the connection at once, with the server's error code
    assert said["HTTP_ERROR"][:4] == ["True", "1006", "poll", "failed:"], out
    assert said["HTTP_ERROR"][4] == "unknown_session:", out
    # POLL_RETRIES failures are retried, the one after ends the connection
    assert said["UNANSWERED"][:2] == ["True", "1006"] and "no response" in proc.stdout, out
    assert said["READERS"] == ["0"], out  # every poll socket left the reactor
