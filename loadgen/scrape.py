"""Server-side numbers for the connections scenario: scrape each replica's /metrics.

Memory per held connection = (RSS at the most connections - RSS before the
run) / (connections added); idle CPU = CPU seconds the server burned while the
connection count stayed at its peak, per second of that plateau.
"""

from __future__ import annotations

import re
import ssl
import time
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

SAMPLE_INTERVAL = 1.0
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9eE+.\-]+|NaN|[+-]Inf)")
WANTED = ("rtbench_connections", "process_resident_memory_bytes", "process_cpu_seconds_total")


# https:// /metrics (HTTP servers over TLS) are verified against this (`use_ca`)
_tls: ssl.SSLContext | None = None


def use_ca(ca_file: str | None) -> None:
    """Verify https:// metrics URLs against `ca_file` (None: the system's trust store)."""
    global _tls
    from loadgen.clients.tls import client_context

    _tls = client_context(ca_file)


def _get(url: str, timeout: float) -> bytes:
    context = _tls if url.startswith("https:") else None
    with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
        body: bytes = resp.read()
        return body


def metrics_urls(servers: tuple[str, ...], transport: str, explicit: str = "") -> list[str]:
    """The /metrics of each server: on its own port, over TLS when it is https:// or
    wss://; gRPC's on port + 1000, plain HTTP whether or not gRPC runs over TLS."""
    if explicit:
        return [u.strip() for u in explicit.split(",") if u.strip()]
    urls = []
    for s in servers:
        parts = urlsplit(s if "://" in s else "http://" + s)
        tls = parts.scheme in ("https", "wss") and transport != "grpc"
        port = parts.port or (443 if tls else 80)
        if transport == "grpc":
            port += 1000  # servers.settings: metrics_port 0 means port + 1000
        urls.append(f"{'https' if tls else 'http'}://{parts.hostname}:{port}/metrics")
    return urls


def parse(text: str) -> dict[str, float]:
    """The WANTED samples of a Prometheus text page (labels summed away)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and m.group(1) in WANTED:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def cpu_seconds(urls: list[str]) -> float | None:
    """The servers' CPU seconds so far (`process_cpu_seconds_total` summed over `urls`);
    None when one of them does not answer (a step is then not judged on CPU)."""
    total = 0.0
    for url in urls:
        try:
            m = parse(_get(url, 2).decode())
        except (OSError, ValueError):
            return None
        if "process_cpu_seconds_total" not in m:
            return None
        total += m["process_cpu_seconds_total"]
    return total


def core_ticks(cpus: list[int], stat: str = "/proc/stat") -> tuple[int, int] | None:
    """(busy, available) clock ticks so far of these cores, from /proc/stat: busy is
    user, nice, system, irq and softirq (the servers, their Redis and the kernel's
    loopback work alike), available adds idle and iowait (not steal). None when the
    file or a core is missing."""
    try:
        with open(stat) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy = total = 0
    wanted = {f"cpu{c}" for c in cpus}
    found = 0
    for line in lines:
        parts = line.split()
        if parts and parts[0] in wanted:
            ticks = [int(x) for x in parts[1:]]
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
            # user..softirq: steal (the hypervisor's) is time the core was not ours to
            # use, and guest time is counted in user already (proc(5))
            t = sum(ticks[:7])
            busy += t - idle
            total += t
            found += 1
    return (busy, total) if found == len(wanted) and wanted else None


@dataclass(slots=True)
class Sample:
    t: float
    connections: float
    rss: float
    cpu: float


class Scraper:
    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.samples: dict[str, list[Sample]] = {u: [] for u in urls}
        self.errors: dict[str, str] = {}

    def sample(self) -> None:
        for url in self.urls:
            try:
                m = parse(_get(url, 2).decode())
            except (OSError, ValueError) as exc:
                self.errors[url] = repr(exc)
                continue
            self.samples[url].append(Sample(time.monotonic(), m.get("rtbench_connections", 0.0),
                                            m.get("process_resident_memory_bytes", 0.0),
                                            m.get("process_cpu_seconds_total", 0.0)))

    def loop(self, stop: Any) -> None:
        self.sample()
        while not stop.wait(SAMPLE_INTERVAL):
            self.sample()

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for url, samples in self.samples.items():
            if not samples:
                out[url] = {"error": self.errors.get(url, "no sample")}
                continue
            base = samples[0]
            peak = max(samples, key=lambda s: s.connections)
            held = [s for s in samples if s.connections == peak.connections]
            added = peak.connections - base.connections
            span = held[-1].t - held[0].t
            out[url] = {
                "connections_before": base.connections,
                "connections_peak": peak.connections,
                "rss_before_bytes": base.rss,
                "rss_at_peak_bytes": peak.rss,
                "rss_per_connection_bytes": round((peak.rss - base.rss) / added) if added else None,
                "idle_seconds": round(span, 1),
                "idle_cpu_percent": round(100 * (held[-1].cpu - held[0].cpu) / span, 2)
                if span > 0 else None,
                "samples": len(samples),
            }
        return out
