"""The machine-readable result of one load-generator run (versioned JSON).

Format history (bump VERSION on any change a reader must know about):
  1  first version: parameters, hosts, merged and per-host HdrHistograms
     (microseconds, HdrHistogram V2 base64 encoding), counters, delivery
     verdict, saturation signals, validity flags, optional steps and extras.
  2  saturation judged over a window (`saturation.window`, `outside_window`, `gc`,
     `lag_judged`); broadcast rate-ramp steps (`publish_rate`, `delivered_per_s`,
     `server_cpu_percent`, `loadgen`, ...) with `extra.ramp`; connections
     `extra.connections_stop` and `extra.nofile_limit`.

Latency caveat: one-way latency = receive wall clock - the publisher's stamp;
when publisher and receiver run on different hosts the difference of their
clocks is inside every sample (`delivery.cross_host` is then true and
`validity.warnings` says so). Locust's own UI/CSV percentiles are bucketed
(rounded to 2 significant digits above 100 ms); the histograms here are not.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any

import orjson

from loadgen.delivery import Verdict
from loadgen.recorder import LATENCY_KINDS, Collector

FORMAT = "rtbench.loadgen.result"
VERSION = 2


def host_metadata() -> dict[str, Any]:
    """Where the numbers come from (pyperf style): host, CPU, versions."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        locust_version = version("locust")
    except Exception:  # metadata missing in odd installs; not worth failing a run
        locust_version = ""
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return {
        "hostname": socket.gethostname(), "platform": platform.platform(),
        "python": sys.version.split()[0], "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(), "cpu_model": cpu_model, "cpu_affinity": affinity,
        "locust": locust_version, "pid": os.getpid(),
    }


def default_path(scenario: str, transport: str, now: dt.datetime | None = None) -> Path:
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    return Path("results") / f"loadgen-{scenario}-{transport}-{stamp}.json"


def validity(verdict: Verdict, saturation_reasons: list[str], counters: dict[str, int],
             ) -> dict[str, Any]:
    """Flags a reader must check before trusting the latencies."""
    warnings = []
    if verdict.cross_host:
        warnings.append("publishers and receivers on different hosts: one-way latency "
                        "includes their clock offset")
    if counters.get("connect_failures"):
        warnings.append(f"{counters['connect_failures']} connections failed")
    if counters.get("publish_errors"):
        warnings.append(f"{counters['publish_errors']} publishes failed")
    lost = verdict.missing > 0
    reasons = list(saturation_reasons)
    if lost:
        reasons.append(f"{verdict.missing} of {verdict.expected} expected deliveries missing")
    if verdict.expected == 0:
        warnings.append("no delivery was judged (nothing published, or run too short)")
    return {"valid": not reasons, "saturated": bool(saturation_reasons), "lost_messages": lost,
            "reasons": reasons, "warnings": warnings}


def build(*, scenario: str, params: dict[str, Any], collector: Collector, verdict: Verdict,
          saturation: dict[str, Any], saturation_reasons: list[str], started_us: int,
          ended_us: int, hosts: list[dict[str, Any]], steps: list[dict[str, Any]] | None = None,
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    counters = dict(sorted(collector.counters.items()))
    received = max(verdict.delivered, 1)
    latency = {kind: collector.hist(kind).to_dict() for kind in LATENCY_KINDS}
    latency["all"] = collector.latency().to_dict()
    return {
        "format": FORMAT,
        "version": VERSION,
        "scenario": scenario,
        "transport": params.get("transport"),
        "started_us": started_us,
        "ended_us": ended_us,
        "duration_s": round((ended_us - started_us) / 1e6, 3),
        "parameters": params,
        "hosts": hosts,
        "processes": sorted(collector.processes),
        "latency_us": latency,
        "latency_by_host_us": {
            host: {k: h.to_dict() for k, h in hists.items() if k in LATENCY_KINDS}
            for host, hists in sorted(collector.by_host.items())
        },
        "timings_us": {k: collector.hist(k).to_dict() for k in ("connect", "rejoin",
                                                                 "publish_blocked",
                                                                 "server_leg")},
        "counters": counters,
        "wire_bytes_per_delivery": round(counters.get("wire_bytes", 0) / received, 1)
        if verdict.delivered else None,
        "delivery": verdict.to_dict(),
        "saturation": saturation,
        "validity": validity(verdict, saturation_reasons, counters),
        "steps": steps or [],
        "extra": extra or {},
    }


def write(path: str | Path, result: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename) so a reader never sees half a result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    tmp.replace(path)
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Read a result, refusing other formats and newer versions."""
    data: dict[str, Any] = orjson.loads(Path(path).read_bytes())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not an rtbench loadgen result (format {data.get('format')!r})")
    if int(data.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: result version {data['version']} is newer than {VERSION}")
    return data
