"""Client CPU per received message and per command round trip of the asyncio clients
(`loadgen.aio`), two ways: "old", SSE and long-poll on the hand-written HTTP/1.1 client
(`loadgen/aio/http11.py`, httptools) and WebSocket on `websockets`; "new", all three on
aiohttp's client. In one run, against the same local server per transport.

Issue 12 asked for aiohttp unless it is measurably the bottleneck; this measurement
decided: WebSocket moved to aiohttp, SSE and long-poll stayed on http11.py (its
docstring quotes the figures). Every side comes from git, so a result names the code it
measured: the server and this module from `--rev` (default HEAD, exported with `git
archive`), each arm's `loadgen/aio` from its revision (`--old-rev`, `--new-rev`) as a
temporary package with its imports rewritten.

Method, per transport: one `rtbench serve --broker memory` pinned to `--server-cpu`.
Each arm (old or new clients) runs in a fresh worker process pinned to `--client-cpu`,
in the order old, new, new, old, ... (`--reps` of each):

- messages: `--subscribers` clients of the arm join a fresh room (SSE and long-poll
  share one pool: an `http11.Pool` / an aiohttp session, as the harness does); a
  publisher process (the `loadgen.aio` client of `--rev`, pinned to the server's core,
  the same in both arms) publishes messages at the transport's rate (PROFILES) for `--warmup` then
  `--measure` seconds. Client CPU (`time.process_time` of the worker: every thread)
  from the delivery that ends the warm-up to the last one, divided by the deliveries
  in between; the server's CPU over the same deliveries beside it. Bounded by
  `--seconds` per arm (an arm that runs out is flagged `complete: false`).
- commands (profile "steady" only): one client sends `--warmup-commands` pings, then
  `--commands` pings one after the other; its CPU (and wall time) per round trip, and
  the server's.

Each worker also reports how many events a read carried on average (deliveries per
distinct receive time of a client): if one client lagged, the server would batch
more events per write or poll for it and its per-message cost would look lower.
Each worker also measures the CPU other user-space processes used over its window
(`foreign_cpu_share`, in cores): other load on a shared machine, warned above 10 %;
and the time the hypervisor stole from the two cores (`steal_share`), warned above 5 %.
Reported per profile, transport and metric: the median of each arm, the ratio of medians
(new / old), the range of the ratios of the pairs run back to back, and a warning
when an arm's spread (max - min) / median is over 20 %.

    flock /tmp/rtbench-measure.lock .venv/bin/python -m bench.experiments.aio_client_cost \\
        --json results/published/aio-client-cost-20261202.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

FORMAT = "rtbench-aio-client-cost"
VERSION = 1
TRANSPORTS = ("ws", "sse", "longpoll")
ARMS = ("old", "new")
# loadgen/aio with http11.py (SSE, long-poll) and the websockets WebSocket client
OLD_REV = "c927568786c7f6c5fc6bef7e65e92463f2270452"
# loadgen/aio with the WebSocket, SSE and long-poll clients on aiohttp
NEW_REV = "8d380a1524b60cd25713e631567620b7be54cc48"
FILES = {"old": ("__init__", "base", "http11", "sse", "longpoll", "ws", "sse_parser"),
         "new": ("__init__", "base", "http", "sse", "longpoll", "ws")}
PACKAGES = {"old": "rtbench_old_aio", "new": "rtbench_new_aio"}
# messages/s per transport (a long-poll message costs the server a poll per subscriber):
# "steady" well within what both sides take; "heavy" where a client costlier than the
# server per delivery runs out of CPU first (its busy share nears 100 %, reads batch)
PROFILES = {"steady": {"ws": 200.0, "sse": 200.0, "longpoll": 20.0},
            "heavy": {"ws": 600.0, "sse": 600.0, "longpoll": 60.0}}
SPREAD_WARN = 0.20
FOREIGN_WARN = 0.10
STEAL_WARN = 0.05
METRICS = ("cpu_us_per_message", "server_cpu_us_per_message", "events_per_read",
           "cpu_us_per_command", "server_cpu_us_per_command", "wall_us_per_command")
ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------- the arms


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def export_tree(rev: str, into: Path) -> Path:
    """The packages of `rev` (servers, loadgen, bench) under `into`."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", rev, "servers", "loadgen", "bench"], cwd=ROOT,
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def start_server(tree: Path, transport: str, cpu: int) -> tuple[subprocess.Popen[bytes], str]:
    """`rtbench serve` of `tree` on a free port, pinned to `cpu`; (process, URL)."""
    from servers.testing import free_port, wait_port

    port = free_port()
    proc = subprocess.Popen(
        ["taskset", "-c", str(cpu), sys.executable, "-m", "servers.serve", "--transport",
         transport, "--port", str(port), "--broker", "memory"],
        cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_port("127.0.0.1", port, 20, proc)
    return proc, f"http://127.0.0.1:{port}"


def extract_arm(arm: str, rev: str, into: Path) -> Path:
    """Write `loadgen/aio` of `rev` as the package of `arm` (PACKAGES) under `into`."""
    package = PACKAGES[arm]
    pkg = into / package
    pkg.mkdir(parents=True, exist_ok=True)
    for name in FILES[arm]:
        text = _git("show", f"{rev}:loadgen/aio/{name}.py") + "\n"
        text = re.sub(r"\bloadgen\.aio\b", package, text)
        (pkg / f"{name}.py").write_text(text)
    return into


# ------------------------------------------------------------------ the worker


def _token(user: str) -> str:
    from servers.core.auth import DEV_SECRET, make_token

    return make_token(user, DEV_SECRET)


async def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One arm: subscribers, a publisher process, then sequential pings; CPU figures."""
    transport, url, arm = spec["transport"], spec["url"], spec["arm"]
    sys.path.insert(0, spec["arm_dir"])
    package = __import__(PACKAGES[arm])
    connect = package.connect
    http: Any = None
    if transport in ("sse", "longpoll"):  # one pool for every client's commands
        if arm == "old":
            http = __import__(f"{PACKAGES[arm]}.http11", fromlist=["Pool"]).Pool()
        else:
            http = package.http_session()
    opts = {"http": http} if http is not None else {}
    import psutil

    server = psutil.Process(spec["server_pid"])

    me = psutil.Process()
    publisher_proc: list[psutil.Process] = []

    def server_cpu() -> float:
        t = server.cpu_times()
        return float(t.user + t.system)

    def other_cpu() -> dict[int, float]:
        """CPU seconds of every other user-space process (kernel threads left out: they
        carry our own loopback traffic), by pid."""
        ours = {me.pid, server.pid, *(p.pid for p in publisher_proc)}
        seen: dict[int, float] = {}
        for proc in psutil.process_iter(["pid", "ppid"]):
            if proc.info["pid"] in ours or proc.info["ppid"] in (0, 2):
                continue
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                seen[proc.info["pid"]] = t.user + t.system
        return seen

    cores = (spec["client_cpu"], spec["server_cpu"])

    def stolen() -> tuple[float, ...]:
        """Seconds the hypervisor took from the client's and the server's cores."""
        per_cpu = psutil.cpu_times(percpu=True)
        return tuple(getattr(per_cpu[c], "steal", 0.0) for c in cores)

    def foreign(before: dict[int, float], after: dict[int, float]) -> float:
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())

    n, warmup, messages = spec["subscribers"], spec["warmup"], spec["messages"]
    start_at, end_at = warmup * n, (warmup + messages) * n
    count = 0
    marks: dict[str, float] = {}
    others: list[dict[int, float]] = [{}, {}]
    steal: list[tuple[float, ...]] = [(0.0, 0.0), (0.0, 0.0)]
    done = asyncio.Event()
    reads = [0] * n
    last = [0] * n

    def make_sink(i: int) -> Any:
        def sink(ev: Any) -> None:
            nonlocal count
            if ev.recv_us != last[i]:
                last[i] = ev.recv_us
                reads[i] += 1
            count += 1
            if count == start_at:
                others[0] = other_cpu()  # first: walking the processes costs CPU too
                steal[0] = stolen()
                marks["cpu0"], marks["t0"] = time.process_time(), time.perf_counter()
                marks["reads0"], marks["server0"] = sum(reads), server_cpu()
            elif count == end_at:
                marks["cpu1"], marks["t1"] = time.process_time(), time.perf_counter()
                marks["reads1"], marks["server1"] = sum(reads), server_cpu()
                others[1] = other_cpu()
                steal[1] = stolen()
                done.set()
        return sink

    room = spec["room"]
    clients = [await connect(transport, url, _token(f"{room}-s{i}"), **opts) for i in range(n)]
    result: dict[str, Any] = {"arm": arm, "transport": transport}
    try:
        for c in clients:
            await c.join(room)
        for i, c in enumerate(clients):
            c.on_event = make_sink(i)
        publisher = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.experiments.aio_client_cost", "--publisher",
            json.dumps({"transport": transport, "url": url, "room": room,
                        "rate": spec["rate"], "count": warmup + messages,
                        "cpu": spec["server_cpu"], "payload": spec["payload"]}),
            cwd=ROOT)
        publisher_proc.append(psutil.Process(publisher.pid))
        try:
            await asyncio.wait_for(done.wait(), spec["seconds"])
            complete = True
        except TimeoutError:
            complete = False
        finally:
            await asyncio.wait_for(publisher.wait(), 30)
        if "cpu1" not in marks:
            marks["cpu1"], marks["t1"] = time.process_time(), time.perf_counter()
            marks["reads1"], marks["server1"] = sum(reads), server_cpu()
            others[1] = other_cpu()
            steal[1] = stolen()
        measured = max(0, count - start_at) if "cpu0" in marks else 0
        if measured:
            cpu = marks["cpu1"] - marks["cpu0"]
            reads_n = max(1, marks["reads1"] - marks["reads0"])
            result.update({
                "deliveries": measured, "complete": complete,
                "cpu_us_per_message": cpu / measured * 1e6,
                "server_cpu_us_per_message": (marks["server1"] - marks["server0"])
                / measured * 1e6,
                "cpu_share": cpu / (marks["t1"] - marks["t0"]),
                "server_cpu_share": (marks["server1"] - marks["server0"])
                / (marks["t1"] - marks["t0"]),
                # longer than the publishing: the clients fell behind
                "window_s": marks["t1"] - marks["t0"], "published_s": messages / spec["rate"],
                "foreign_cpu_share": foreign(*others) / (marks["t1"] - marks["t0"]),
                "foreign_top": _top(*others),
                "steal_share": {f"cpu{c}": round((b - a) / (marks["t1"] - marks["t0"]), 3)
                                for c, a, b in zip(cores, *steal, strict=True)},
                "events_per_read": measured / reads_n})
        else:
            result.update({"deliveries": 0, "complete": False})
        for c in clients:
            c.on_event = None
        k = spec["commands"]
        if not k:
            return result
        pinger = clients[0]
        for _ in range(spec["warmup_commands"]):
            await pinger.ping()
        publisher_proc.clear()
        before = other_cpu()
        cpu0, t0, s0 = time.process_time(), time.perf_counter(), server_cpu()
        for _ in range(k):
            await pinger.ping()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        s1 = server_cpu()
        result.update({"commands": k, "cpu_us_per_command": cpu / k * 1e6,
                       "server_cpu_us_per_command": (s1 - s0) / k * 1e6,
                       "command_foreign_cpu_share": foreign(before, other_cpu()) / wall,
                       "wall_us_per_command": wall / k * 1e6})
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        if http is not None:
            await (http.aclose() if arm == "old" else http.close())
    return result


async def _publisher(spec: dict[str, Any]) -> None:
    from loadgen.aio import connect

    c = await connect(spec["transport"], spec["url"], _token(f"{spec['room']}-pub"))
    try:
        await c.join(spec["room"])
        data = "x" * spec["payload"]
        loop = asyncio.get_running_loop()
        t0, interval = loop.time(), 1.0 / spec["rate"]
        for i in range(spec["count"]):
            delay = t0 + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await c.publish(spec["room"], data)
    finally:
        await c.close()


def _top(before: dict[int, float], after: dict[int, float]) -> list[str]:
    """The other processes that used the most CPU (name, pid, seconds)."""
    import psutil

    deltas = sorted(((cpu - before.get(pid, 0.0), pid) for pid, cpu in after.items()),
                    reverse=True)[:3]
    out = []
    for cpu, pid in deltas:
        if cpu < 0.01:
            break
        try:
            name = " ".join(psutil.Process(pid).cmdline()[:4])
        except psutil.Error:
            name = "?"
        out.append(f"{pid} {name} {cpu:.2f}s")
    return out


def _run_worker(tree: Path, spec: dict[str, Any], client_cpu: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.experiments.aio_client_cost", "--worker",
         json.dumps({**spec, "client_cpu": client_cpu})],
        cwd=tree, capture_output=True, text=True, timeout=spec["seconds"] + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec['arm']} {spec['transport']} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------- analysis


def _spread(values: Sequence[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per profile, transport and metric: medians per arm, ratio of medians, pair ratios,
    warnings."""
    out: dict[str, Any] = {}
    for profile, transport in sorted({(r["profile"], r["transport"]) for r in runs}):
        mine = [r for r in runs if (r["profile"], r["transport"]) == (profile, transport)]
        entry: dict[str, Any] = {}
        for metric in METRICS:
            arms = {a: [r[metric] for r in mine if r["arm"] == a and metric in r] for a in ARMS}
            if not all(arms.values()):
                continue
            old, new = (statistics.median(arms[a]) for a in ARMS)
            pairs = [r["pair_ratio"][metric] for r in mine
                     if r["arm"] == "new" and metric in r.get("pair_ratio", {})]
            warnings = [f"{a}: spread {_spread(v):.0%} of the median"
                        for a, v in arms.items() if _spread(v) > SPREAD_WARN]
            entry[metric] = {
                "old": {"median": round(old, 2), "values": [round(v, 2) for v in arms["old"]]},
                "new": {"median": round(new, 2), "values": [round(v, 2) for v in arms["new"]]},
                "ratio_new_old": round(new / old, 3),
                "pair_ratios": {"min": round(min(pairs), 3), "median":
                                round(statistics.median(pairs), 3), "max": round(max(pairs), 3)}
                if pairs else None,
                "warnings": warnings}
        # > 1: that client needs more CPU per message than the server, so one client
        # process facing one server process saturates first (the benchmark measures it)
        entry["client_over_server"] = {
            what: {a: round(entry[f"cpu_us_per_{what}"][a]["median"]
                            / entry[f"server_cpu_us_per_{what}"][a]["median"], 3) for a in ARMS}
            for what in ("message", "command")
            if f"cpu_us_per_{what}" in entry and f"server_cpu_us_per_{what}" in entry}
        entry["incomplete_runs"] = sum(1 for r in mine if not r.get("complete"))
        steal = [v for r in mine for v in r.get("steal_share", {}).values()]
        entry["steal_share_max"] = round(max(steal), 3) if steal else None
        if steal and max(steal) > STEAL_WARN:
            entry.setdefault("warnings", []).append(
                f"the hypervisor took up to {max(steal):.0%} of a measured core")
        foreign = [r["foreign_cpu_share"] for r in mine if "foreign_cpu_share" in r]
        entry["foreign_cpu_share_max"] = round(max(foreign), 3) if foreign else None
        if foreign and max(foreign) > FOREIGN_WARN:
            entry.setdefault("warnings", []).append(
                f"other load on the machine: up to {max(foreign):.0%} of a core")
        out.setdefault(profile, {})[transport] = entry
    return out


def _pair_ratios(runs: list[dict[str, Any]]) -> None:
    """Each new run against the old run next to it in the order (old, new, new, old...)."""
    for key in {(r["profile"], r["transport"]) for r in runs}:
        mine = [r for r in runs if (r["profile"], r["transport"]) == key]
        for a, b in zip(mine[0::2], mine[1::2], strict=False):
            old, new = (a, b) if a["arm"] == "old" else (b, a)
            new["pair_ratio"] = {m: new[m] / old[m] for m in METRICS
                                 if m in new and m in old and old[m]}


def _metadata(args: argparse.Namespace, rev: str, old_rev: str, new_rev: str
              ) -> dict[str, Any]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "absent"

    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"python": platform.python_version(), "cpu": cpu, "cores": os.cpu_count(),
            "host": platform.node(), "kernel": platform.release(),
            "versions": {n: version(n) for n in ("aiohttp", "websockets", "httptools", "orjson",
                                                  "uvicorn", "starlette")},
            "old": {"rev": old_rev, "clients": "loadgen/aio at rev: ws on websockets, sse and "
                    "longpoll on http11.py (httptools), commands through an http11.Pool"},
            "new": {"rev": new_rev, "clients": "loadgen/aio at rev: ws, sse, longpoll on "
                    "aiohttp, commands through one shared aiohttp session (http_session())"},
            "rev": rev,
            "server": "rtbench serve --broker memory (default stack) at rev, one per transport",
            "pinning": {"server_and_publisher_cpu": args.server_cpu,
                        "client_cpu": args.client_cpu},
            "params": {k: getattr(args, k) for k in (
                "reps", "subscribers", "warmup", "measure", "seconds", "commands",
                "warmup_commands", "payload", "profiles")} | {"rates": PROFILES}}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transports", default=",".join(TRANSPORTS),
                   help="comma-separated subset of ws,sse,longpoll")
    p.add_argument("--reps", type=int, default=5, help="runs of each arm per transport")
    p.add_argument("--subscribers", type=int, default=50, help="subscribing clients per run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of messages before measuring")
    p.add_argument("--measure", type=float, default=5.0, help="seconds of messages measured")
    p.add_argument("--seconds", type=float, default=90.0,
                   help="longest a run may take to receive its messages")
    p.add_argument("--commands", type=int, default=3000, help="pings measured per run")
    p.add_argument("--warmup-commands", type=int, default=300, help="pings before measuring")
    p.add_argument("--payload", type=int, default=100, help="bytes of message data")
    p.add_argument("--server-cpu", type=int, default=0,
                   help="core of the server and the publisher")
    p.add_argument("--client-cpu", type=int, default=1, help="core of the measured clients")
    p.add_argument("--rev", default="HEAD",
                   help="git revision of the server, the publisher and this module")
    p.add_argument("--old-rev", default=OLD_REV,
                   help="git revision of the old clients (http11.py, websockets)")
    p.add_argument("--new-rev", default=NEW_REV,
                   help="git revision of the new clients (aiohttp)")
    p.add_argument("--profiles", default=",".join(PROFILES),
                   help=f"comma-separated subset of {','.join(PROFILES)} (message rates)")
    p.add_argument("--json", type=Path, help="write the results to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--publisher", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        os.sched_setaffinity(0, {spec["client_cpu"]})
        print(json.dumps(asyncio.run(_worker(spec))))
        return 0
    if args.publisher:
        spec = json.loads(args.publisher)
        os.sched_setaffinity(0, {spec["cpu"]})
        asyncio.run(_publisher(spec))
        return 0

    from servers.testing import stop_process

    rev, old_rev, new_rev = (_git("rev-parse", r) for r in (args.rev, args.old_rev,
                                                           args.new_rev))
    transports = [t for t in args.transports.split(",") if t]
    profiles = [name for name in args.profiles.split(",") if name]
    runs: list[dict[str, Any]] = []
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="rtbench-aio-cost-") as tmp:
        arm_dirs = {arm: str(extract_arm(arm, r, Path(tmp) / arm))
                    for arm, r in (("old", old_rev), ("new", new_rev))}
        tree = export_tree(rev, Path(tmp) / "tree")
        for transport in transports:
            server, url = start_server(tree, transport, args.server_cpu)
            try:
                order = [ARMS[(i + 1) // 2 % 2] for i in range(2 * args.reps)]  # o,n,n,o,o,n
                plan = [(profile, i, arm) for profile in profiles for i, arm in enumerate(order)]
                for profile, i, arm in plan:
                    rate = PROFILES[profile][transport]
                    spec = {"transport": transport, "url": url, "arm": arm,
                            "arm_dir": arm_dirs[arm], "room": f"cost-{transport}-{profile}-{i}",
                            "subscribers": args.subscribers,
                            "warmup": round(args.warmup * rate),
                            "messages": round(args.measure * rate), "rate": rate,
                            "seconds": args.seconds,
                            "commands": args.commands if profile == "steady" else 0,
                            "warmup_commands": args.warmup_commands,
                            "payload": args.payload, "server_cpu": args.server_cpu,
                            "server_pid": server.pid}
                    result = _run_worker(tree, spec, args.client_cpu)
                    result["order"], result["profile"], result["rate"] = i, profile, rate
                    runs.append(result)
                    print(f"{profile:6} {transport:8} {arm}: client"
                          f" {result.get('cpu_us_per_message', 0):6.1f}"
                          f" ({result.get('cpu_share', 0):.0%} busy)"
                          f" server {result.get('server_cpu_us_per_message', 0):6.1f} us/msg"
                          f" ({result.get('events_per_read', 0):.2f} ev/read)  client"
                          f" {result.get('cpu_us_per_command', 0):6.1f} server"
                          f" {result.get('server_cpu_us_per_command', 0):6.1f} us/cmd"
                          f" ({result.get('wall_us_per_command', 0):6.1f} wall)", flush=True)
            finally:
                stop_process(server)
    _pair_ratios(runs)
    summary = summarize(runs)
    doc = {"format": FORMAT, "version": VERSION,
           "what": "client CPU per received message and per command round trip of the asyncio "
                   "clients: old (http11.py for SSE and long-poll, websockets for WebSocket) vs "
                   "new (aiohttp for all three), same run, same server",
           "date_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
           "command": "flock /tmp/rtbench-measure.lock .venv/bin/python -m "
                      "bench.experiments.aio_client_cost "
                      + shlex.join(list(argv) if argv is not None else sys.argv[1:]),
           "metadata": _metadata(args, rev, old_rev, new_rev), "summary": summary, "runs": runs}
    for profile, transport, entry in ((p, t, e) for p, by in summary.items()
                                      for t, e in by.items()):
        print(f"{profile:6} {transport:8} client CPU / server CPU: {entry['client_over_server']}"
              f"  {'; '.join(entry.get('warnings', []))}")
        for metric in ("cpu_us_per_message", "cpu_us_per_command"):
            m = entry.get(metric)
            if m:
                print(f"{profile:6} {transport:8} {metric:20} old {m['old']['median']:8.2f}  new "
                      f"{m['new']['median']:8.2f}  new/old {m['ratio_new_old']:.3f}  "
                      f"pairs {m['pair_ratios']}  {'; '.join(m['warnings'])}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
