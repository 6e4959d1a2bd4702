"""The report of a run over several network profiles (`rtbench run --net A,B`).

Each profile ran the whole plan as a run of its own in `net-NAME/` (its full
report there); this page puts the transports side by side per profile:
delivery latency (p50/p99, publish to delivery: a message crosses the link
twice, publisher to server and server to subscriber; and the server leg alone,
from the hub's `ts` on the message to its receipt: one crossing), connect time (TCP, TLS
when on, and the protocol's own handshake up to the first server frame), server
CPU per delivery, bytes per message and new TCP connections per 1,000
deliveries (what long-polling's round trips cost), and each profile's capacity
knee. It also says what each link was: requested and achieved RTT, the
mechanism (netem or delayd) and the element's counters. `profiles.csv` holds the
rows.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from bench.harness.runs import load_meta, load_run
from bench.report import headline, netverdicts, tables

COLUMNS = ("profile", "transport", "stack", "scenario", "p50_ms", "p99_ms", "server_leg_p50_ms",
           "server_leg_p99_ms", "connect_p50_ms",
           "connect_p99_ms", "cpu_ms_per_1k", "wire_bytes_per_msg", "tcp_accepts_per_1k",
           "deliveries_per_s", "missing", "valid")
# what each scenario tells across profiles, in the order the page shows them
SHOWN = {"chat": ("p50_ms", "p99_ms", "server_leg_p50_ms", "server_leg_p99_ms", "cpu_ms_per_1k"),
         "direct": ("p50_ms", "p99_ms"),
         "churn": ("p50_ms", "p99_ms", "connect_p50_ms"),
         "connections": ("connect_p50_ms", "connect_p99_ms"),
         "broadcast": ("p50_ms", "p99_ms", "server_leg_p50_ms", "tcp_accepts_per_1k",
                       "wire_bytes_per_msg")}
LABELS = {"p50_ms": "p50 ms", "p99_ms": "p99 ms", "server_leg_p50_ms": "server leg p50 ms",
          "server_leg_p99_ms": "server leg p99 ms", "connect_p50_ms": "connect p50 ms",
          "connect_p99_ms": "connect p99 ms", "cpu_ms_per_1k": "CPU-us/delivery",
          "tcp_accepts_per_1k": "TCP accepts/1k", "wire_bytes_per_msg": "B/msg"}


def sub_runs(run_dir: Path) -> list[tuple[str, Path]]:
    """(profile, its run directory) in the order they ran."""
    meta = load_meta(run_dir)
    return [(name.removeprefix("net-"), run_dir / name) for name in meta.get("sub_runs", [])
            if (run_dir / name / "meta.json").is_file()]


def comparison(run_dir: Path) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """(one row per profile, target and scenario; per profile its link and headline)."""
    rows: list[pd.DataFrame] = []
    links = []
    for name, sub in sub_runs(run_dir):
        run = load_run(sub)
        summary = tables.summary(run)
        if not summary.empty:
            part = summary.assign(profile=name)
            rows.append(part[[c for c in COLUMNS if c in part.columns]])
        net = run.meta.get("network") or {}
        achieved = net.get("achieved_rtt_ms") or {}
        links.append({"profile": name, "dir": sub.name, "mechanism": net.get("mechanism",
                                                                              "loopback"),
                      "requested_rtt_ms": net.get("requested_rtt_ms"),
                      "achieved_rtt_ms": achieved, "description":
                      (net.get("profile") or {}).get("description", ""),
                      "status": run.meta.get("status"),
                      "headline": headline.rows(run, summary)})
    df = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=list(COLUMNS))
    return df, links


def _cell(value: Any) -> str:
    return headline.cell(headline.num(value) if isinstance(value, float) else value)


def pivot(df: pd.DataFrame, scenario: str, metric: str) -> list[list[str]]:
    """Rows `transport · stack`, one column per profile, for one scenario's metric."""
    part = df[df["scenario"] == scenario]
    profiles = list(dict.fromkeys(df["profile"]))
    out = []
    for (transport, stack), g in part.groupby(["transport", "stack"], sort=False):
        by = {r["profile"]: r for r in g.to_dict("records")}
        out.append([f"{transport} \u00b7 {stack}",
                    *(_cell(by[p][metric]) + ("" if by[p]["valid"] else " (invalid)")
                      if p in by else "-" for p in profiles)])
    return out


def verdict_lines(verdicts: list[Any]) -> list[str]:
    if not verdicts:
        return []
    out = ["", "The textbook's network claims, measured (bench/report/netverdicts.py):"]
    for v in verdicts:
        out.append(f"  [{v.verdict}] {v.claim} ({v.source}): {v.figure}")
    return out


def text(df: pd.DataFrame, links: list[dict[str, Any]]) -> str:
    """The comparison for the terminal."""
    if df.empty:
        return "Across network profiles: nothing measured"
    profiles = list(dict.fromkeys(df["profile"]))
    out = ["Across network profiles (each profile's own report: net-NAME/report.html)"]
    for link in links:
        rtt = link["achieved_rtt_ms"].get("p50") if link["achieved_rtt_ms"] else None
        out.append(f"  {link['profile']}: {link['mechanism']}, RTT requested "
                   f"{_cell(link['requested_rtt_ms'])} ms, achieved p50 {_cell(rtt)} ms")
    for scenario, metrics in SHOWN.items():
        for metric in metrics:
            body = pivot(df, scenario, metric)
            if not body:
                continue
            head = [f"{scenario}: {LABELS[metric]}", *profiles]
            widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
            out += ["", "  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                                  for i, (v, w) in enumerate(zip(head, widths, strict=True)))]
            out += ["  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                              for i, (v, w) in enumerate(zip(r, widths, strict=True)))
                    for r in body]
    return "\n".join(out)


def render(run_dir: Path) -> str:
    """Write profiles.csv and report.html in `run_dir`; the terminal text."""
    df, links = comparison(run_dir)
    df.to_csv(run_dir / "profiles.csv", index=False)
    meta = load_meta(run_dir)
    verdicts = netverdicts.check(df, links, tls=bool(meta.get("tls")))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True)
    tables_html = [{"title": f"{scenario}: {LABELS[m]}", "rows": pivot(df, scenario, m)}
                   for scenario, metrics in SHOWN.items() for m in metrics
                   if not df.empty and pivot(df, scenario, m)]
    html = env.get_template("profiles.html.j2").render(
        run_id=run_dir.name, meta=meta, links=links,
        verdicts=[v.to_dict() for v in verdicts],
        profiles=list(dict.fromkeys(df["profile"])) if not df.empty else [],
        tables=tables_html, cell=_cell)
    (run_dir / "report.html").write_text(html, encoding="utf-8")
    return "\n".join([text(df, links), *verdict_lines(verdicts)])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report.profiles",
                                description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    args = p.parse_args(argv)
    if load_meta(args.run_dir).get("kind") != "profiles":
        p.error(f"{args.run_dir} is not a run over network profiles (rtbench run --net)")
    print(render(args.run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
