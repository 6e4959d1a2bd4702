"""`rtbench compare BASE HEAD`: two sets of repeated runs, per metric a ratio, CI, test, verdict.

BASE and HEAD are each one of:
- a directory of `rtbench run` directories (one sample per run and step),
- one `rtbench run` directory (a single sample: too few for a verdict alone),
- a samples file or a directory holding `samples.json` (what `rtbench regress`
  and `rtbench baseline update` write; format below).

`samples.json` (format "rtbench.samples", version 1)::

    {"format": "rtbench.samples", "version": 1, "meta": {...machine, git...},
     "samples": [{"transport": "ws", "scenario": "fanout",
                  "metrics": {"cpu_per_delivery": 41.2, "p50": 1.3, ...}}, ...]}

Thresholds: defaults in bench.regress.stats.METRICS, overridden in pyproject.toml::

    [tool.rtbench.regress]          # every transport
    p50 = 0.20                      # relative change in the bad direction
    alpha = 0.05                    # significance level (and 1 - the CI's level)
    rule_out = 2.0                  # a pass must exclude rule_out x threshold
    [tool.rtbench.regress.sse]      # one transport
    p50 = 0.30

Exit codes (compare and regress alike): 0 pass, 1 regression, 2 inconclusive,
3 harness error.
"""

from __future__ import annotations

import argparse
import math
import sys
import tomllib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.cli import HelpFormatter
from bench.regress.stats import ALPHA, METRICS, RULE_OUT, Comparison, compare_metric, overall

SAMPLES_FORMAT = "rtbench.samples"
SAMPLES_VERSION = 1
EXIT = {"pass": 0, "regression": 1, "inconclusive": 2, "error": 3}
REFRESH = "rtbench baseline update"

Key = tuple[str, str, str]  # transport, scenario, metric
SETTINGS = ("alpha", "rule_out")  # [tool.rtbench.regress] keys that are not metric thresholds
# summary.csv column -> metric (rtbench run directories)
RUN_COLUMNS = {"deliveries_per_s": "throughput", "cpu_ms_per_1k": "cpu_per_delivery",
               "p50_ms": "p50", "p90_ms": "p90", "p99_ms": "p99", "missing": "lost",
               "duplicates": "duplicates"}


class HarnessError(Exception):
    """The comparison could not be made (unreadable input, bad config): exit code 3."""


@dataclass
class SampleSet:
    values: dict[Key, list[float]] = field(default_factory=lambda: defaultdict(list))
    metas: list[dict[str, Any]] = field(default_factory=list)

    def add(self, transport: str, scenario: str, metrics: dict[str, Any]) -> None:
        """One sample. A missing value is kept as NaN so the i-th values of every
        metric stay the i-th sample's (pairs line up); comparisons drop NaNs."""
        for name, value in metrics.items():
            if name in METRICS:
                self.values[(transport, scenario, name)].append(
                    math.nan if value is None else float(value))


def samples_doc(meta: dict[str, Any], samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"format": SAMPLES_FORMAT, "version": SAMPLES_VERSION, "meta": meta,
            "samples": samples}


def _add_samples_file(s: SampleSet, path: Path) -> None:
    doc = orjson.loads(path.read_bytes())
    if doc.get("format") != SAMPLES_FORMAT or int(doc.get("version", 0)) > SAMPLES_VERSION:
        raise HarnessError(f"{path}: not an rtbench samples file of version <= {SAMPLES_VERSION}")
    s.metas.append(doc.get("meta", {}))
    for row in doc["samples"]:
        s.add(row["transport"], row["scenario"], row["metrics"])


def _add_run(s: SampleSet, run_dir: Path) -> None:
    from bench.harness.runs import load_run
    from bench.report.tables import summary

    run = load_run(run_dir)
    s.metas.append(run.meta)
    for row in summary(run).to_dict("records"):
        if row["status"] != "ok":
            continue
        s.add(target_key(str(row["transport"]), row.get("stack")), str(row["scenario"]),
              {m: row.get(col) for col, m in RUN_COLUMNS.items()})


def target_key(transport: str, stack: Any) -> str:
    """How a run's target is named in a comparison: the transport on its default stack
    (`ws`, as samples files name it), `transport/stack` on another (`ws/aiohttp`), so two
    stacks' samples never pool into one."""
    from bench.harness.plan import default_stack

    if not stack or (isinstance(stack, float) and math.isnan(stack)) \
            or str(stack) == default_stack(transport):
        return transport
    return f"{transport}/{stack}"


