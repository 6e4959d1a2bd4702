"""The report of a run: CSV tables, PNG figures and one self-contained `report.html`.

    rtbench report results/<run-id>      # (re-)render from the run directory

Everything is derived from the run directory (see bench.harness.runs), so a report can
be re-rendered after a change to this module without re-running anything.
"""

from __future__ import annotations

import argparse
import base64
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import orjson
import pandas as pd

from bench.cli import HelpFormatter
from bench.harness.plan import label
from bench.harness.runs import RunData, load_meta, load_run
from bench.report import headline, plots, stacks, tables, textbook

TEMPLATES = Path(__file__).parent / "templates"
STANDALONE = ("fanout", "memory", "latency")  # bench/<name>.py --json <run>/<name>.json

SUMMARY_COLUMNS = (
    ("transport", "transport"), ("stack", "stack"), ("scenario", "scenario"),
    ("status", "status"),
    ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("max_ms", "max ms"),
    ("delivered", "delivered"), ("expected", "expected"), ("missing", "missing"),
    ("cpu_ms_per_1k", "CPU-ms/1k"), ("wire_bytes_per_msg", "B/msg"), ("valid", "valid"),
)


def _clean(value: Any) -> Any:
    """NaN/None -> None, numpy scalars -> Python (for jinja and JSON)."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): _clean(v) for k, v in row.items()} for row in df.to_dict("records")]


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: '-' for missing, compact numbers."""
    value = _clean(value)
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if value == int(value) and abs(value) >= 100:
            return f"{int(value):,}"
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def summary_text(summary: pd.DataFrame) -> str:
    """The end-of-run table for the terminal."""
    if summary.empty:
        return "no scenario produced a result"
    cols = [c for c, _ in SUMMARY_COLUMNS]
    table = summary[cols].copy()
    table.columns = [label for _, label in SUMMARY_COLUMNS]
    text: str = table.map(fmt).to_string(index=False)
    problems = summary[(summary["status"] != "ok") | ~summary["valid"]]
    notes = []
    for row in records(problems):
        why = row["error"] or row["reasons"] or "invalid"
        notes.append(f"  {label(row['transport'], row['stack'])} {row['scenario']}: {why}")
    if notes:
        text += "\n\nnot trustworthy as is:\n" + "\n".join(notes)
    return text


def _embed(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _standalone(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name in STANDALONE:
        path = run_dir / f"{name}.json"
        if path.exists():
            try:
                data = orjson.loads(path.read_bytes())
            except orjson.JSONDecodeError:
                continue
            if isinstance(data, list):
                out[name] = [{k: v for k, v in d.items() if not isinstance(v, dict | list)}
                             for d in data if isinstance(d, dict)]
    return out


def context(run: RunData) -> dict[str, Any]:
    """Everything the template shows, computed once; also writes the CSVs and PNGs."""
    summary = tables.summary(run)
    cap = tables.capacity(run)
    conn = tables.connections(run)
    for name, df in (("summary", summary), ("capacity", cap), ("connections", conn)):
        df.to_csv(run.path / f"{name}.csv", index=False)
    head = headline.rows(run, summary)
    headline.write_csv(head, run.path / "headline.csv")
    by_stack = stacks.compare(summary, head)
    pngs = plots.render_all(run, summary, cap, conn, run.path / "plots")
    meta = run.meta
    params = meta.get("parameters", {})
    scenarios = list(dict.fromkeys(s["scenario"] for s in run.steps))
    return {
        "meta": meta, "params": params, "run_id": run.path.name,
        "single_node": bool(params.get("single_node")),
        "summary": records(summary), "scenarios": scenarios,
        "by_scenario": {s: records(summary[summary["scenario"] == s]) for s in scenarios}
        if not summary.empty else {},
        "headline": head, "headline_text": headline.text(head),
        "speed_note": headline.speed_note(head), "knee_cell": headline.knee_cell,
        "row_notes": headline.row_notes, "cell": headline.cell,
        "capacity_rate": records(cap[cap["ramp"] == "rate"]) if not cap.empty else [],
        "capacity_users": records(cap[cap["ramp"] == "subscribers"]) if not cap.empty else [],
        "capacity_best": tables.capacity_best(cap),
        "connections": records(conn),
        "textbook": [v.to_dict() for v in textbook.check(summary, meta)],
        "judged": textbook.judged_labels(summary),
        "targets": [t.label for t in run.targets()],
        "stack_comparisons": [c.to_dict() for c in by_stack],
        "stacks_text": stacks.text(by_stack),
        "images": {name: _embed(path) for name, path in pngs.items()},
        "png_files": {name: str(path.relative_to(run.path)) for name, path in pngs.items()},
        "problems": run.problems,
        "failed": [r for r in records(summary) if r["status"] != "ok"],
        "standalone": _standalone(run.path),
        "steps": run.steps,
        "fmt": fmt,
        "summary_frame": summary,
    }


def render(run_dir: Path) -> str:
    """Write report.html (+ CSVs, PNGs) for `run_dir`; returns the terminal summary
    (the headline first, the stacks compared when there are two, then one row per target
    and scenario)."""
    run = load_run(run_dir)
    ctx = context(run)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    html = env.get_template("report.html.j2").render(**ctx)
    (run_dir / "report.html").write_text(html, encoding="utf-8")
    parts = [ctx["headline_text"], ctx["stacks_text"], summary_text(ctx["summary_frame"])]
    return "\n\n".join(p for p in parts if p)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtbench report",
                                description="(Re-)render the report of a run directory.",
                                formatter_class=HelpFormatter)
    p.add_argument("run_dir", type=Path,
                   help="a run directory (results/<run-id>/): its tables, plots and "
                        "report.html are written anew")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    try:
        if (args.run_dir / "meta.json").is_file() \
                and load_meta(args.run_dir).get("kind") == "profiles":
            from bench.report import profiles  # rtbench run --net A,B: each sub-run, then all

            for _, sub in profiles.sub_runs(args.run_dir):
                render(sub)
            text = profiles.render(args.run_dir)
        else:
            text = render(args.run_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"rtbench report: {exc}", file=sys.stderr)
        return 2
    print(text)
    print(f"\nreport: {args.run_dir / 'report.html'}")
    return 0
