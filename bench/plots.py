"""The report's figures as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from bench import tables
from bench.plan import TRANSPORTS
from bench.runs import RunData

COLORS = {"ws": "#1f77b4", "sse": "#2ca02c", "longpoll": "#d62728", "grpc": "#9467bd"}
DPI = 100


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _plain_log(axis: Any) -> None:
    """Log scale labelled 0.5, 1, 10... instead of 10^x (and no crowded minor labels)."""
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _ordered(values: Any) -> list[str]:
    present = {str(v) for v in values}
    return [t for t in TRANSPORTS if t in present] + sorted(present - set(TRANSPORTS))


def latency_cdf(run: RunData, scenario: str, path: Path) -> Path | None:
    """CDF of one scenario's delivery latency, one line per transport (log time axis)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for transport in TRANSPORTS:
        res = run.result(scenario, transport)
        if res is None:
            continue
        xs, ys = tables.cdf(res)
        if not xs:
            continue
        label = transport if res.get("validity", {}).get("valid") else f"{transport} (invalid)"
        ax.step(xs, ys, where="post", label=label, color=COLORS.get(transport))
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    _plain_log(ax.xaxis)
    ax.set_xlabel("delivery latency (ms, log scale)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{scenario}: latency CDF")
    ax.legend()
    return _save(fig, path)


def capacity(cap: pd.DataFrame, path: Path) -> Path | None:
    if cap.empty:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for transport in _ordered(cap["transport"]):
        g = cap[cap["transport"] == transport].sort_values("subscribers")
        color = COLORS.get(transport)
        a1.plot(g["subscribers"], g["p99_ms"], marker="o", label=transport, color=color)
        a2.plot(g["subscribers"], g["deliveries_per_s"], marker="o", label=transport,
                color=color)
    limit = float(cap["p99_limit_ms"].iloc[0])
    a1.axhline(limit, linestyle="--", color="grey", label=f"limit {limit:g} ms")
    a1.set_yscale("log")
    _plain_log(a1.yaxis)
    a1.set_xlabel("subscribers")
    a1.set_ylabel("p99 latency (ms, log scale)")
    a1.set_title("broadcast: p99 per step")
    a2.set_xlabel("subscribers")
    a2.set_ylabel("deliveries / s")
    a2.set_title("broadcast: throughput per step")
    for a in (a1, a2):
        a.grid(True, alpha=0.3)
        a.legend()
    return _save(fig, path)


def _bars(ax: Any, df: pd.DataFrame, value: str, title: str, ylabel: str) -> bool:
    data = df.dropna(subset=[value])
    if data.empty:
        ax.set_title(f"{title} (not measured)")
        ax.set_axis_off()
        return False
    order = _ordered(data["transport"])
    values = [float(data[data["transport"] == t][value].iloc[0]) for t in order]
    ax.bar(order, values, color=[COLORS.get(t, "grey") for t in order])
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    return True


def connections(conn: pd.DataFrame, path: Path) -> Path | None:
    if conn.empty:
        return None
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
    drawn = [
        _bars(axes[0], conn, "held_peak", "connections held", "connections"),
        _bars(axes[1], conn, "connect_p50_ms", "connect time p50", "ms"),
        _bars(axes[2], conn, "kb_per_connection", "server memory / connection", "KiB"),
        _bars(axes[3], conn, "idle_cpu_percent", "server CPU while idle", "% of a core"),
    ]
    if not any(drawn):
        plt.close(fig)
        return None
    return _save(fig, path)


def _grouped(ax: Any, df: pd.DataFrame, value: str, title: str, ylabel: str) -> bool:
    data = df.dropna(subset=[value])
    if data.empty:
        ax.set_title(f"{title} (not measured)")
        ax.set_axis_off()
        return False
    scenarios = list(dict.fromkeys(data["scenario"]))
    transports = _ordered(data["transport"])
    width = 0.8 / len(transports)
    for i, t in enumerate(transports):
        ys = []
        for s in scenarios:
            hit = data[(data["transport"] == t) & (data["scenario"] == s)][value]
            ys.append(float(hit.iloc[0]) if len(hit) else 0.0)
        ax.bar([k + i * width for k in range(len(scenarios))], ys, width, label=t,
               color=COLORS.get(t))
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(scenarios))], scenarios)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return True


def cost(summary: pd.DataFrame, path: Path) -> Path | None:
    msgs = summary[summary["received"] > 0] if not summary.empty else summary
    if msgs.empty:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    drawn = [_grouped(a1, msgs, "cpu_ms_per_1k", "server CPU per 1000 deliveries", "CPU-ms"),
             _grouped(a2, msgs, "wire_bytes_per_msg", "bytes on the wire per delivered message",
                      "bytes")]
    if not any(drawn):
        plt.close(fig)
        return None
    return _save(fig, path)


def latency_bars(summary: pd.DataFrame, path: Path) -> Path | None:
    msgs = summary[summary["samples"] > 0] if not summary.empty else summary
    if msgs.empty:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    _grouped(a1, msgs, "p50_ms", "median delivery latency", "ms")
    _grouped(a2, msgs, "p99_ms", "p99 delivery latency", "ms")
    return _save(fig, path)


def render_all(run: RunData, summary: pd.DataFrame, cap: pd.DataFrame, conn: pd.DataFrame,
               out: Path) -> dict[str, Path]:
    """Every figure of the report; name -> PNG path (figures without data are left out)."""
    out.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, Callable[[], Path | None]]] = [
        ("latency", lambda: latency_bars(summary, out / "latency.png")),
        ("capacity", lambda: capacity(cap, out / "capacity.png")),
        ("connections", lambda: connections(conn, out / "connections.png")),
        ("cost", lambda: cost(summary, out / "cost.png")),
    ]
    scenarios = list(dict.fromkeys(s["scenario"] for s in run.steps))
    for s in scenarios:
        jobs.append((f"cdf_{s}", lambda s=s: latency_cdf(run, s,  # type: ignore[misc]
                                                          out / f"cdf_{s}.png")))
    made = {}
    for name, job in jobs:
        path = job()
        if path is not None:
            made[name] = path
    return made
