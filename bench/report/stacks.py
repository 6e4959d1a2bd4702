"""Framework or transport? How far a figure moves between server stacks, and between transports.

For a run with more than one stack (`rtbench run --stacks starlette,aiohttp`),
each figure below is set out per HTTP transport (ws, sse, longpoll) and stack,
with two spreads, each the larger value over the smaller (direction-free, >= 1):
- framework: the same transport on different stacks (the framework's effect);
- transport: different transports on the same stack (the transport's effect).
gRPC has one stack (grpcio), so it has no framework spread and stays out of
these tables; the headline and the other tables show it.

Spreads count valid figures only: a figure from a row marked invalid (a
load-side limited ramp's maximum is a lower bound, say) is shown with a `*` and
left out. One run, no repeats: a spread within about 5-10 % is within what two
runs of the same target differ by (the textbook's TOLERANCE is 5 %).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bench.harness.plan import STACKS, TRANSPORTS

HTTP = tuple(t for t in TRANSPORTS if t != "grpc")


@dataclass(frozen=True, slots=True)
class Figure:
    column: str
    name: str
    scenario: str | None = None  # None: a headline column; else a summary column of it


FIGURES = (
    Figure("max_deliveries_per_s", "max deliveries/s (broadcast ramp)"),
    Figure("cpu_us_per_delivery", "server CPU \u00b5s / delivery at that max"),
    Figure("kb_per_connection", "KiB / idle connection"),
    Figure("p50_ms", "chat: p50 ms", "chat"),
    Figure("cpu_ms_per_1k", "chat: server CPU-ms / 1000 deliveries", "chat"),
)


@dataclass
class Comparison:
    """One figure across stacks and HTTP transports."""

    figure: str
    stacks: list[str]
    # transport -> stack -> (value, valid)
    values: dict[str, dict[str, tuple[float, bool]]] = field(default_factory=dict)

    def framework(self) -> dict[str, float]:
        """transport -> its spread across stacks (where it ran on two or more)."""
        return {t: _spread(v) for t, v in self.values.items() if _valid(v) >= 2}

    def transport(self) -> dict[str, float]:
        """stack -> the spread across the HTTP transports on it (two or more)."""
        out = {}
        for s in self.stacks:
            on = {t: v[s] for t, v in self.values.items() if s in v}
            if _valid(on) >= 2:
                out[s] = _spread(on)
        return out

    def cells(self, transport: str) -> list[str]:
        return [_cell(self.values.get(transport, {}).get(s)) for s in self.stacks]

    def summary(self) -> str:
        """`framework up to 1.30x (sse: starlette 20, aiohttp 26), transport up to 11.0x
        (starlette: ws 1.2 .. longpoll 13)`: the largest spread of each kind, with the
        valid figures it comes from (the lowest and highest, for transports)."""
        parts = []
        framework, transport = self.framework(), self.transport()
        if framework:
            t, most = max(framework.items(), key=lambda kv: kv[1])
            shown = ", ".join(f"{s} {_cell(v)}" for s, v in self.values[t].items() if v[1])
            parts.append(f"framework up to {_ratio(most)} ({t}: {shown})")
        if transport:
            s, most = max(transport.items(), key=lambda kv: kv[1])
            on = sorted(((v[s], t) for t, v in self.values.items() if s in v and v[s][1]))
            parts.append(f"transport up to {_ratio(most)} ({s}: {on[0][1]} {_cell(on[0][0])}"
                         f" .. {on[-1][1]} {_cell(on[-1][0])})")
        return ", ".join(parts) or "no two valid figures to compare"

    def to_dict(self) -> dict[str, Any]:
        framework, transport = self.framework(), self.transport()
        return {"figure": self.figure, "stacks": self.stacks, "summary": self.summary(),
                "rows": [{"transport": t, "cells": self.cells(t),
                          "framework": _ratio(framework.get(t))}
                         for t in HTTP if t in self.values],
                "transport": [_ratio(transport.get(s)) for s in self.stacks]}


def _valid(values: dict[str, tuple[float, bool]]) -> int:
    return sum(ok for _, ok in values.values())


def _spread(values: dict[str, tuple[float, bool]]) -> float:
    """Larger over smaller of the valid values."""
    nums = [v for v, ok in values.values() if ok]
    low, high = min(nums), max(nums)
    return high / low if low > 0 else float("inf")


def _ratio(value: float | None) -> str:
    """1.31x, 12.4x, 170x (inf: one of the values was 0)."""
    if value is None:
        return "-"
    if value == float("inf"):
        return "inf"
    return f"{value:.2f}x" if value < 10 else f"{value:.3g}x" if value < 100 else f"{value:.0f}x"


def _cell(hit: tuple[float, bool] | None) -> str:
    if hit is None:
        return "-"
    value, valid = hit
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return text if valid else text + "*"


def _values(fig: Figure, summary: pd.DataFrame, head: list[dict[str, Any]],
            ) -> dict[str, dict[str, tuple[float, bool]]]:
    out: dict[str, dict[str, tuple[float, bool]]] = {}
    if fig.scenario is None:
        rows = [(str(r["transport"]), str(r["stack"]), r.get(fig.column), bool(r["valid"]))
                for r in head]
    elif summary.empty or fig.column not in summary:
        rows = []
    else:
        hit = summary[summary["scenario"] == fig.scenario]
        rows = [(str(t), str(s), v, bool(ok)) for t, s, v, ok in zip(
            hit["transport"], hit["stack"], hit[fig.column], hit["valid"], strict=True)]
    for transport, stack, value, valid in rows:
        if transport in HTTP and value is not None and not pd.isna(value):
            out.setdefault(transport, {})[stack] = (float(value), valid)
    return out


def compare(summary: pd.DataFrame, head: list[dict[str, Any]]) -> list[Comparison]:
    """Every figure's comparison; empty when no HTTP transport ran on two stacks."""
    if summary.empty or "stack" not in summary:
        return []
    http = summary[summary["transport"].isin(HTTP)]
    if http.empty or http.groupby("transport")["stack"].nunique().max() < 2:
        return []
    ran = {str(s) for s in http["stack"]}
    stacks = [s for s in STACKS if s in ran] + sorted(ran - set(STACKS))
    return [Comparison(f.name, stacks, _values(f, summary, head)) for f in FIGURES]


def text(comparisons: list[Comparison]) -> str:
    """The terminal's lines (empty when the run has one stack)."""
    if not comparisons:
        return ""
    lines = ["Framework or transport? (larger / smaller valid value: the same transport on "
             "different stacks, different transports on the same stack)"]
    width = max(len(c.figure) for c in comparisons)
    lines += [f"  {c.figure.ljust(width)}  {c.summary()}" for c in comparisons]
    return "\n".join(lines)
