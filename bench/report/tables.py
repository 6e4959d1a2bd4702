"""The numbers of a run as pandas tables: one place computes them, the report and CSVs read them.

Every table has a row per target and a `stack` column right after `transport`
(the server stack: starlette or aiohttp for ws, sse and longpoll, grpcio for
gRPC; a run of format <= 2 ran the default ones).

Definitions (the report repeats them next to the figures):
- latency: one-way, publisher's intended send time (payload stamp) to receipt,
  from the load generator's lossless HdrHistograms, warm-up excluded;
- server CPU-ms per 1000 deliveries: CPU time of the server replicas
  (psutil, sampled by the harness over the scenario's Locust run) divided by
  the messages the clients received; Redis is counted apart;
- wire bytes per delivered message: bytes the clients read off their sockets
  (framing, headers and polls included) divided by the messages received;
- TCP connections: distinct client endpoints seen connected to the replicas'
  ports (sampled every 0.5 s: a lower bound), per client-level connection;
- TCP accepts: the machine-wide PassiveOpens counter over the scenario
  (/proc/net/snmp): every new TCP connection on the host, other processes' too.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from hdrh.histogram import HdrHistogram

from bench.harness.plan import label, target_order
from bench.harness.runs import RunData, stack_of
from loadgen.measure import HIGHEST_US, LOWEST_US, SIG_FIGS

PCTS = (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p99.9"), ("max", "p100"))


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000, 3)


def _sum(values: Any) -> float | None:
    vals = [v for v in (values or {}).values() if v is not None]
    return float(sum(vals)) if vals else None


def _server_roles(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (d or {}).items() if k != "redis"}


def labels(df: pd.DataFrame) -> pd.Series:
    """Each row's target as the report names it: `ws · aiohttp`."""
    return pd.Series([label(str(t), str(s)) for t, s in zip(df["transport"], df["stack"],
                                                           strict=True)], index=df.index,
                     dtype=object)


