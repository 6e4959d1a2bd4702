""""The textbook, checked": the seed's comparison-table claims against this run's numbers.

Each claim gets a verdict - confirmed, not confirmed, or not measured - and the
figure that decides it. One run has no repeats, so there is no significance
test: differences under `TOLERANCE` count as ties, and a claim that one
transport is lower is only refuted when another is lower by more than that.
Figures from runs marked invalid (saturated generator, lost messages) carry a
`*`; the verdict then says so.

The claims are about transports, so each transport is judged on one server
stack (`judged_stacks`): the default one (starlette on uvicorn; grpcio for
gRPC) when the run has it, else the first stack it ran on. The report says
which, and compares the stacks themselves apart (bench.report.stacks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.harness.plan import STACKS, default_stack, label

CONFIRMED, NOT_CONFIRMED, NOT_MEASURED = "confirmed", "not confirmed", "not measured"
TOLERANCE = 0.05  # relative difference below which two figures are a tie
MESSAGE_SCENARIOS = ("chat", "direct", "broadcast")  # steady delivery (churn reconnects)
JSON_HTTP = ("sse", "longpoll")


@dataclass(frozen=True, slots=True)
class Verdict:
    claim: str
    source: str
    verdict: str
    figure: str
    caveat: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"claim": self.claim, "source": self.source, "verdict": self.verdict,
                "figure": self.figure, "caveat": self.caveat}


def _value(df: pd.DataFrame, scenario: str, transport: str, col: str,
           ) -> tuple[float | None, bool]:
    """(value, valid) of one cell, None when missing."""
    hit = df[(df["scenario"] == scenario) & (df["transport"] == transport)]
    if hit.empty or col not in hit or pd.isna(hit[col].iloc[0]):
        return None, False
    return float(hit[col].iloc[0]), bool(hit["valid"].iloc[0])


def _fmt(v: float, valid: bool, unit: str) -> str:
    text = f"{v:.3g} {unit}".strip()
    return text if valid else text + "*"


def _per_scenario(df: pd.DataFrame, col: str, unit: str, transports: tuple[str, ...],
                  scenarios: tuple[str, ...] = MESSAGE_SCENARIOS,
                  ) -> tuple[dict[str, dict[str, float]], list[str], bool]:
    """Values by scenario and transport, the figure lines, and whether any was invalid."""
    values: dict[str, dict[str, float]] = {}
    lines, invalid = [], False
    for s in scenarios:
        row = {}
        parts = []
        for t in transports:
            v, ok = _value(df, s, t, col)
            if v is None:
                continue
            row[t] = v
            invalid |= not ok
            parts.append(f"{t} {_fmt(v, ok, unit)}")
        if len(row) >= 2:
            values[s] = row
            lines.append(f"{s}: " + ", ".join(parts))
    return values, lines, invalid


def _caveat(invalid: bool) -> str:
    return ("* from a run marked invalid (see the validity column): treat as indicative"
            if invalid else "")


def _lowest(df: pd.DataFrame, who: str, claim: str, source: str) -> Verdict:
    values, lines, invalid = _per_scenario(df, "p50_ms", "ms", ("ws", "sse", "longpoll", "grpc"))
    values = {s: v for s, v in values.items() if who in v}
    if not values:
        return Verdict(claim, source, NOT_MEASURED, f"no median latency for {who} and another "
                       "transport in " + "/".join(MESSAGE_SCENARIOS))
    beaten = [s for s, v in values.items()
              if min(x for t, x in v.items() if t != who) < v[who] * (1 - TOLERANCE)]
    verdict = NOT_CONFIRMED if beaten else CONFIRMED
    figure = "median latency - " + "; ".join(lines)
    if beaten:
        figure += f". Lower than {who} (by more than {TOLERANCE:.0%}) in: {', '.join(beaten)}"
    return Verdict(claim, source, verdict, figure, _caveat(invalid))


def _higher(df: pd.DataFrame) -> Verdict:
    claim = "Long polling has higher latency (than SSE and WebSocket)"
    source = "Long Polling vs SSE vs WebSocket"
    values, lines, invalid = _per_scenario(df, "p50_ms", "ms", ("longpoll", "sse", "ws"))
    values = {s: v for s, v in values.items() if "longpoll" in v}
    if not values:
        return Verdict(claim, source, NOT_MEASURED, "no long-polling latency next to SSE/WS")
    not_higher = [s for s, v in values.items()
                  if any(v["longpoll"] <= x * (1 + TOLERANCE) for t, x in v.items()
                         if t != "longpoll")]
    return Verdict(claim, source, NOT_CONFIRMED if not_higher else CONFIRMED,
                   "median latency - " + "; ".join(lines)
                   + (f". Not clearly higher in: {', '.join(not_higher)}" if not_higher else ""),
                   _caveat(invalid))


def _medium(df: pd.DataFrame) -> Verdict:
    claim = "SSE has medium latency (between WebSocket and long polling)"
    source = "Long Polling vs SSE vs WebSocket"
    values, lines, invalid = _per_scenario(df, "p50_ms", "ms", ("ws", "sse", "longpoll"))
    full = {s: v for s, v in values.items() if len(v) == 3}
    if not full:
        return Verdict(claim, source, NOT_MEASURED, "needs ws, sse and longpoll in one scenario")
    off = [s for s, v in full.items()
           if not (v["ws"] * (1 - TOLERANCE) <= v["sse"] <= v["longpoll"] * (1 + TOLERANCE))]
    return Verdict(claim, source, NOT_CONFIRMED if off else CONFIRMED,
                   "median latency - " + "; ".join(lines)
                   + (f". Out of order in: {', '.join(off)}" if off else ""), _caveat(invalid))


def _tcp_connects(df: pd.DataFrame) -> Verdict:
    claim = "Long polling makes many TCP connects; SSE and WebSocket keep one connection"
    source = "Long Polling vs SSE vs WebSocket"
    values, lines, invalid = _per_scenario(df, "tcp_per_client_conn", "",
                                           ("longpoll", "sse", "ws"))
    values = {s: v for s, v in values.items() if "longpoll" in v}
    if not values:
        return Verdict(claim, source, NOT_MEASURED, "no TCP connection counts for long "
                       "polling next to SSE/WS")
    many = [s for s, v in values.items()
            if all(v["longpoll"] > 2 * x for t, x in v.items() if t != "longpoll")]
    verdict = CONFIRMED if len(many) == len(values) else NOT_CONFIRMED
    return Verdict(claim, source, verdict,
                   "TCP connections seen at the servers per client connection - "
                   + "; ".join(lines),
                   "distinct client endpoints sampled every 0.5 s: a lower bound (HTTP "
                   "keep-alive lets a long-polling client reuse its connections). "
                   + _caveat(invalid))


def _grpc_faster(df: pd.DataFrame) -> Verdict:
    claim = "gRPC (protobuf over HTTP/2) is about 10x faster than JSON over HTTP"
    source = "gRPC vs REST"
    values, lines, invalid = _per_scenario(df, "cpu_ms_per_1k", "CPU-ms/1k",
                                           ("grpc", *JSON_HTTP))
    ratios = []
    for s, v in values.items():
        if "grpc" in v and v["grpc"] > 0:
            ratios += [(s, t, x / v["grpc"]) for t, x in v.items() if t != "grpc"]
    if not ratios:
        return Verdict(claim, source, NOT_MEASURED, "no server CPU per delivery for gRPC next "
                       "to SSE or long polling")
    best = max(r for _, _, r in ratios)
    figure = ("server CPU per 1000 deliveries - " + "; ".join(lines) + ". JSON-over-HTTP / gRPC: "
              + ", ".join(f"{s} {t} {r:.2f}x" for s, t, r in ratios))
    return Verdict(claim, source, CONFIRMED if best >= 10 else NOT_CONFIRMED, figure,
                   "same server core, same hub: the difference is the transport layer, "
                   "framework included (grpcio vs the HTTP stack; the stack comparison shows "
                   "how much a framework alone moves it). " + _caveat(invalid))


def _grpc_smaller(df: pd.DataFrame) -> Verdict:
    claim = "gRPC's binary protobuf payload is smaller than JSON text"
    source = "gRPC vs REST"
    values, lines, invalid = _per_scenario(df, "wire_bytes_per_msg", "B",
                                           ("grpc", "ws", *JSON_HTTP))
    values = {s: v for s, v in values.items() if "grpc" in v}
    if not values:
        return Verdict(claim, source, NOT_MEASURED, "no wire bytes for gRPC")
    bigger = [s for s, v in values.items()
              if any(x < v["grpc"] * (1 - TOLERANCE) for t, x in v.items() if t != "grpc")]
    return Verdict(claim, source, NOT_CONFIRMED if bigger else CONFIRMED,
                   "bytes read per delivered message - " + "; ".join(lines),
                   "the message's `data` is the same JSON stamp in every transport. "
                   + _caveat(invalid))


def _keepalive(df: pd.DataFrame) -> Verdict:
    claim = "Keeping connections alive saves round trips (150-300 ms cross-continent)"
    source = "Optimization Strategies"
    parts, saved, invalid = [], 0, False
    for t in ("ws", "sse", "longpoll", "grpc"):
        conn, ok1 = _value(df, "connections", t, "connect_p50_ms")
        lat, ok2 = _value(df, "chat", t, "p50_ms")
        if conn is None or lat is None:
            continue
        invalid |= not (ok1 and ok2)
        saved += conn > lat * (1 + TOLERANCE)
        parts.append(f"{t}: new connection {_fmt(conn, ok1, 'ms')} vs delivery on an open "
                     f"one {_fmt(lat, ok2, 'ms')}")
    if not parts:
        return Verdict(claim, source, NOT_MEASURED, "needs the connections and chat scenarios")
    return Verdict(claim, source, CONFIRMED if saved == len(parts) else NOT_CONFIRMED,
                   "median - " + "; ".join(parts),
                   "loopback: the direction is measured, the 150-300 ms magnitude (a WAN "
                   "round trip) is not. " + _caveat(invalid))


def _pubsub(df: pd.DataFrame, meta: dict[str, Any]) -> Verdict:
    claim = "Real-time servers need pub/sub (Redis) to deliver across servers"
    source = "WebSocket Scaling with Pub/Sub"
    params = meta.get("parameters", {})
    if params.get("broker") != "redis" or int(params.get("replicas", 1)) < 2:
        return Verdict(claim, source, NOT_MEASURED, "single-node run (no Redis or one replica)")
    rows = df[df["scenario"].isin(("chat", "direct")) & df["expected"].notna()]
    if rows.empty:
        return Verdict(claim, source, NOT_MEASURED, "needs the chat or direct scenario")
    expected, missing = int(rows["expected"].sum()), int(rows["missing"].sum())
    return Verdict(claim, source, CONFIRMED if expected and missing == 0 else NOT_CONFIRMED,
                   f"chat/direct members spread over {params.get('replicas')} replicas through "
                   f"Redis: {expected - missing} of {expected} expected deliveries arrived",
                   "shows the design works, not that nothing else could")


def _not_measured(claim: str, source: str, why: str) -> Callable[[], Verdict]:
    return lambda: Verdict(claim, source, NOT_MEASURED, why)


def judged_stacks(summary: pd.DataFrame) -> dict[str, str]:
    """transport -> the stack its claims are judged on: its default stack when the run has
    it, else the first of STACKS it ran on."""
    out: dict[str, str] = {}
    if summary.empty or "stack" not in summary:
        return out
    for transport, g in summary.groupby("transport", sort=False):
        t, ran = str(transport), {str(s) for s in g["stack"]}
        preferred = [default_stack(t), *STACKS]
        out[t] = next((s for s in preferred if s in ran), sorted(ran)[0])
    return out


def judged_labels(summary: pd.DataFrame) -> list[str]:
    """`ws · starlette`, ... : the targets the verdicts are about."""
    return [label(t, s) for t, s in judged_stacks(summary).items()]


def _judged(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary's rows of the judged stacks only (one per transport and scenario)."""
    stacks = judged_stacks(summary)
    if not stacks:
        return summary
    keep = [stacks.get(str(t)) == str(s) for t, s in zip(summary["transport"], summary["stack"],
                                                          strict=True)]
    return summary[keep]


def check(summary: pd.DataFrame, meta: dict[str, Any]) -> list[Verdict]:
    """Every claim, in the order of the seed's tables, on the judged stacks' rows."""
    if summary.empty:
        summary = pd.DataFrame(columns=["scenario", "transport", "stack", "valid"])
    summary = _judged(summary)
    jobs: list[Callable[[], Verdict]] = [
        lambda: _lowest(summary, "ws", "WebSocket has the lowest latency",
                        "Long Polling vs SSE vs WebSocket"),
        lambda: _medium(summary),
        lambda: _higher(summary),
        lambda: _tcp_connects(summary),
        lambda: _grpc_faster(summary),
        lambda: _grpc_smaller(summary),
        lambda: _keepalive(summary),
        lambda: _pubsub(summary, meta),
        _not_measured("SSE reconnects automatically", "Long Polling vs SSE vs WebSocket",
                      "a browser EventSource feature; the benchmark clients reconnect "
                      "themselves (see churn for the cost of a reconnect)"),
        _not_measured("gRPC needs gRPC-Web in browsers", "gRPC vs REST",
                      "a deployment fact, not a number this benchmark produces"),
    ]
    return [job() for job in jobs]
