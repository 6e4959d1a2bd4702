"""The textbook's network claims judged across profiles (bench/report/netverdicts.py)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.harness.plan import default_stack
from bench.report import netverdicts
from bench.report.textbook import CONFIRMED, NOT_CONFIRMED, NOT_MEASURED

LINKS = [{"profile": "loopback", "achieved_rtt_ms": {}},
         {"profile": "wan", "achieved_rtt_ms": {"p50": 100.0}}]


def _df(connect: dict[str, float], leg: dict[str, float], valid: bool = True) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for t in ("ws", "sse", "longpoll", "grpc"):
        base = {"profile": "wan", "transport": t, "stack": default_stack(t), "valid": valid}
        rows.append({**base, "scenario": "churn", "connect_p50_ms": connect[t]})
        rows.append({**base, "scenario": "chat", "server_leg_p50_ms": leg[t]})
        rows.append({**base, "profile": "loopback", "scenario": "chat",
                     "server_leg_p50_ms": 1.0})
    return pd.DataFrame(rows)


def test_round_trip_claims_are_judged_in_rtts_of_the_farthest_profile() -> None:
    df = _df({"ws": 310, "sse": 306, "longpoll": 611, "grpc": 306},
             {"ws": 52.4, "sse": 52.0, "longpoll": 93.1, "grpc": 52.2})
    keep, shake, lp = netverdicts.check(df, LINKS, tls=True)
    assert keep.verdict == shake.verdict == lp.verdict == CONFIRMED
    assert "longpoll 611 ms = 6.1 RTT" in shake.figure and "over TLS" in shake.figure
    assert "40.7 ms more (0.41 RTT)" in lp.figure
    assert "ws new connection 310 ms" in keep.figure and "258 ms saved" in keep.figure


def test_figures_that_refute_and_invalid_rows_are_said() -> None:
    df = _df({"ws": 150, "sse": 306, "longpoll": 611, "grpc": 306},
             {"ws": 52.0, "sse": 52.0, "longpoll": 52.5, "grpc": 52.0}, valid=False)
    keep, shake, lp = netverdicts.check(df, LINKS, tls=True)
    assert keep.verdict == NOT_CONFIRMED  # ws saved 98 ms < one RTT
    assert shake.verdict == NOT_CONFIRMED  # ws 1.5 RTT over TLS
    assert lp.verdict == NOT_CONFIRMED and "*" in lp.figure  # a tie; invalid rows marked


def test_nothing_to_judge_without_a_measured_rtt_or_the_scenarios() -> None:
    df = _df({"ws": 310, "sse": 306, "longpoll": 611, "grpc": 306},
             {"ws": 52.4, "sse": 52.0, "longpoll": 93.1, "grpc": 52.2})
    assert netverdicts.check(df, LINKS[:1], tls=False) == []
    only_chat = df[df["scenario"] == "chat"]
    keep, shake, lp = netverdicts.check(only_chat, LINKS, tls=False)
    assert keep.verdict == shake.verdict == NOT_MEASURED and lp.verdict == CONFIRMED