def _by_target(run: RunData, scenario: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(transport, stack, result) of one scenario, in the usual target order."""
    hits = [(t, st, res) for (sc, t, st), res in run.results.items() if sc == scenario]
    return sorted(hits, key=lambda h: target_order(h[0], h[1]))


def summary(run: RunData) -> pd.DataFrame:
    """One row per (transport, stack, scenario): latency, delivery accounting, cost,
    validity."""
    rows = []
    for step in run.steps:
        stack = stack_of(step)
        res = run.result(step["scenario"], step["transport"], stack) or {}
        lat = res.get("latency_us", {}).get("all", {})
        pct = lat.get("percentiles", {})
        d = res.get("delivery", {})
        c = res.get("counters", {})
        v = res.get("validity", {})
        conn = res.get("timings_us", {}).get("connect", {})
        leg = res.get("timings_us", {}).get("server_leg", {}).get("percentiles", {})
        received = int(c.get("received", 0))
        cpu = _sum(_server_roles(step.get("cpu_s", {})))
        redis_cpu = (step.get("cpu_s") or {}).get("redis")
        rss = _sum(_server_roles(step.get("rss_max", {})))
        opens = step.get("tcp_passive_opens")
        peers = _sum(step.get("tcp_peers", {}))
        connects = int(c.get("connects", 0)) + int(c.get("reconnects", 0))
        duration = res.get("duration_s")
        reasons = list(v.get("reasons", []))
        if res and step["scenario"] != "connections" and not lat.get("count"):
            reasons.append("no delivery latency measured")
        warnings = list(v.get("warnings", []))
        if step.get("first_attempt"):
            warnings.append(f"second attempt (the first: {step['first_attempt']})")
        row: dict[str, Any] = {
            "transport": step["transport"], "stack": stack, "scenario": step["scenario"],
            "status": step["status"], "error": step.get("error") or "",
            "valid": bool(v.get("valid", False)) and step["status"] == "ok" and not reasons,
            "saturated": bool(v.get("saturated", False)),
            "lost_messages": bool(v.get("lost_messages", False)),
            "reasons": "; ".join(reasons),
            "warnings": "; ".join(warnings),
            "samples": int(lat.get("count", 0)),
        }
        for col, key in PCTS:
            row[f"{col}_ms"] = _ms(pct.get(key)) if lat.get("count") else None
        row.update({
            "published": d.get("published"), "expected": d.get("expected"),
            "delivered": d.get("delivered"), "missing": d.get("missing"),
            "duplicates": d.get("duplicates"), "out_of_order": d.get("out_of_order"),
            "received": received,
            "deliveries_per_s": round(received / duration, 1) if duration else None,
            "wire_bytes_per_msg": res.get("wire_bytes_per_delivery"),
            "server_cpu_s": cpu,
            "cpu_ms_per_1k": round(cpu * 1e6 / received, 2) if cpu is not None and received
            else None,
            "redis_cpu_s": redis_cpu,
            "server_rss_max_mb": round(rss / 2**20, 1) if rss else None,
            "tcp_conns": int(peers) if peers is not None else None,
            "tcp_per_client_conn": round(peers / connects, 2) if peers is not None and connects
            else None,
            "tcp_accepts": opens,
            "tcp_accepts_per_1k": round(opens * 1000 / received, 2) if opens is not None
            and received else None,
            "connects": c.get("connects"), "connect_failures": c.get("connect_failures", 0),
            "server_leg_p50_ms": _ms(leg.get("p50")), "server_leg_p99_ms": _ms(leg.get("p99")),
            "connect_p50_ms": _ms(conn.get("percentiles", {}).get("p50"))
            if conn.get("count") else None,
            "connect_p99_ms": _ms(conn.get("percentiles", {}).get("p99"))
            if conn.get("count") else None,
            "duration_s": duration, "wall_s": step.get("wall_s"),
        })
        rows.append(row)
    return pd.DataFrame(rows)


def capacity(run: RunData) -> pd.DataFrame:
    """Broadcast capacity steps, per target: p99, deliveries/s and server CPU per step.

    `ramp` says which ramp made the step (loadgen/steps.py): `rate` (subscribers
    fixed, the publish rate rising to the knee; deliveries/s measured over the
    step's judged window) or `subscribers` (more subscribers each step; the step
    includes its own ramp-up).
    """
    rows = []
    for transport, stack, res in _by_target(run, "broadcast"):
        if not res.get("steps"):
            continue
        params = res.get("parameters", {})
        limit = float(params.get("p99_limit_ms", 250))
        fit = _cpu_fit(res)
        prev_end = int(res.get("started_us", 0))
        # never more subscribers than -u allows (a step past the cap holds no data)
        for s in res["steps"]:
            pct = s.get("latency_us", {}).get("percentiles", {})
            seconds = (int(s["ended_us"]) - prev_end) / 1e6 if prev_end else None
            prev_end = int(s["ended_us"])
            rate = "delivered_per_s" in s
            if rate:
                seconds = s.get("measured_s")
            if not s.get("deliveries"):
                continue
            p99 = _ms(pct.get("p99"))
            lg = s.get("loadgen") or {}
            rows.append({
                "transport": transport, "stack": stack,
                "ramp": "rate" if rate else "subscribers",
                "step": s["step"], "subscribers": s["subscribers"],
                "publish_rate": s.get("publish_rate"), "offered_per_s": s.get("offered_per_s"),
                "deliveries": s["deliveries"], "seconds": round(seconds, 2) if seconds else None,
                "deliveries_per_s": s["delivered_per_s"] if rate
                else round(s["deliveries"] / seconds, 1) if seconds else None,
                "p50_ms": _ms(pct.get("p50")), "p99_ms": p99, "max_ms": _ms(pct.get("p100")),
                "server_cpu_percent": s.get("server_cpu_percent"),
                "server_cpu_source": s.get("server_cpu_source"),
                "server_cpu_us_per_delivery": s.get("server_cpu_us_per_delivery"),
                "loadgen_valid": lg.get("valid"), "loadgen_cpu_percent": lg.get("cpu_percent"),
                "loadgen_reasons": "; ".join(lg.get("reasons", [])),
                "holes": s.get("holes", 0), "connect_failures": s.get("connect_failures", 0),
                "p99_limit_ms": limit, "max_server_cpu": params.get("max_server_cpu"),
                "met_limit": p99 is not None and p99 <= limit and not s.get("holes")
                and not s.get("slow_consumer_closes") and not s.get("connect_failures"),
                "stopped_because": s.get("stopped_because", ""),
                "knee": bool(s.get("knee")),
                **fit,
            })
    return pd.DataFrame(rows)


def _cpu_fit(res: dict[str, Any]) -> dict[str, float | None]:
    """The ramp's CPU line (loadgen/knee.py) when it gave the knee: where it met the limit,
    its intercept (%) and slope (% per 1,000 deliveries/s); None otherwise."""
    ramp = res.get("extra", {}).get("ramp") or {}
    fit = ramp.get("cpu_fit") if ramp.get("knee_method") == "cpu fit" else None
    if not isinstance(fit, dict):
        return {"fit_knee_per_s": None, "fit_intercept": None, "fit_slope_k": None}
    return {"fit_knee_per_s": ramp.get("max_deliveries_per_s"),
            "fit_intercept": fit.get("intercept_percent"),
            "fit_slope_k": fit.get("percent_per_kdelivery")}


def capacity_best(cap: pd.DataFrame) -> dict[str, int | None]:
    """Subscriber ramps, per target (`ws · starlette`): the largest subscriber count of an
    unbroken run of steps within limit (a rate ramp's answer is the headline,
    bench.report.headline)."""
    out: dict[str, int | None] = {}
    users = cap[cap["ramp"] == "subscribers"] if not cap.empty else cap
    if users.empty:
        return out
    for (transport, stack), g in users.groupby(["transport", "stack"], sort=False):
        best = None
        for _, row in g.sort_values("subscribers").iterrows():
            if not row["met_limit"]:
                break
            best = int(row["subscribers"])
        out[label(str(transport), str(stack))] = best
    return out


def connections(run: RunData) -> pd.DataFrame:
    """Connections scenario: held connections, connect time, memory and idle CPU per target."""
    rows = []
    users = {(s["transport"], stack_of(s)): s.get("parameters", {}).get("users")
             for s in run.steps if s["scenario"] == "connections"}
    for transport, stack, res in _by_target(run, "connections"):
        servers = res.get("extra", {}).get("servers", {})
        ok = [s for s in servers.values() if "error" not in s]
        added = sum(s["connections_peak"] - s["connections_before"] for s in ok)
        rss = sum(s["rss_at_peak_bytes"] - s["rss_before_bytes"] for s in ok)
        idle = [s["idle_cpu_percent"] for s in ok if s.get("idle_cpu_percent") is not None]
        conn = res.get("timings_us", {}).get("connect", {})
        pct = conn.get("percentiles", {})
        c = res.get("counters", {})
        rows.append({
            "transport": transport, "stack": stack,
            "target": users.get((transport, stack)),
            "connects": c.get("connects", 0), "connect_failures": c.get("connect_failures", 0),
            "held_peak": int(added) if ok else None,
            "connect_p50_ms": _ms(pct.get("p50")) if conn.get("count") else None,
            "connect_p99_ms": _ms(pct.get("p99")) if conn.get("count") else None,
            "kb_per_connection": round(rss / added / 1024, 2) if ok and added > 0 else None,
            "idle_cpu_percent": round(sum(idle), 2) if idle else None,
            "idle_seconds": min((s.get("idle_seconds", 0) for s in ok), default=None),
            "scrape_errors": "; ".join(f"{u}: {s['error']}" for u, s in servers.items()
                                       if "error" in s),
        })
    return pd.DataFrame(rows)


def cdf(res: dict[str, Any], kind: str = "all") -> tuple[list[float], list[float]]:
    """(latency ms, cumulative fraction) points of a result's exact histogram."""
    enc = res.get("latency_us", {}).get(kind, {}).get("hdr", "")
    if not enc:
        return [], []
    h = HdrHistogram(LOWEST_US, HIGHEST_US, SIG_FIGS)
    h.decode_and_add(enc.encode("ascii"))
    total = h.get_total_count()
    xs, ys, seen = [], [], 0
    for item in h.get_recorded_iterator():
        seen += item.count_added_in_this_iter_step
        xs.append(item.value_iterated_to / 1000)
        ys.append(seen / total)
    return xs, ys
