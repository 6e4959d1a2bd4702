"""The report, run directory, textbook verdicts and plan on a synthetic run (no processes)."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import numpy
import orjson
import pandas as pd
import pytest

from bench.harness import plan, runs
from bench.report import headline, plots, render, stacks, tables, textbook
from loadgen import result as result_mod
from loadgen import steps as steps_mod
from loadgen.measure import Histogram

TRANSPORTS = plan.TRANSPORTS
SCENARIOS = plan.SCENARIOS
# median latency (µs) per transport: the textbook's order, gRPC close to WS
BASE_US = {"ws": 1000, "sse": 1500, "longpoll": 4000, "grpc": 1100}
PNG = b"\x89PNG\r\n\x1a\n"
# broadcast rate ramps, per step (delivered/s, p99 µs, server CPU %, CPU µs per delivery):
# ws: the load generator saturates in its last step (load-side limited, no knee);
# sse: the server core reaches the CPU limit (the knee step is the max);
# longpoll: p99 crosses 250 ms (the max is the step before); grpc: a CPU knee in a step
# where the load generator lagged (a knee, but not valid; the max is the step before)
RAMPS = {
    "ws": ((2020.9, 5_819, 5.1, 1.9), (4045.8, 8_791, 9.1, 1.234), (8100.0, 400_000, 30.0, 2.0)),
    "sse": ((2013.3, 16_911, 40.0, 27.36), (4063.1, 24_703, 70.0, 28.42),
            (7608.2, 83_199, 95.0, 19.87)),
    "longpoll": ((1010.0, 23_647, 30.0, 199.0), (2027.7, 106_111, 60.0, 210.58),
                 (3020.0, 300_000, 80.0, 214.83)),
    "grpc": ((2028.2, 15_647, 45.0, 67.16), (4019.9, 14_975, 91.0, 65.92)),
}


def _cpu_knee(transport: str, limit: float = 90.0, slower: float = 1.0) -> str:
    """Where a least-squares line of CPU % on deliveries/s through RAMPS' steps meets `limit`
    (numpy's fit: what loadgen/knee.py should find), as headline.csv writes it."""
    x = [fast / slower for fast, _, _, _ in RAMPS[transport]]
    b, a = numpy.polyfit(x, [cpu for _, _, cpu, _ in RAMPS[transport]], 1)
    return str(round(min((limit - a) / b, max(x))))


def _hist(center_us: int, n: int = 200) -> dict[str, Any]:
    h = Histogram()
    for i in range(n):
        h.record(center_us + (i - n // 2) * center_us // (2 * n))
    return h.to_dict()


def _rate_steps(transport: str, slower: float = 1.0) -> list[dict[str, Any]]:
    """A rate ramp as loadgen/steps.py records it, ended where its own rules end it
    (`slower`: each step carries that much less, each delivery costs that much more)."""
    steps: list[dict[str, Any]] = []
    for k, (fast, p99_us, cpu, cheap) in enumerate(RAMPS[transport]):
        per_s, us = round(fast / slower, 1), round(cheap * slower, 3)
        h = _hist(p99_us // 2)
        h["percentiles"]["p99"] = p99_us
        last = k == len(RAMPS[transport]) - 1
        saturated = last and transport == "ws"
        lagged = last and transport == "grpc"
        lg_reasons = (["load generator vm/1 used 95% CPU (limit 90%)"] if saturated
                      else ["publisher schedule lag p99 25.0 ms (limit 20 ms)"] if lagged
                      else [])
        point: dict[str, Any] = {
            "step": k, "subscribers": 200, "ended_us": 3_000_000 * (k + 1),
            "deliveries": int(per_s * 2), "latency_us": h, "holes": 0,
            "slow_consumer_closes": 0, "connect_failures": 0, "publish_rate": 10.0 * 2**k,
            "offered_per_s": per_s, "measured_s": 2.0, "delivered_per_s": per_s,
            "server_cpu_s": cpu / 50, "server_cpu_us_per_delivery": us,
            "server_cpu_percent": cpu,
            "loadgen": {"valid": not lg_reasons, "reasons": lg_reasons,
                        "cpu_percent": 95.0 if saturated else 40.0}}
        if transport != "sse":  # older results lack these two (a real run of 2026-12-02)
            point.update(server_cpu_source="cores 0", server_process_cpu_percent=cpu - 2)
        steps.append(point)
        why, knee = steps_mod.knee_reason(point, 250.0, 90.0)
        if why is not None:
            point.update(stopped_because=why, knee=knee)
            break
    return steps


def _result(scenario: str, transport: str, *, missing: int = 0,
            reasons: list[str] | None = None, ramp: str = "rate",
            slower: float = 1.0) -> dict[str, Any]:
    lat = _hist(round(BASE_US[transport] * slower)) if scenario != "connections" \
        else Histogram().to_dict()
    received = 0 if scenario == "connections" else 1000
    steps: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    if scenario == "broadcast" and ramp == "subscribers":
        # ws stays under 250 ms up to 100 subscribers, then goes over
        for k, p99_us in enumerate((10_000, 20_000, 300_000)):
            h = _hist(p99_us // 2)
            h["percentiles"]["p99"] = p99_us
            steps.append({"step": k, "subscribers": 50 * (k + 1),
                          "ended_us": 1_000_000 * (k + 2), "deliveries": 500, "latency_us": h,
                          "holes": 0, "slow_consumer_closes": 0, "connect_failures": 0})
    elif scenario == "broadcast":
        steps = _rate_steps(transport, slower)
        extra = {"ramp": steps_mod.ramp_summary(steps)}
    if scenario == "connections":
        extra = {"servers": {f"http://127.0.0.1:{9000 + r}/metrics": {
            "connections_before": 0, "connections_peak": 250, "rss_before_bytes": 40 << 20,
            "rss_at_peak_bytes": (40 << 20) + 250 * 20 * 1024,
            "rss_per_connection_bytes": 20480 + 1024 * r,
            "idle_seconds": 3.0, "idle_cpu_percent": 0.5, "samples": 5} for r in range(2)}}
        if transport == "ws":  # the other transports' results predate connections_stop
            extra["connections_stop"] = {"reason": "server RSS over 60 MB",
                                         "limit_reached": True}
    reasons = reasons or []
    return {
        "format": result_mod.FORMAT, "version": result_mod.VERSION, "scenario": scenario,
        "transport": transport, "started_us": 1_000_000, "ended_us": 6_000_000,
        "duration_s": 5.0, "parameters": {"transport": transport, "p99_limit_ms": 250.0,
                                          "max_server_cpu": 90.0},
        "hosts": [], "processes": [], "latency_us": {"all": lat, "message": lat},
        "latency_by_host_us": {},
        "timings_us": {"connect": _hist(3000, 50), "rejoin": Histogram().to_dict(),
                       "publish_blocked": Histogram().to_dict()},
        "counters": {"received": received, "connects": 500 if scenario == "connections" else 20,
                     "wire_bytes": received * 200},
        "wire_bytes_per_delivery": 200.0 if received else None,
        "delivery": {"published": 100, "expected": received + missing, "delivered": received,
                     "missing": missing, "duplicates": 0, "out_of_order": 0, "unjudged": 0,
                     "unknown_publisher": 0, "windows": 10, "cross_host": False},
        "saturation": {}, "steps": steps, "extra": extra,
        "validity": {"valid": not reasons and not missing, "saturated": bool(reasons),
                     "lost_messages": bool(missing),
                     "reasons": reasons + ([f"{missing} missing"] if missing else []),
                     "warnings": []},
    }


# the aiohttp stack in synthetic runs: this much slower and costlier than starlette
AIOHTTP = 1.5


def make_run(root: Path, *, crashed: tuple[str, str] | None = None,
             invalid: tuple[str, str] | None = None, empty: tuple[str, str] | None = None,
             ramp: str = "rate", stacks: tuple[str, ...] = ("starlette",),
             legacy: bool = False) -> Path:
    """A run directory as `rtbench run` writes it (`legacy`: as run format 2 did, before
    stacks: no `stack` anywhere). crashed/invalid/empty name a (scenario, transport) of the
    first stack."""
    run_dir = runs.make_run_dir(root / "run", "quick")
    steps = plan.build("quick", list(TRANSPORTS), list(SCENARIOS), stacks=stacks)
    params: dict[str, Any] = {
        "profile": "quick", "transports": list(TRANSPORTS), "scenarios": list(SCENARIOS),
        "replicas": 2, "broker": "redis", "single_node": False,
        "scenario_parameters": {s.scenario.name: s.scenario.to_dict() for s in steps}}
    if not legacy:
        params.update(stacks=list(stacks),
                      targets=[t.to_dict() for t in dict.fromkeys(s.target for s in steps)])
    meta = runs.base_meta(run_dir.name, ["--quick"], params)
    meta.update(status="complete", wall_seconds=180.0,
                placement={"servers": [0], "redis": [0], "load_generator": [1]},
                redis={"version": "7.0", "private": True})
    if legacy:
        meta["version"] = 2
    runs.write_json(run_dir / "meta.json", meta)
    for step in steps:
        key = (step.scenario.name, step.transport)
        first = step.stack in (stacks[0], plan.GRPC_STACK)
        slower = AIOHTTP if step.stack == "aiohttp" else 1.0
        rel = f"loadgen/{step.key}.json"
        reasons = ["load generator used 99% CPU"] if key == invalid and first else None
        res = _result(*key, reasons=reasons, ramp=ramp, slower=slower)
        if key == empty and first:  # Locust stopped before its users started
            res["latency_us"]["all"] = Histogram().to_dict()
            res["delivery"].update(expected=0, delivered=0)
        result_mod.write(run_dir / rel, res)
        cpu = {"ws": 0.1, "sse": 0.12, "longpoll": 0.3, "grpc": 0.08}[step.transport] * slower
        record = {"index": step.index, "transport": step.transport,
                  "scenario": step.scenario.name, "status": "ok", "error": None,
                  "parameters": step.scenario.to_dict(), "result_file": rel, "wall_s": 7.0,
                  "cpu_s": {"r0": cpu / 2, "r1": cpu / 2, "redis": 0.01},
                  "rss_max": {"r0": 50 << 20, "r1": 50 << 20},
                  "tcp_peers": {"r0": 10 if step.transport != "longpoll" else 50, "r1": 10},
                  "tcp_passive_opens": 25}
        if step.scenario.name == "broadcast":  # the servers' core speed around the ramp
            record["core_speed_s"] = {"before": 0.05, "after": 0.06 if step.transport == "grpc"
                                      else 0.05}
        if not legacy:
            record["stack"] = step.stack
        if key == crashed and first:
            record.update(status="crashed", error="r1 exited during the scenario",
                          result_file=None)
        runs.append_step(run_dir, record)
    return run_dir


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path)


def test_report_renders_every_transport_and_scenario(run_dir: Path) -> None:
    text = render.render(run_dir)
    html = (run_dir / "report.html").read_text()
    for t in TRANSPORTS:
        assert t in text
        assert f'<td class="l">{t}</td>' in html
        assert f'<td class="l">{plan.default_stack(t)}</td>' in html
    assert "Framework or transport?" not in html + text  # one stack: nothing to compare
    for s in SCENARIOS:
        assert s in text
        assert f"<h3>{s}</h3>" in html
    for name in ("latency", "capacity-knees", "connections", "cost",
                 *(f"cdf_{s}" for s in SCENARIOS if s != "connections")):
        png = run_dir / "plots" / f"{name}.png"
        assert png.read_bytes().startswith(PNG), name
    # a rate ramp is drawn once, in capacity-knees.png: not again per subscriber count
    assert not (run_dir / "plots" / "capacity.png").exists()
    assert html.count("data:image/png;base64,") >= 8  # self-contained
    assert "The textbook, checked" in html
    summary = (run_dir / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + len(TRANSPORTS) * len(SCENARIOS)
    assert summary[0].startswith("transport,stack,scenario,status,")


def test_tables_compute_cost_capacity_and_connections(run_dir: Path) -> None:
    run = runs.load_run(run_dir)
    s = tables.summary(run)
    row = s[(s["transport"] == "longpoll") & (s["scenario"] == "chat")].iloc[0]
    assert row["cpu_ms_per_1k"] == pytest.approx(0.3 * 1e6 / 1000)  # 0.3 CPU-s / 1000 msgs
    assert row["p50_ms"] == pytest.approx(4.0, rel=0.05)
    assert row["wire_bytes_per_msg"] == 200.0
    assert row["tcp_per_client_conn"] == pytest.approx(60 / 20)
    cap = tables.capacity(run)
    assert set(cap["ramp"]) == {"rate"} and tables.capacity_best(cap) == {}
    ws = cap[cap["transport"] == "ws"]  # the step's own rate, not deliveries / wall time
    assert ws["deliveries_per_s"].tolist() == [2020.9, 4045.8, 8100.0]
    assert ws["loadgen_valid"].tolist() == [True, True, False]
    assert ws["stopped_because"].iloc[-1].startswith("load-side limited")
    assert list(cap.columns[:3]) == ["transport", "stack", "ramp"]
    conn = tables.connections(run).set_index("transport")
    assert conn.loc["ws", "held_peak"] == 500
    assert conn.loc["ws", "kb_per_connection"] == pytest.approx(20.0)
    assert conn.loc["ws", "idle_cpu_percent"] == pytest.approx(1.0)


def test_subscriber_ramps_keep_their_own_capacity_curve(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, ramp="subscribers")
    render.render(run_dir)
    cap = tables.capacity(runs.load_run(run_dir))
    assert tables.capacity_best(cap) == {
        plan.label(t, plan.default_stack(t)): 100 for t in TRANSPORTS}
    assert cap[cap["transport"] == "ws"]["deliveries_per_s"].tolist() == [500.0, 500.0, 500.0]
    assert (run_dir / "plots" / "capacity.png").read_bytes().startswith(PNG)
    assert not (run_dir / "plots" / "capacity-knees.png").exists()
    # no rate ramp, no headline numbers: empty cells, never valid
    rows = _headline(run_dir)
    assert all(r["max_deliveries_per_s"] == "" and r["valid"] == "False" for r in rows.values())
    assert rows["ws"]["max_held_connections"] == "500"  # connections still count


def _headline_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "headline.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == headline.COLUMNS
        return list(reader)


def _headline(run_dir: Path) -> dict[str, dict[str, str]]:
    """A one-stack run's headline by transport."""
    rows = _headline_rows(run_dir)
    assert [r["transport"] for r in rows] == list(TRANSPORTS)  # one row each, in order
    assert [r["stack"] for r in rows] == [plan.default_stack(t) for t in TRANSPORTS]
    return {r["transport"]: r for r in rows}


def test_headline_answers_how_far_each_transport_goes(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    text = render.render(run_dir)
    rows = _headline(run_dir)
    # issue 11's columns, `stack` right after `transport`
    assert headline.COLUMNS == (
        "transport", "stack", "max_deliveries_per_s", "knee_reached", "knee_reason",
        "p99_ms_at_knee", "max_held_connections", "kb_per_connection", "cpu_us_per_delivery",
        "valid")
    # a CPU knee: where the CPU line meets the limit; p99 and CPU per delivery of the
    # step nearest it (the knee step)
    assert _cpu_knee("sse") != "7608"  # the line's knee, not the crossing step's load
    assert rows["sse"] == {
        "transport": "sse", "stack": "starlette", "max_deliveries_per_s": _cpu_knee("sse"),
        "knee_reached": "True",
        "knee_reason": "server CPU 95% >= 90%", "p99_ms_at_knee": "83.2",
        "max_held_connections": "500", "kb_per_connection": "20.5",
        "cpu_us_per_delivery": "19.9", "valid": "True"}
    # a p99 knee: the max is the step before it
    lp = rows["longpoll"]
    assert (lp["max_deliveries_per_s"], lp["knee_reached"], lp["p99_ms_at_knee"],
            lp["cpu_us_per_delivery"], lp["valid"]) == ("2028", "True", "106.1", "210.6", "True")
    assert lp["knee_reason"].startswith("p99 300.0 ms > 250")
    # load-side limited: no knee, the last valid step's numbers (3 significant digits)
    ws = rows["ws"]
    assert (ws["max_deliveries_per_s"], ws["knee_reached"], ws["p99_ms_at_knee"],
            ws["cpu_us_per_delivery"], ws["valid"]) == ("4046", "False", "8.79", "1.23", "False")
    assert ws["knee_reason"].startswith("load-side limited: load generator vm/1 used 95% CPU")
    # the server's CPU knee while the load generator lagged: a knee, not valid
    grpc = rows["grpc"]
    assert (grpc["max_deliveries_per_s"], grpc["knee_reached"], grpc["knee_reason"],
            grpc["valid"]) == ("2028", "True", "server CPU 91% >= 90%", "False")
    assert "connections_stop" not in (run_dir / "headline.csv").read_text()

    html = (run_dir / "report.html").read_text()
    first = html.index('<h2 id="headline">How far each transport goes</h2>')
    assert first == html.index("<h2")  # before every other section
    table = html[first:html.index("<h2>", first)]
    assert "servers and Redis on one core" not in table  # placement comes from meta.json
    assert "Redis share core(s)\n0" in table and "core(s) 1" in table
    assert '<span class="warn">load-side limited</span> (no knee)' in table
    assert "connections stopped: server RSS over 60 MB (a limit was reached)" in table
    assert "load generator not valid in step 1: publisher schedule lag p99 25.0 ms" in table
    assert table.count('<tr class="invalid">') == 2  # ws and grpc
    assert table.index("data:image/png;base64,") > table.index("</table>")  # figure below
    assert (run_dir / "plots" / "capacity-knees.png").read_bytes().startswith(PNG)
    # the terminal summary starts with the headline, then the per-scenario table
    assert text.startswith("How far each transport goes")
    assert text.index("load-side limited") < text.index("scenario")
    knee = f"{int(_cpu_knee('sse')):,}"
    assert re.search(rf"^sse +starlette +{knee} +server CPU 95% >= 90% +83\.2 +500 +20\.5 "
                     r"+19\.9 +yes$", text, re.M), text
    assert "ws \u00b7 starlette: connections stopped: server RSS over 60 MB" in text


def test_headline_leaves_cells_empty_for_what_was_not_measured(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, crashed=("broadcast", "sse"), invalid=("connections", "longpoll"))
    text = render.render(run_dir)
    rows = _headline(run_dir)
    sse = rows["sse"]
    assert sse["max_deliveries_per_s"] == sse["knee_reason"] == sse["p99_ms_at_knee"] == ""
    assert sse["max_held_connections"] == "500" and sse["valid"] == "False"
    assert "sse \u00b7 starlette: broadcast crashed: r1 exited during the scenario" in text
    # a knee on a valid ramp, but the connections row is not valid
    lp = rows["longpoll"]
    assert lp["knee_reached"] == "True" and lp["valid"] == "False"
    assert "longpoll \u00b7 starlette: connections invalid: load generator used 99% CPU" in text
    run = runs.load_run(run_dir)
    for row in headline.rows(run, pd.DataFrame()):  # nothing judged valid: nothing valid
        assert row["valid"] is False and "broadcast not measured" in row["notes"]


def test_headline_numbers_round_without_reaching_zero() -> None:
    assert [headline.num(v) for v in (150.655, 18.223, 1.2345, 0.000412, 0, 64687.6)] == [
        150.7, 18.2, 1.23, 0.000412, 0.0, 64687.6]
    assert headline.num(None) is None and headline.num(float("nan")) is None


def test_knee_plot_labels_follow_the_ramp(run_dir: Path) -> None:
    cap = tables.capacity(runs.load_run(run_dir))
    labels = {t: plots._end_label(cap[cap["transport"] == t]) for t in TRANSPORTS}
    assert labels == {"ws": "load-side limited (no knee)",
                      "sse": "knee: server CPU 95% \u2265 90%",
                      "longpoll": "knee: p99 300.0 ms > 250 ms",
                      "grpc": "knee: server CPU 91% \u2265 90%"}
    ok = cap[cap["transport"] == "grpc"]["loadgen_valid"].tolist()
    assert ok == [True, False]  # drawn hollow under its knee star


def test_textbook_verdicts_follow_the_numbers(run_dir: Path) -> None:
    run = runs.load_run(run_dir)
    verdicts = {v.claim: v for v in textbook.check(tables.summary(run), run.meta)}
    lowest = verdicts["WebSocket has the lowest latency"]
    assert lowest.verdict == textbook.CONFIRMED
    assert re.search(r"chat: ws (0\.99\d|1) ms, sse 1\.5\d* ms, longpoll (3\.99|4) ms",
                     lowest.figure), lowest.figure
    assert verdicts["Long polling has higher latency (than SSE and WebSocket)"].verdict \
        == textbook.CONFIRMED
    grpc = verdicts["gRPC (protobuf over HTTP/2) is about 10x faster than JSON over HTTP"]
    assert grpc.verdict == textbook.NOT_CONFIRMED  # 0.3 / 0.08 = 3.75x at most
    assert "3.75x" in grpc.figure
    assert verdicts["SSE reconnects automatically"].verdict == textbook.NOT_MEASURED
    tcp = verdicts["Long polling makes many TCP connects; SSE and WebSocket keep one connection"]
    assert tcp.verdict == textbook.CONFIRMED  # 60 TCP connections for 20 clients vs 20
    assert "longpoll 3" in tcp.figure
    # now make WS slower than SSE in chat: the claim must flip
    s = tables.summary(run)
    s.loc[(s["transport"] == "ws") & (s["scenario"] == "chat"), "p50_ms"] = 9.0
    flipped = {v.claim: v for v in textbook.check(s, run.meta)}
    assert flipped["WebSocket has the lowest latency"].verdict == textbook.NOT_CONFIRMED
    assert "chat" in flipped["WebSocket has the lowest latency"].figure


def test_textbook_on_an_empty_run_says_not_measured() -> None:
    verdicts = textbook.check(pd.DataFrame(), {"parameters": {"broker": "memory"}})
    assert verdicts and all(v.verdict == textbook.NOT_MEASURED for v in verdicts)


def test_invalid_and_crashed_steps_are_shown_next_to_their_numbers(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, crashed=("churn", "sse"), invalid=("chat", "grpc"),
                       empty=("direct", "ws"))
    text = render.render(run_dir)
    assert "ws \u00b7 starlette direct: no delivery latency measured" in text
    html = (run_dir / "report.html").read_text()
    assert "INVALID: load generator used 99% CPU" in html
    assert "crashed: r1 exited during the scenario" in html
    assert "grpc \u00b7 grpcio chat: load generator used 99% CPU" in text
    assert "sse \u00b7 starlette churn: r1 exited during the scenario" in text
    assert html.count('class="invalid"') >= 2


def test_a_step_that_measured_nothing_is_recognised(tmp_path: Path) -> None:
    from bench.harness.step import empty as _empty

    run_dir = make_run(tmp_path, empty=("direct", "ws"))
    steps = {(s["scenario"], s["transport"]): s for s in runs.load_run(run_dir).steps}
    assert {s["stack"] for s in steps.values()} == {"starlette", "grpcio"}
    assert _empty(run_dir, steps[("direct", "ws")]) == "no delivery was judged"
    assert _empty(run_dir, steps[("direct", "sse")]) is None
    assert _empty(run_dir, steps[("connections", "ws")]) is None


def test_report_cli_rerenders_and_refuses_other_dirs(run_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert render.main([str(run_dir)]) == 0
    assert (run_dir / "report.html").exists()
    assert render.main([str(tmp_path / "nothing")]) == 2
    assert "no meta.json" in capsys.readouterr().err


def test_newer_run_format_is_refused(run_dir: Path) -> None:
    meta = orjson.loads((run_dir / "meta.json").read_bytes())
    meta["version"] = runs.VERSION + 1
    runs.write_json(run_dir / "meta.json", meta)
    with pytest.raises(ValueError, match="newer"):
        runs.load_run(run_dir)


def test_ls_lists_runs(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = runs.list_runs(run_dir.parent)
    assert [r["run"] for r in rows] == [run_dir.name]
    assert rows[0]["steps"] == "20/20" and rows[0]["status"] == "complete"
    assert rows[0]["stacks"] == "starlette"
    assert runs.ls_main([str(run_dir.parent)]) == 0
    assert run_dir.name in capsys.readouterr().out
    assert runs.ls_main([str(run_dir / "missing")]) == 0
    assert "no runs" in capsys.readouterr().out


def test_truncated_steps_file_is_reported_not_fatal(run_dir: Path) -> None:
    with open(run_dir / "steps.jsonl", "ab") as f:
        f.write(b'{"index": 99, "transp')
    run = runs.load_run(run_dir)
    assert len(run.steps) == 20
    assert any("unreadable" in p for p in run.problems)


STACK_TARGETS = [("ws", "starlette"), ("ws", "aiohttp"), ("sse", "starlette"),
                 ("sse", "aiohttp"), ("longpoll", "starlette"), ("longpoll", "aiohttp"),
                 ("grpc", "grpcio")]


def test_two_stacks_put_the_stack_in_every_table_and_plot(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, stacks=("starlette", "aiohttp"))
    text = render.render(run_dir)
    with (run_dir / "summary.csv").open(newline="") as f:
        summary = list(csv.DictReader(f))
    assert {(r["transport"], r["stack"]) for r in summary} == set(STACK_TARGETS)
    assert len(summary) == len(STACK_TARGETS) * len(SCENARIOS)
    head = _headline_rows(run_dir)
    assert [(r["transport"], r["stack"]) for r in head] == STACK_TARGETS  # in order
    by = {(r["transport"], r["stack"]): r for r in head}
    # the same ramp 1.5x slower on aiohttp: its own row, its own numbers
    assert by[("sse", "starlette")]["max_deliveries_per_s"] == _cpu_knee("sse")
    assert by[("sse", "aiohttp")]["max_deliveries_per_s"] == _cpu_knee("sse", slower=AIOHTTP)
    for name in ("capacity", "connections"):
        with (run_dir / f"{name}.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0])[:2] == ["transport", "stack"], name
        assert {(r["transport"], r["stack"]) for r in rows} == set(STACK_TARGETS), name
    # every target drawn in the knee figure, labelled `transport · stack`
    cap = tables.capacity(runs.load_run(run_dir))
    fig = plots.knee_figure(cap)
    assert fig is not None
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    plots.plt.close(fig)
    for t, s in STACK_TARGETS:
        assert any(x.startswith(f"{t} \u00b7 {s}: ") for x in legend), (t, s, legend)
    assert "dashed: aiohttp stack" in fig.texts[0].get_text()
    html = (run_dir / "report.html").read_text()
    assert html.count('<td class="l">aiohttp</td>') >= 3 * len(SCENARIOS)
    assert "ws \u00b7 starlette, ws \u00b7 aiohttp" in html  # the targets, in order
    # framework or transport, in the report and on the terminal
    assert '<h2 id="stacks">Framework or transport?</h2>' in html
    assert "Framework or transport?" in text
    assert re.search(r"chat: server CPU-ms / 1000 deliveries +framework up to 1\.50x "
                     r"\(ws: starlette 100, aiohttp 150\), transport up to 3\.00x "
                     r"\(starlette: ws 100 \.\. longpoll 300\)$", text, re.M), text
    assert re.search(r"^ws +aiohttp +2,697 ", text, re.M), text
    assert "ws \u00b7 aiohttp: load-side limited" in text


def test_stack_comparison_leaves_invalid_figures_out() -> None:
    summary = pd.DataFrame([
        {"transport": t, "stack": s, "scenario": "chat", "valid": valid, "p50_ms": p50,
         "cpu_ms_per_1k": 1.0}
        for t, s, valid, p50 in (("ws", "starlette", True, 1.0), ("ws", "aiohttp", True, 1.2),
                                 ("sse", "starlette", True, 3.0), ("sse", "aiohttp", False, 9.0),
                                 ("grpc", "grpcio", True, 0.5))])
    comparisons = {c.figure: c for c in stacks.compare(summary, [])}
    p50 = comparisons["chat: p50 ms"]
    assert p50.framework() == {"ws": pytest.approx(1.2)}  # sse's aiohttp figure is not valid
    assert p50.transport() == {"starlette": pytest.approx(3.0)}
    assert p50.cells("sse") == ["3", "9*"] and "grpc" not in p50.values
    assert comparisons["max deliveries/s (broadcast ramp)"].summary() == \
        "no two valid figures to compare"
    one_stack = summary[summary["stack"] != "aiohttp"]
    assert stacks.compare(one_stack, []) == [] and stacks.text([]) == ""


def test_textbook_judges_transports_on_the_default_stack(tmp_path: Path) -> None:
    run = runs.load_run(make_run(tmp_path, stacks=("starlette", "aiohttp")))
    s = tables.summary(run)
    assert textbook.judged_stacks(s) == {"ws": "starlette", "sse": "starlette",
                                         "longpoll": "starlette", "grpc": "grpcio"}
    # ws on aiohttp is slower than sse on starlette in every scenario: not what is judged
    lowest = {v.claim: v for v in textbook.check(s, run.meta)}[
        "WebSocket has the lowest latency"]
    assert lowest.verdict == textbook.CONFIRMED
    assert lowest.figure.count("ws ") == len(textbook.MESSAGE_SCENARIOS)  # one ws per line
    # a run without the default stack is judged on the one it has
    only = s[s["stack"] != "starlette"]
    assert textbook.judged_labels(only) == ["ws \u00b7 aiohttp", "sse \u00b7 aiohttp",
                                            "longpoll \u00b7 aiohttp", "grpc \u00b7 grpcio"]


def test_a_run_before_stacks_renders_as_the_default_stacks(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, legacy=True)  # run format 2: no stack anywhere
    assert "stack" not in (run_dir / "steps.jsonl").read_text()
    assert render.main([str(run_dir)]) == 0
    rows = _headline(run_dir)  # stacks filled in: starlette, grpcio for gRPC
    assert rows["sse"]["max_deliveries_per_s"] == _cpu_knee("sse")
    with (run_dir / "summary.csv").open(newline="") as f:
        summary = list(csv.DictReader(f))
    assert {(r["transport"], r["stack"]) for r in summary} == {
        (t, plan.default_stack(t)) for t in TRANSPORTS}
    assert [t.label for t in runs.load_run(run_dir).targets()] == [
        "ws \u00b7 starlette", "sse \u00b7 starlette", "longpoll \u00b7 starlette",
        "grpc \u00b7 grpcio"]
    assert runs.list_runs(run_dir.parent)[0]["stacks"] == "starlette"


def test_the_server_core_speed_around_each_ramp_is_reported(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    text = render.render(run_dir)
    head = headline.rows(runs.load_run(run_dir), tables.summary(runs.load_run(run_dir)))
    assert {r["transport"]: r["core_speed_ms"] for r in head}["grpc"] == [50.0, 60.0]
    note = next(line for line in text.splitlines() if line.startswith("Server core speed"))
    assert "grpc \u00b7 grpcio 50 -> 60" in note and "moved 20 % within the run" in note
    html = (run_dir / "report.html").read_text()
    assert '<span class="warn">Server core speed' in html
    # not measured (an unpinned run): nothing said
    assert headline.speed_note([{**r, "core_speed_ms": None} for r in head]) == (None, False)
