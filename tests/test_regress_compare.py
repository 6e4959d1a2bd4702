"""rtbench compare/regress: exit codes, thresholds from pyproject, the golden Markdown summary."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.harness.plan import TRANSPORTS
from bench.regress import check
from bench.regress.baseline import parser as baseline_parser
from bench.regress.check import baseline_revision, evaluate, parser, to_set
from bench.regress.check import main as regress_main
from bench.regress.compare import (
    HarnessError,
    compare_sets,
    load_set,
    load_thresholds,
    main,
    markdown,
    samples_doc,
)
from bench.regress.samples import Plan, Side, machine_meta, plan_from_args
from bench.regress.stats import overall


def write_set(path: Path, cpu: list[float], lost: int = 0, meta: dict[str, Any] | None = None,
              p50: list[float] | None = None) -> Path:
    p50 = p50 or [5.0 + 0.01 * i for i in range(len(cpu))]
    rows = [{"transport": "ws", "scenario": "fanout",
             "metrics": {"cpu_per_delivery": c, "p50": lat, "lost": lost if i == 0 else 0}}
            for i, (c, lat) in enumerate(zip(cpu, p50, strict=True))]
    path.mkdir(parents=True, exist_ok=True)
    (path / "samples.json").write_bytes(orjson.dumps(samples_doc(meta or {}, rows)))
    return path


BASE = [30.0, 31.0, 29.5, 30.5, 30.2, 29.8]


@pytest.mark.parametrize(("head", "lost", "code"), [
    ([30.1, 30.6, 29.9, 30.3, 29.7, 30.4], 0, 0),  # noise
    ([37.0, 37.5, 36.8, 38.0, 37.2, 36.9], 0, 1),  # +23%
    ([30.1, 30.6, 29.9, 30.3, 29.7, 30.4], 3, 1),  # lost messages
    ([30.0, 60.0, 15.0], 0, 2),  # wild spread
    ([24.0, 24.5, 23.8, 24.2, 24.1, 23.9], 0, 0),  # improvement still passes
])
def test_compare_exit_codes(tmp_path: Path, head: list[float], lost: int, code: int,
                            capsys: pytest.CaptureFixture[str]) -> None:
    base = write_set(tmp_path / "base", BASE)
    h = write_set(tmp_path / "head", head, lost)
    out = tmp_path / "v.json"
    assert main([str(base), str(h), "--json", str(out), "--config", str(tmp_path / "none")]) \
        == code
    doc = orjson.loads(out.read_bytes())
    assert doc["exit_code"] == code
    html = (tmp_path / "summary.html").read_text()
    assert html.startswith('<section id="regression">') and html.count("<tr>") == 4
    assert (tmp_path / "summary.md").read_text().startswith("## rtbench compare")
    assert "rtbench compare" in capsys.readouterr().out


def test_harness_error_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing"), str(tmp_path / "missing")]) == 3
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "samples.json").write_bytes(b'{"format": "other"}')
    assert main([str(tmp_path / "bad"), str(tmp_path / "bad")]) == 3
    assert regress_main(["--samples", "2", "--json", str(tmp_path / "r.json")]) == 3
    assert "--samples must be at least 6" in capsys.readouterr().err
    assert regress_main(["--transports", "ws,mqtt", "--json", str(tmp_path / "r.json")]) == 3
    assert "unknown mqtt" in capsys.readouterr().err


def test_pairs_is_a_deprecated_spelling_of_samples(capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(["--pairs", "12"])
    assert args.samples == 12
    assert "--pairs is deprecated, use --samples" in capsys.readouterr().err
    assert "--pairs" not in parser().format_help()
    assert parser().parse_args([]).samples == Plan().samples


def test_regress_and_baseline_cover_every_transport_by_default() -> None:
    assert plan_from_args(parser().parse_args([])).transports == TRANSPORTS
    assert plan_from_args(baseline_parser().parse_args(["update"])).transports == TRANSPORTS
    assert plan_from_args(parser().parse_args(["--transports", "grpc,ws"])).transports \
        == ("grpc", "ws")


def test_stored_baseline_must_hold_every_transport_checked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    # recorded here, for ws only, by a machine 1000x faster (so a matching check stops there)
    meta = {**machine_meta(Plan(("ws",))), "calibration_s": [1e-5, 1e-5]}
    base = write_set(tmp_path / "baseline", BASE, meta=meta)
    out = tmp_path / "v.json"
    assert regress_main(["--baseline", str(base), "--json", str(out), "--stored"]) == 2
    note = orjson.loads(out.read_bytes())["notes"][0]
    assert "no samples for sse, longpoll, grpc" in note and "--transports ws" in note
    cpus = os.sched_getaffinity(0)
    try:  # a subset it holds is compared (and stops at the machine's speed)
        assert regress_main(["--baseline", str(base), "--json", str(out), "--stored",
                             "--transports", "ws"]) == 2
    finally:
        os.sched_setaffinity(0, cpus)
    assert "calibration loop" in orjson.loads(out.read_bytes())["notes"][0]


def test_regress_against_foreign_baseline_is_inconclusive(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    base = write_set(tmp_path / "baseline", BASE, meta={"cpu_model": "some other CPU", "cores": 1})
    out = tmp_path / "v.json"
    assert regress_main(["--baseline", str(base), "--json", str(out), "--stored"]) == 2
    assert "differs from this machine" in orjson.loads(out.read_bytes())["notes"][0]


def test_thresholds_from_pyproject(tmp_path: Path) -> None:
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text("[tool.rtbench.regress]\ncpu_per_delivery = 0.30\n"
                   "[tool.rtbench.regress.sse]\ncpu_per_delivery = 0.05\n")
    conf = load_thresholds(cfg)
    base = load_set(write_set(tmp_path / "b", BASE))
    head = load_set(write_set(tmp_path / "h", [37.0, 37.5, 36.8, 38.0, 37.2, 36.9]))
    assert overall(compare_sets(base, head, conf)) == "pass"  # +23% < 30%
    assert overall(compare_sets(base, head, {})) == "regression"
    cfg.write_text("[tool.rtbench.regress]\nnot_a_metric = 1\n")
    with pytest.raises(HarnessError, match="not_a_metric"):
        load_thresholds(cfg)


GOLDEN = """\
## rtbench compare: **REGRESSION**

