"""Comparing repeated runs (bench/experiments/repeatability.py) on synthetic runs."""

from __future__ import annotations

import csv
from pathlib import Path

from bench.experiments import repeatability
from bench.report import render
from tests.test_report import make_run


def _rendered(root: Path) -> Path:
    run_dir = make_run(root)
    render.render(run_dir)
    return run_dir


def _scale_knee(run_dir: Path, transport: str, factor: float) -> None:
    path = run_dir / "headline.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if row["transport"] == transport:
            row["max_deliveries_per_s"] = str(round(float(row["max_deliveries_per_s"]) * factor))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_equal_runs_agree_and_what_fails_is_named(tmp_path: Path) -> None:
    a, b = _rendered(tmp_path / "a"), _rendered(tmp_path / "b")
    doc, problems = repeatability.compare([a, b], 15.0)
    sse = doc["targets"]["sse \u00b7 starlette"]
    assert sse["spread_percent"] == 0.0 and len(sse["knees"]) == 2
    assert sse["runs"][0]["steps"] and sse["runs"][0]["knee_method"] in ("cpu fit", "best step")
    # the synthetic ws ramp is load-side limited: no knee, and the bar says so
    assert any("ws \u00b7 starlette: no knee" in p for p in problems)
    assert not any("sse" in p for p in problems)
    _scale_knee(b, "sse", 1.3)
    doc, problems = repeatability.compare([a, b], 15.0)
    assert doc["targets"]["sse \u00b7 starlette"]["spread_percent"] == 30.0
    assert any(p.startswith("sse \u00b7 starlette: knees") for p in problems)


def test_cli_exit_codes(tmp_path: Path) -> None:
    a = _rendered(tmp_path / "a")
    out = tmp_path / "cmp.json"
    assert repeatability.main([str(a), str(a), "--json", str(out)]) == 1  # ws has no knee
    assert out.read_bytes().startswith(b"[")
