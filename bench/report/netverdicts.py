"""The textbook's network-dependent claims, judged across network profiles.

On loopback ("the textbook, checked": bench.report.textbook) a round trip costs
about 0.1 ms, so the claims about round trips can be checked in direction only.
A run over network profiles (`rtbench run --net loopback,wan`) measures them
with their magnitude, in round trips of the profile's achieved RTT. Each claim
is judged on the profile with the longest achieved RTT:
- "Keeping connections alive saves round trips (150-300 ms)" (Optimization
  Strategies): a new connection's time against a delivery on an open one;
- "TCP handshake 1 RTT, TLS 1-2 RTT" (Network Latency Budget): connect time in
  RTTs (TCP, TLS when on, and the transport's own handshake up to its first
  frame);
- "Long polling: higher latency" (Long Polling vs SSE vs WebSocket): the server
  leg (server `ts` to receipt) of long-polling against WebSocket's.
Figures of rows the load generator marked invalid carry a `*`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.harness.plan import default_stack
from bench.report.textbook import CONFIRMED, NOT_CONFIRMED, NOT_MEASURED, TOLERANCE, Verdict

ORDER = ("ws", "sse", "longpoll", "grpc")


def _cell(df: pd.DataFrame, profile: str, scenario: str, transport: str, col: str,
          ) -> tuple[float | None, bool]:
    hit = df[(df["profile"] == profile) & (df["scenario"] == scenario)
             & (df["transport"] == transport) & (df["stack"] == default_stack(transport))]
    if hit.empty or col not in hit or pd.isna(hit[col].iloc[0]):
        return None, False
    return float(hit[col].iloc[0]), bool(hit["valid"].iloc[0])


def _f(v: float, ok: bool, unit: str = "ms") -> str:
    return f"{v:.3g} {unit}" + ("" if ok else "*")


def farthest(links: list[dict[str, Any]]) -> tuple[str, float] | None:
    """(profile, achieved RTT p50 ms) of the profile with the longest RTT, None without one."""
    rtts = [(str(link["profile"]), float(link["achieved_rtt_ms"]["p50"])) for link in links
            if link.get("achieved_rtt_ms") and link["achieved_rtt_ms"].get("p50")]
    return max(rtts, key=lambda x: x[1]) if rtts else None


def _connect(df: pd.DataFrame, profile: str, t: str) -> tuple[float | None, bool]:
    """Connect p50 in `profile`: the churn scenario's (reconnects at a gentle rate), else
    the connections scenario's."""
    v = _cell(df, profile, "churn", t, "connect_p50_ms")
    return v if v[0] is not None else _cell(df, profile, "connections", t, "connect_p50_ms")


def check(df: pd.DataFrame, links: list[dict[str, Any]], tls: bool) -> list[Verdict]:
    """The verdicts (empty without a profile whose RTT was measured)."""
    far = farthest(links)
    if far is None or df.empty:
        return []
    profile, rtt = far
    where = f"{profile}, achieved RTT {rtt:.3g} ms"
    return [_keepalive(df, profile, rtt, where), _handshakes(df, profile, rtt, where, tls),
            _longpoll(df, profile, rtt, where)]


def _keepalive(df: pd.DataFrame, profile: str, rtt: float, where: str) -> Verdict:
    claim = "Keeping connections alive saves round trips (150-300 ms)"
    source = "Optimization Strategies"
    parts, saved, n = [], 0, 0
    for t in ORDER:
        conn, ok1 = _connect(df, profile, t)
        leg, ok2 = _cell(df, profile, "chat", t, "server_leg_p50_ms")
        if conn is None or leg is None:
            continue
        n += 1
        saved += conn - leg > rtt
        parts.append(f"{t} new connection {_f(conn, ok1)} vs a delivery on an open one "
                     f"{_f(leg, ok2)}: {_f(conn - leg, ok1 and ok2)} saved")
    if not n:
        return Verdict(claim, source, NOT_MEASURED, f"{where}: needs churn/connections and chat")
    return Verdict(claim, source, CONFIRMED if saved == n else NOT_CONFIRMED,
                   f"{where}, p50: " + "; ".join(parts),
                   "saved = connect time minus the server leg of a delivery")


def _handshakes(df: pd.DataFrame, profile: str, rtt: float, where: str, tls: bool) -> Verdict:
    claim = "A new connection costs TCP 1 RTT, TLS 1-2 RTT more"
    source = "Network Latency Budget"
    parts, ok_all, n = [], True, 0
    for t in ORDER:
        conn, ok = _connect(df, profile, t)
        if conn is None:
            continue
        n += 1
        rtts = conn / rtt
        ok_all &= rtts >= (2.0 if tls else 1.0) * (1 - TOLERANCE)
        parts.append(f"{t} {_f(conn, ok)} = {rtts:.2g} RTT")
    if not n:
        return Verdict(claim, source, NOT_MEASURED, f"{where}: needs churn or connections")
    return Verdict(claim, source, CONFIRMED if ok_all else NOT_CONFIRMED,
                   f"{where}, connect p50 to the first server frame{' over TLS' if tls else ''}"
                   ": " + "; ".join(parts),
                   "each includes the transport's own handshake after TCP"
                   + (" and TLS 1.3" if tls else "") + " (a long-poll session opens with a "
                   "POST, then its first poll)")


def _longpoll(df: pd.DataFrame, profile: str, rtt: float, where: str) -> Verdict:
    claim = "Long polling has higher latency than WebSocket"
    source = "Long Polling vs SSE vs WebSocket"
    lp, ok1 = _cell(df, profile, "chat", "longpoll", "server_leg_p50_ms")
    ws, ok2 = _cell(df, profile, "chat", "ws", "server_leg_p50_ms")
    if lp is None or ws is None:
        return Verdict(claim, source, NOT_MEASURED, f"{where}: needs chat on longpoll and ws")
    more = lp - ws
    return Verdict(claim, source,
                   CONFIRMED if more > ws * TOLERANCE else NOT_CONFIRMED,
                   f"{where}, chat server leg p50: longpoll {_f(lp, ok1)} vs ws {_f(ws, ok2)}, "
                   f"{_f(more, ok1 and ok2)} more ({more / rtt:.2g} RTT)",
                   "a delivery that finds no poll waiting waits for the client's next one, "
                   "up to a round trip")
