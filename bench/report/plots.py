"""The report's figures as PNG files (matplotlib, no display needed).

One series per target, labelled `ws · aiohttp`: the colour says the transport,
the line style (or bar hatching) the server stack, so a framework's effect reads
as two lines of one colour and a transport's as lines of two colours.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import math

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from bench.harness.plan import Target, target_order
from bench.harness.runs import RunData
from bench.report import tables

COLORS = {"ws": "#1f77b4", "sse": "#2ca02c", "longpoll": "#d62728", "grpc": "#9467bd"}
LINES = {"aiohttp": "--"}  # a stack's line style; solid for the others (starlette, grpcio)
HATCHES = {"aiohttp": "//"}  # a stack's bar hatching; none for the others
DPI = 100


def _save(fig: Figure, path: Path, bottom: float = 0.0) -> Path:
    """Write and close `fig`; `bottom` inches at its foot stay free (a legend below)."""
    fig.tight_layout(rect=(0, bottom / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _plain_log(axis: Any) -> None:
    """Log scale labelled 0.5, 1, 10... instead of 10^x (and no crowded minor labels)."""
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _targets(df: pd.DataFrame) -> list[Target]:
    """The targets present in a table, in the usual order."""
    found = {Target(str(t), str(s)) for t, s in zip(df["transport"], df["stack"], strict=True)}
    return sorted(found, key=lambda t: target_order(t.transport, t.stack))


def _rows(df: pd.DataFrame, target: Target) -> pd.DataFrame:
    return df[(df["transport"] == target.transport) & (df["stack"] == target.stack)]


def _style(target: Target) -> dict[str, Any]:
    return {"color": COLORS.get(target.transport), "linestyle": LINES.get(target.stack, "-")}


def latency_cdf(run: RunData, scenario: str, path: Path) -> Path | None:
    """CDF of one scenario's delivery latency, one line per target (log time axis)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for target in run.targets():
        res = run.result(scenario, target.transport, target.stack)
        if res is None:
            continue
        xs, ys = tables.cdf(res)
        if not xs:
            continue
        valid = res.get("validity", {}).get("valid")
        ax.step(xs, ys, where="post", label=target.label if valid else f"{target.label} "
                "(invalid)", **_style(target))
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
    """Subscriber ramps: p99 and deliveries/s per subscriber count (rate ramps: capacity_knees)."""
    cap = cap[cap["ramp"] == "subscribers"] if not cap.empty else cap
    if cap.empty:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for target in _targets(cap):
        g = _rows(cap, target).sort_values("subscribers")
        a1.plot(g["subscribers"], g["p99_ms"], marker="o", label=target.label, **_style(target))
        a2.plot(g["subscribers"], g["deliveries_per_s"], marker="o", label=target.label,
                **_style(target))
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


def _short(reason: str) -> str:
    """A stop reason short enough for a legend."""
    if reason.startswith("load-side limited"):
        return "load-side limited (no knee)"
    return reason.split(" (")[0].replace(" >= ", " \u2265 ")


def _end_label(g: pd.DataFrame) -> str:
    last = g.iloc[-1]
    reason = str(last["stopped_because"] or "")
    if not reason:
        return "ramp did not end"
    if reason.startswith("load-side limited") or not last["knee"]:
        return _short(reason)
    return "knee: " + _short(reason)


def _end(ax: Any, g: pd.DataFrame, y: str, color: str | None) -> None:
    """Mark the step that ended a ramp: a star at a knee (hollow when the load generator
    was not valid in it), a black-edged X when it saturated, a square for any other stop."""
    last = g.iloc[-1]
    reason = str(last["stopped_because"] or "")
    if not reason or pd.isna(last[y]):
        return
    side = reason.startswith("load-side limited")
    marker, size = ("X", 220) if side else ("*", 320) if last["knee"] else ("s", 110)
    valid = last["loadgen_valid"]
    hollow = not side and valid is not None and not pd.isna(valid) and not bool(valid)
    ax.scatter([last["deliveries_per_s"]], [last[y]], marker=marker, s=size,
               color="white" if hollow else color, edgecolors="black" if side else color,
               linewidths=1.5, zorder=5)