def load_set(path: Path) -> SampleSet:
    """Every sample under `path` (see the module doc for what `path` may be)."""
    s = SampleSet()
    try:
        if path.is_file():
            _add_samples_file(s, path)
        elif (path / "samples.json").is_file():
            _add_samples_file(s, path / "samples.json")
        elif (path / "meta.json").is_file():
            _add_run(s, path)
        elif path.is_dir():
            for sub in sorted(p for p in path.iterdir() if p.is_dir()):
                if (sub / "meta.json").is_file():
                    _add_run(s, sub)
                elif (sub / "samples.json").is_file():
                    _add_samples_file(s, sub / "samples.json")
        else:
            raise HarnessError(f"{path}: no such file or directory")
    except (OSError, ValueError, KeyError) as exc:
        raise HarnessError(f"{path}: {exc}") from exc
    if not any(not math.isnan(v) for vs in s.values.values() for v in vs):
        raise HarnessError(f"{path}: no runs or samples found")
    return s


def load_thresholds(pyproject: Path | None) -> dict[str, Any]:
    """`[tool.rtbench.regress]` of `pyproject` ({} when there is none)."""
    if pyproject is None or not pyproject.is_file():
        return {}
    try:
        doc = tomllib.loads(pyproject.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise HarnessError(f"{pyproject}: {exc}") from exc
    conf: dict[str, Any] = doc.get("tool", {}).get("rtbench", {}).get("regress", {})
    for key, value in conf.items():
        ok = (isinstance(value, dict) and all(k in METRICS and isinstance(v, int | float)
                                              for k, v in value.items())) \
            or (key in (*METRICS, *SETTINGS) and isinstance(value, int | float))
        if not ok:
            raise HarnessError(f"{pyproject}: [tool.rtbench.regress] {key} = {value!r}: expected "
                               f"a number for one of {', '.join((*METRICS, *SETTINGS))}, "
                               "or a table per transport")
    return conf


def threshold_for(conf: dict[str, Any], transport: str, metric: str) -> float:
    """`[tool.rtbench.regress.<transport>]`, then the table of the transport a
    `transport/stack` key runs, then `[tool.rtbench.regress]`, then the default."""
    per = conf.get(transport)
    if per is None and "/" in transport:
        per = conf.get(transport.split("/", 1)[0])
    if isinstance(per, dict) and metric in per:
        return float(per[metric])
    return float(conf.get(metric, METRICS[metric].threshold))


def _clean(base: list[float], head: list[float], paired: bool) -> tuple[list[float],
                                                                       list[float]]:
    if paired:
        pairs = [(b, h) for b, h in zip(base, head, strict=True)
                 if not (math.isnan(b) or math.isnan(h))]
        return [b for b, _ in pairs], [h for _, h in pairs]
    return [b for b in base if not math.isnan(b)], [h for h in head if not math.isnan(h)]


def compare_sets(base: SampleSet, head: SampleSet, conf: dict[str, Any] | None = None,
                 paired: bool = False) -> list[Comparison]:
    """Per shared (transport, scenario, metric) a verdict. `paired`: the i-th samples of
    base and head were measured back to back (`rtbench regress`); needs equal counts."""
    conf = conf or {}
    out = []
    for key in sorted(set(base.values) & set(head.values)):
        transport, scenario, name = key
        pair = paired and len(base.values[key]) == len(head.values[key])
        b, h = _clean(base.values[key], head.values[key], pair)
        if not b and not h:
            continue
        out.append(compare_metric(METRICS[name], b, h,
                                  threshold=threshold_for(conf, transport, name),
                                  transport=transport, scenario=scenario,
                                  alpha=float(conf.get("alpha", ALPHA)),
                                  rule_out=float(conf.get("rule_out", RULE_OUT)), paired=pair))
    return out


def _num(v: float | None, pct: bool = False) -> str:
    if v is None or math.isnan(v):
        return "-"
    return f"{v - 1:+.1%}" if pct else f"{v:.4g}"


ICON = {"regression": "❌ regression", "fail": "❌ fail", "improvement": "🚀 improvement",
        "warn": "⚠️ warn", "inconclusive": "❔ inconclusive", "pass": "✅ pass"}


def markdown(comparisons: Sequence[Comparison], verdict: str, title: str = "rtbench perf check",
             notes: Sequence[str] = ()) -> str:
    """The human summary (also the GitHub step summary)."""
    lines = [f"## {title}: **{verdict.upper()}**", ""]
    lines += [f"- {n}" for n in notes]
    if notes:
        lines.append("")
    lines += ["| transport | scenario | metric | base | head | change | 95% CI | p | verdict |",
              "|---|---|---|---:|---:|---:|---|---:|---|"]
    for c in comparisons:
        ci = "-" if c.ci_low is None else f"{_num(c.ci_low, True)} … {_num(c.ci_high, True)}"
        p = "-" if c.p_value is None else f"{c.p_value:.3f}"
        extra = f" ({c.note})" if c.note else ""
        lines.append(f"| {c.transport} | {c.scenario} | {c.metric} | {_num(c.base)} | "
                     f"{_num(c.head)} | {_num(c.ratio, True)} | {ci} | {p} | "
                     f"{ICON[c.verdict]}{extra} |")
    if any(c.verdict == "improvement" for c in comparisons):
        lines += ["", f"Improvements beyond the threshold: refresh the baseline with `{REFRESH}`."]
    lines += ["", "Regression = significant (Wilcoxon signed-rank on back-to-back pairs, else "
              "Mann-Whitney U) AND the change beyond the metric's threshold; inconclusive = "
              "the runs cannot tell (a change past the threshold without significance, or a CI "
              "reaching twice the threshold)."]
    return "\n".join(lines) + "\n"


def html_section(comparisons: Sequence[Comparison], verdict: str, notes: Sequence[str] = ()) -> str:
    """The same table as an HTML fragment (a report section; written as summary.html)."""
    from html import escape

    head = ("transport", "scenario", "metric", "base", "head", "change", "95% CI", "p", "verdict")
    rows = []
    for c in comparisons:
        ci = "-" if c.ci_low is None else f"{_num(c.ci_low, True)} … {_num(c.ci_high, True)}"
        cells = (c.transport, c.scenario, c.metric, _num(c.base), _num(c.head),
                 _num(c.ratio, True), ci, "-" if c.p_value is None else f"{c.p_value:.3f}",
                 ICON[c.verdict] + (f" ({c.note})" if c.note else ""))
        rows.append("<tr>" + "".join(f"<td>{escape(x)}</td>" for x in cells) + "</tr>")
    refresh = (f"<p>Improvements beyond the threshold: refresh the baseline with "
               f"<code>{REFRESH}</code>.</p>"
               if any(c.verdict == "improvement" for c in comparisons) else "")
    return (f'<section id="regression"><h2>Performance check: {escape(verdict.upper())}</h2>'
            + "".join(f"<p>{escape(n)}</p>" for n in notes)
            + "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
            + "".join(rows) + "</table>" + refresh + "</section>\n")


def verdict_json(comparisons: Sequence[Comparison], verdict: str,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"verdict": verdict, "exit_code": EXIT[verdict],
            "improvements": [f"{c.transport}/{c.scenario}/{c.metric}" for c in comparisons
                             if c.verdict == "improvement"],
            "refresh_baseline": REFRESH, "comparisons": [c.as_dict() for c in comparisons],
            **(extra or {})}


def write_outputs(md: str, doc: dict[str, Any], json_path: Path | None,
                  html: str | None = None) -> None:
    """Markdown to stdout (and $GITHUB_STEP_SUMMARY); JSON verdict, summary.md/.html beside it."""
    import os

    sys.stdout.write(md)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(md)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        (json_path.parent / "summary.md").write_text(md, encoding="utf-8")
        if html is not None:
            (json_path.parent / "summary.html").write_text(html, encoding="utf-8")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtbench compare", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter,
                                epilog="BASE and HEAD: a directory of run directories, one run "
                                       "directory, or a samples.json (or its directory). "
                                       "Exit codes: 0 pass, 1 regression, 2 inconclusive, "
                                       "3 harness error")
    p.add_argument("base", type=Path, help="the runs or samples to compare against")
    p.add_argument("head", type=Path, help="the runs or samples judged")
    p.add_argument("--json", type=Path, metavar="FILE",
                   help="write the JSON verdict here, summary.md and summary.html beside it "
                        "(default: only print the table)")
    p.add_argument("--config", type=Path, default=Path("pyproject.toml"), metavar="FILE",
                   help="pyproject.toml whose [tool.rtbench.regress] sets the thresholds")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    try:
        conf = load_thresholds(args.config)
        comps = compare_sets(load_set(args.base), load_set(args.head), conf)
    except HarnessError as exc:
        print(f"rtbench compare: {exc}", file=sys.stderr)
        return EXIT["error"]
    if not comps:
        print("rtbench compare: BASE and HEAD share no transport/scenario/metric",
              file=sys.stderr)
        return EXIT["error"]
    v = overall(comps)
    write_outputs(markdown(comps, v, "rtbench compare"), verdict_json(comps, v), args.json,
                  html_section(comps, v))
    return EXIT[v]
