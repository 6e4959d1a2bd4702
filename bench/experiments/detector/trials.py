"""One trial: a Locust run (with its burners) and the record of what it showed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from bench import ROOT
from bench.experiments.detector.burner import BURNER_LIFETIME, Burners
from bench.experiments.detector.cases import Case

TIMEOUT_MARGIN = 30.0  # seconds a Locust run may take past its -t before it is killed
SETTLE_MAX = 15.0  # seconds to wait for idle servers between trials
SETTLE_IDLE = 0.05  # servers' CPU (cores, summed) below which they count as idle
LOG_TAIL = 2000  # characters of Locust's output kept with a failed trial
READY_TEXT = b"Ramping to"  # Locust's log line as its test begins: burners start then
READY_TIMEOUT = 20.0  # seconds to wait for it before the trial is given up


def _strip_hdr(value: Any) -> Any:
    """A histogram summary without its (long) encoding; other values as they are."""
    if isinstance(value, dict):
        return {k: _strip_hdr(v) for k, v in value.items() if k != "hdr"}
    return value


def _p99(hist: Any) -> int | None:
    if not isinstance(hist, dict) or not hist.get("count"):
        return None
    pct = hist.get("percentiles")
    value = pct.get("p99") if isinstance(pct, dict) else None
    return int(value) if isinstance(value, int | float) else None


def saturation_excerpt(sat: Mapping[str, Any]) -> dict[str, Any]:
    """The detector's signals in a few numbers, plus every key of `sat` minus HDR encodings.

    `cpu_mean` is the highest per-process mean CPU percent (one process per
    local run); the lags are p99 in µs, None when nothing was sampled.
    """
    cpu = sat.get("cpu_percent")
    means = [float(v["mean"]) for v in cpu.values()
             if isinstance(v, dict) and isinstance(v.get("mean"), int | float)] \
        if isinstance(cpu, dict) else []
    out: dict[str, Any] = {
        "cpu_mean": max(means) if means else None,
        "canary_p99_us": _p99(sat.get("canary_lag_us")),
        "schedule_p99_us": _p99(sat.get("schedule_lag_us")),
    }
    out["signals"] = {k: _strip_hdr(v) for k, v in sat.items()}
    if "window" in sat:
        out["window"] = _strip_hdr(sat["window"])
    return out


def wait_idle(nodes: Sequence[Any]) -> float:
    """Wait (at most SETTLE_MAX s) until the replicas are idle; returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < SETTLE_MAX:
        try:
            c0 = sum(n.cpu_seconds() for n in nodes)
            time.sleep(0.5)
            busy = (sum(n.cpu_seconds() for n in nodes) - c0) / 0.5
        except Exception:  # a replica is gone: the trial will say so
            break
        if busy < SETTLE_IDLE:
            break
    return round(time.monotonic() - t0, 2)


def _locust_cmd(case: Case, transport: str, servers: Sequence[str], result: Path,
                load_cpu: int) -> list[str]:
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadgen" / "broadcast.py"),
           "--headless", "--only-summary", "--exit-code-on-error", "0",
           "--transport", transport, "--servers", ",".join(servers),
           "--result-file", str(result), *case.locust_args()]
    return ["taskset", "-c", str(load_cpu), *cmd] if case.pin_load else cmd


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc


def _wait_for_text(path: Path, text: bytes, proc: subprocess.Popen[bytes],
                   timeout: float) -> bool:
    """Whether `text` shows up in file `path` within `timeout` s (False once `proc` ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if text in path.read_bytes():
                return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def run_trial(case: Case, index: int, transport: str, servers: Sequence[str],
              server_pids: Sequence[int], load_cpu: int, workdir: Path) -> dict[str, Any]:
    """One Locust run (with its burners, if any); the record of what it showed.

    Burners start when Locust's test begins (READY_TEXT in its log); raises
    BurnerError, everything stopped, if they cannot run as asked.
    """
    from bench.harness.procs import affinity, signals_ignored, stop_group

    result = workdir / f"{case.name}-{index}.json"
    log_path = workdir / f"{case.name}-{index}.log"
    cmd = _locust_cmd(case, transport, servers, result, load_cpu)
    limit = case.run_time + TIMEOUT_MARGIN
    status, rc, load_affinity = "ok", None, None
    burner_cpu: list[float | None] = []
    burner_affinity: list[list[int] | None] = []
    burner_policy: list[str | None] = []
    burner_start: float | None = None
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    burn = Burners(case.burners, load_cpu, max(BURNER_LIFETIME, int(limit) + 15),
                   fifo=case.burner_policy == "fifo")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        if case.burners:
            if _wait_for_text(log_path, READY_TEXT, proc, READY_TIMEOUT):
                burn.start()
                burner_start = round(time.monotonic() - t0, 2)
                burner_policy, burner_affinity = burn.policies(), burn.affinities()
            elif proc.poll() is None:  # Locust hangs before its test: give the trial up
                status = "burners-not-started"
                stop_group(proc)
        try:  # read the placement once taskset has exec'd Locust
            rc = proc.wait(0.0 if case.burners else 1.0)
        except subprocess.TimeoutExpired:
            load_affinity = affinity(proc.pid)
            try:
                rc = proc.wait(max(0.0, limit - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                status = "timeout"
    finally:
        with signals_ignored():  # a second signal must not leave a burner spinning
            burner_cpu = burn.cpu_seconds()
            burn.stop()  # first: a starved Locust then stops promptly
            stop_group(proc)
    wall = time.monotonic() - t0
    doc = _read_result(result) if status != "burners-not-started" else None
    record: dict[str, Any] = {
        "case": case.name, "trial": index, "status": status, "rc": rc,
        "valid": None, "saturated": None, "reasons": [], "warnings": [],
        "wall_s": round(wall, 2), "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "placement": {"load_generator": load_affinity, "servers": [affinity(p) for p in
                                                                   server_pids]},
    }
    if case.burners:
        record["burners"] = {"count": case.burners, "policy": case.burner_policy,
                             "started_s": burner_start, "sched": burner_policy,
                             "cpu_s": burner_cpu, "affinity": burner_affinity,
                             "rt_throttling": burn.rt_throttling}
    if doc is None:
        record["status"] = "no-result" if status == "ok" else status
        record["error"] = (f"Locust did not log {READY_TEXT.decode()!r} within "
                           f"{READY_TIMEOUT:g} s: burners not started, trial given up"
                           if status == "burners-not-started"
                           else f"Locust exited with {rc} and wrote no readable result")
    else:
        validity = doc.get("validity") or {}
        valid = validity.get("valid")
        record["valid"] = bool(valid) if isinstance(valid, bool) else None
        saturated = validity.get("saturated")
        record["saturated"] = saturated if isinstance(saturated, bool) else None
        record["reasons"] = list(validity.get("reasons") or [])
        record["warnings"] = list(validity.get("warnings") or [])
        record["saturation"] = saturation_excerpt(doc.get("saturation") or {})
        delivery = doc.get("delivery") or {}
        record["delivery"] = {k: delivery.get(k) for k in ("expected", "delivered", "missing")}
        if record["valid"] is not None and rc is not None:
            # the exit code should agree with the file (3: invalid, Locust's default here)
            record["rc_agrees"] = rc == (0 if record["valid"] else 3)
    if record["valid"] is None or status != "ok":
        with contextlib.suppress(OSError):
            record["log_tail"] = log_path.read_text(errors="replace")[-LOG_TAIL:]
    return record