def _fit_line(ax: Any, g: pd.DataFrame, color: str | None) -> None:
    """The CPU line a knee was read off (loadgen/knee.py), up to the knee: a thin dashed
    segment ending in a tick."""
    if "fit_knee_per_s" not in g or g["fit_knee_per_s"].isna().all():
        return
    knee, a, b = (float(g[c].dropna().iloc[0])
                  for c in ("fit_knee_per_s", "fit_intercept", "fit_slope_k"))
    x0 = max(1.0, min(float(g["deliveries_per_s"].min()), knee / 2))
    ax.plot([x0, knee], [a + b * x0 / 1000, a + b * knee / 1000], linestyle=(0, (2, 2)),
            linewidth=1, color=color, zorder=3)
    ax.scatter([knee], [a + b * knee / 1000], marker="|", s=300, color=color, zorder=5)


def _rate_axis(axis: Any) -> None:
    """Log scale labelled 2k, 5k, 10k..."""
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(
        lambda v, _pos: f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def capacity_knees(cap: pd.DataFrame, path: Path) -> Path | None:
    """Rate ramps: p99 and server CPU against deliveries/s per step, the ramp's end marked;
    one line per target."""
    fig = knee_figure(cap)
    if fig is None:
        return None
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def knee_figure(cap: pd.DataFrame) -> Figure | None:
    """The figure of `capacity_knees` (None without a rate ramp); the caller closes it."""
    cap = cap[cap["ramp"] == "rate"] if not cap.empty else cap
    if cap.empty:
        return None
    targets = _targets(cap)
    legend_rows = math.ceil((len(targets) + 2) / 3)
    legend_in = 0.3 * legend_rows + 0.5  # the legend's rows and the marker key, inches
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.6 + legend_in))
    handles = []
    for target in targets:
        g = _rows(cap, target).sort_values("step")
        color = COLORS.get(target.transport)
        ok = g["loadgen_valid"].fillna(True).astype(bool)
        for ax, y in ((a1, "p99_ms"), (a2, "server_cpu_percent")):
            (line,) = ax.plot(g["deliveries_per_s"], g[y], **_style(target),
                              label=f"{target.label}: {_end_label(g)}")
            ax.scatter(g[ok]["deliveries_per_s"], g[ok][y], color=color, s=18, zorder=4)
            ax.scatter(g[~ok]["deliveries_per_s"], g[~ok][y], facecolors="white",
                       edgecolors=color, s=30, zorder=4)
            _end(ax, g, y, color)
        _fit_line(a2, g, color)
        handles.append(line)
    limit = float(cap["p99_limit_ms"].iloc[0])
    handles.append(a1.axhline(limit, linestyle="--", color="grey",
                              label=f"p99 limit {limit:g} ms (left)"))
    cpu_limit = cap["max_server_cpu"].dropna()
    if not cpu_limit.empty:
        handles.append(a2.axhline(float(cpu_limit.iloc[0]), linestyle=":", color="grey",
                                  label=f"server CPU limit {float(cpu_limit.iloc[0]):g} % "
                                  "(right)"))
    a1.set_yscale("log")
    _plain_log(a1.yaxis)
    sources = cap["server_cpu_source"].dropna().unique()
    a1.set_ylabel("p99 latency of the step (ms, log scale)")
    a1.set_title("broadcast rate ramp: p99 per step")
    a2.set_ylabel("server CPU %" + (f" ({sources[0]})" if len(sources) == 1 else ""))
    a2.set_title("broadcast rate ramp: server CPU per step")
    a2.set_ylim(0, 108)
    for a in (a1, a2):
        a.set_xscale("log")
        _rate_axis(a.xaxis)
        a.set_xlabel("delivered deliveries / s per step (log scale)")
        a.grid(True, which="both", alpha=0.3)
    height = fig.get_figheight()
    dashed = [s for s in dict.fromkeys(t.stack for t in targets) if LINES.get(s) == "--"]
    key = f"   dashed: {', '.join(dashed)} stack" if dashed else ""
    fig.legend(handles=handles, loc="lower left", ncol=3, fontsize="small",
               bbox_to_anchor=(0.01, 0.3 / height), frameon=False)
    fig.text(0.01, 0.1 / height, "\u2605 knee (a server limit ended the ramp)   \u2716 "
             "load-side limited: the load generator saturated first, no knee   \u25a0 stopped "
             "before a knee   \u25cb hollow: load generator not valid in that step   "
             "| dashed to a tick (right): the CPU line the knee was read off" + key,
             fontsize="small", color="#444")
    fig.tight_layout(rect=(0, legend_in / height, 1, 1))
    return fig