- a note

| transport | scenario | metric | base | head | change | 95% CI | p | verdict |
|---|---|---|---:|---:|---:|---|---:|---|
| ws | fanout | cpu_per_delivery | 30.1 | 37.1 | +23.3% | +20.8% … +26.0% | 0.002 | ❌ regression |
| ws | fanout | lost | 0 | 0 | - | - | - | ✅ pass |
| ws | fanout | p50 | 5.025 | 3.525 | -29.9% | -30.3% … -29.4% | 0.002 | 🚀 improvement |

Improvements beyond the threshold: refresh the baseline with `rtbench baseline update`.

Regression = significant (Wilcoxon signed-rank on back-to-back pairs, else Mann-Whitney U) \
AND the change beyond the metric's threshold; inconclusive = the runs cannot tell (a change \
past the threshold without significance, or a CI reaching twice the threshold).
"""


def test_markdown_golden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = load_set(write_set(tmp_path / "b", BASE))
    head = load_set(write_set(tmp_path / "h", [37.0, 37.5, 36.8, 38.0, 37.2, 36.9],
                              p50=[3.5 + 0.01 * i for i in range(6)]))
    comps = compare_sets(base, head)
    md = markdown(comps, overall(comps), "rtbench compare", ["a note"])
    assert md == GOLDEN
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert main([str(tmp_path / "b"), str(tmp_path / "h"), "--config", str(tmp_path / "x")]) == 1
    assert "**REGRESSION**" in summary.read_text()


def test_paired_sets_keep_pairs_aligned_across_a_missing_value(tmp_path: Path) -> None:
    # one base sample lost its CPU figure: that pair goes, the others stay matched
    base = [30.0, float("nan"), 29.5, 30.5, 30.2, 29.8, 30.1, 30.3]
    head = [36.0, 1.0, 35.4, 36.6, 36.2, 35.8, 36.1, 36.4]
    b = load_set(write_set(tmp_path / "b", base))
    h = load_set(write_set(tmp_path / "h", head))
    (cpu,) = [c for c in compare_sets(b, h, paired=True) if c.metric == "cpu_per_delivery"]
    assert cpu.test == "wilcoxon" and cpu.n_base == cpu.n_head == 7
    assert cpu.verdict == "regression"
    assert cpu.ratio is not None and cpu.ratio == pytest.approx(1.2, abs=0.01)


def test_regress_against_a_slower_machines_baseline_is_inconclusive(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    cpus = os.sched_getaffinity(0)
    # same CPU model, cores and parameters, but a calibration loop 1000x faster
    meta = {**machine_meta(Plan()), "calibration_s": [1e-5, 1e-5]}
    base = write_set(tmp_path / "baseline", BASE, meta=meta)
    out = tmp_path / "v.json"
    try:
        assert regress_main(["--baseline", str(base), "--json", str(out), "--stored"]) == 2
    finally:
        os.sched_setaffinity(0, cpus)  # the check pins this process to the load core
    assert "calibration loop" in orjson.loads(out.read_bytes())["notes"][0]


def _round(base_cpu: list[float], head_cpu: list[float], cal: list[float]) -> dict[str, Any]:
    def rows(cpu: list[float]) -> list[dict[str, Any]]:
        return [{"transport": "ws", "scenario": "fanout",
                 "metrics": {"cpu_per_delivery": c, "lost": 0}} for c in cpu]
    return {"calibration_s": cal, "samples": {"base": rows(base_cpu), "head": rows(head_cpu)}}


def test_rounds_pool_their_pairs_and_drift_only_notes_when_paired() -> None:
    base = [30.0, 33.0, 29.0, 35.0, 31.0, 30.5, 34.0, 29.5]
    noisy = [b * f for b, f in zip(base, [1.3, 0.95, 1.25, 1.0, 1.28, 0.97, 1.22, 1.02],
                                   strict=True)]
    one = _round(base, noisy, [0.040, 0.041])
    verdict, comps, notes = evaluate([one], {}, None, {})
    assert verdict == "inconclusive" and not notes  # +12% median, half the pairs at ~+0%
    slow = _round(base, [b * 1.2 for b in base], [0.040, 0.056])  # a 40% calibration drift
    verdict, comps, notes = evaluate([one, slow], {}, None, {})
    (cpu,) = [c for c in comps if c.metric == "cpu_per_delivery"]
    assert cpu.n_base == 16 and verdict == "regression"
    assert "judged anyway" in notes[0]
    # the same drift against a stored baseline (unpaired) makes the check inconclusive
    stored = to_set(one["samples"]["base"] * 2, {})
    v, _, notes = evaluate([_round([], [b * 1.02 for b in base] * 2, [0.040, 0.056])], {},
                           stored, {})
    assert v == "inconclusive" and "too unstable" in notes[0]


def test_a_clean_baseline_names_the_revision_to_measure_alongside(tmp_path: Path) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    clean = write_set(tmp_path / "clean", BASE, meta={"git": {"revision": head, "dirty": False}})
    assert baseline_revision(clean) == head
    dirty = write_set(tmp_path / "dirty", BASE, meta={"git": {"revision": head, "dirty": True}})
    assert baseline_revision(dirty) is None  # the revision is not what was measured
    gone = write_set(tmp_path / "gone", BASE, meta={"git": {"revision": "0" * 40,
                                                            "dirty": False}})
    assert baseline_revision(gone) is None
    assert baseline_revision(tmp_path / "missing") is None


def test_a_second_round_measures_only_the_transports_not_passed(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    steady = [30.0, 31.0, 29.5, 30.5, 30.2, 29.8, 30.1, 30.3]
    measured: list[tuple[str, ...]] = []

    def fake_round(sides: object, plan: Plan) -> dict[str, Any]:
        measured.append(plan.transports)
        slower = {"ws": 1.25, "sse": 1.0}  # ws regressed, sse did not
        def rows(t: str, f: float) -> list[dict[str, Any]]:
            return [{"transport": t, "scenario": "fanout",
                     "metrics": {"cpu_per_delivery": c * f, "lost": 0}} for c in steady]
        return {"calibration_s": [0.040, 0.041],
                "samples": {"base": [r for t in plan.transports for r in rows(t, 1.0)],
                            "head": [r for t in plan.transports for r in rows(t, slower[t])]}}

    monkeypatch.setattr(check, "_round", fake_round)
    verdict, comps, notes, _ = check.run_check(
        Plan(("ws", "sse")), Side("base"), Side("head"), {}, Path("unused"))
    assert measured == [("ws", "sse"), ("ws",)]
    assert "second round of ws" in capsys.readouterr().err
    assert verdict == "regression" and "confirmed" in notes[-1]
    cpu = {c.transport: c for c in comps if c.metric == "cpu_per_delivery"}
    assert cpu["ws"].n_base == 16 and cpu["sse"].n_base == 8  # pooled where measured twice


def test_latency_against_stored_samples_only_warns() -> None:
    def rows(cpu: float, p50: float) -> list[dict[str, Any]]:
        return [{"transport": "ws", "scenario": "fanout",
                 "metrics": {"cpu_per_delivery": cpu + 0.1 * i, "p50": p50 + 0.01 * i}}
                for i in range(10)]
    stored = to_set(rows(30.0, 5.0), {})
    slow_machine = {"calibration_s": [0.040, 0.041], "samples": {"head": rows(30.05, 8.0)}}
    verdict, comps, _ = evaluate([slow_machine], {}, stored, {})
    p50 = next(c for c in comps if c.metric == "p50")
    assert p50.verdict == "warn" and "stored baseline" in p50.note
    assert verdict == "pass"
    paired = {"calibration_s": [0.040, 0.041],
              "samples": {"base": rows(30.0, 5.0), "head": rows(30.05, 8.0)}}
    assert evaluate([paired], {}, None, {})[0] == "regression"  # measured alongside: it counts


def test_a_run_of_two_stacks_keeps_their_samples_apart(tmp_path: Path) -> None:
    from bench.regress.compare import threshold_for
    from tests.test_report import make_run

    s = load_set(make_run(tmp_path, stacks=("starlette", "aiohttp")))
    targets = {t for t, _, _ in s.values}
    assert {"ws", "ws/aiohttp", "sse", "sse/aiohttp", "grpc"} <= targets
    assert "grpc/grpcio" not in targets  # gRPC's only stack is its default
    ws = s.values[("ws", "chat", "cpu_per_delivery")]
    ws_aio = s.values[("ws/aiohttp", "chat", "cpu_per_delivery")]
    assert len(ws) == len(ws_aio) == 1 and ws_aio[0] > ws[0]  # the synthetic aiohttp is slower
    conf = {"ws": {"p50": 0.3}, "p50": 0.1}
    assert threshold_for(conf, "ws/aiohttp", "p50") == 0.3
    assert threshold_for(conf, "sse/aiohttp", "p50") == 0.1