def _bars(ax: Any, df: pd.DataFrame, value: str, title: str, ylabel: str) -> bool:
    data = df.dropna(subset=[value])
    if data.empty:
        ax.set_title(f"{title} (not measured)")
        ax.set_axis_off()
        return False
    order = _targets(data)
    values = [float(_rows(data, t)[value].iloc[0]) for t in order]
    many = len(order) > len(COLORS)  # more targets than transports: slanted labels
    ax.bar([t.label if many else f"{t.transport}\n{t.stack}" for t in order], values,
           color=[COLORS.get(t.transport, "grey") for t in order],
           hatch=[HATCHES.get(t.stack, "") for t in order], edgecolor="white")
    ax.tick_params(axis="x", labelsize="small")
    if many:
        plt.setp(ax.get_xticklabels(), rotation=40, ha="right", rotation_mode="anchor")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    return True


def connections(conn: pd.DataFrame, path: Path) -> Path | None:
    if conn.empty:
        return None
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6 if len(conn) <= len(COLORS) else 4.4))
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
    targets = _targets(data)
    width = 0.8 / len(targets)
    for i, t in enumerate(targets):
        ys = []
        rows = _rows(data, t)
        for s in scenarios:
            hit = rows[rows["scenario"] == s][value]
            ys.append(float(hit.iloc[0]) if len(hit) else 0.0)
        ax.bar([k + i * width for k in range(len(scenarios))], ys, width, label=t.label,
               color=COLORS.get(t.transport), hatch=HATCHES.get(t.stack, ""),
               edgecolor="white")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(scenarios))], scenarios)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    return True


def _legend_below(fig: Figure, axes: Any) -> float:
    """One legend for side-by-side panels of the same series, under them; its height in
    inches (for `_save`)."""
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ncol = min(len(handles), 4)
            fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize="small",
                       frameon=False)
            return 0.25 * math.ceil(len(handles) / ncol) + 0.1
    return 0.0


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
    return _save(fig, path, _legend_below(fig, (a1, a2)))


def latency_bars(summary: pd.DataFrame, path: Path) -> Path | None:
    msgs = summary[summary["samples"] > 0] if not summary.empty else summary
    if msgs.empty:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    _grouped(a1, msgs, "p50_ms", "median delivery latency", "ms")
    _grouped(a2, msgs, "p99_ms", "p99 delivery latency", "ms")
    return _save(fig, path, _legend_below(fig, (a1, a2)))


def render_all(run: RunData, summary: pd.DataFrame, cap: pd.DataFrame, conn: pd.DataFrame,
               out: Path) -> dict[str, Path]:
    """Every figure of the report; name -> PNG path (figures without data are left out,
    and a file a previous rendering left under that name is removed)."""
    out.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, Path, Callable[[Path], Path | None]]] = [
        ("latency", out / "latency.png", lambda p: latency_bars(summary, p)),
        ("capacity_knees", out / "capacity-knees.png", lambda p: capacity_knees(cap, p)),
        ("capacity", out / "capacity.png", lambda p: capacity(cap, p)),
        ("connections", out / "connections.png", lambda p: connections(conn, p)),
        ("cost", out / "cost.png", lambda p: cost(summary, p)),
    ]
    scenarios = list(dict.fromkeys(s["scenario"] for s in run.steps))
    for s in scenarios:
        jobs.append((f"cdf_{s}", out / f"cdf_{s}.png",
                     lambda p, s=s: latency_cdf(run, s, p)))  # type: ignore[misc]
    made = {}
    for name, target, job in jobs:
        path = job(target)
        if path is not None:
            made[name] = path
        else:
            target.unlink(missing_ok=True)
    return made
