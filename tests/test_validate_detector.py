"""bench.experiments.validate_detector and bench.experiments.detector: logic on plain records
(no processes, no timing)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.experiments.detector.burner import BURNER_LIFETIME, burner_code, rt_throttle_problem
from bench.experiments.detector.cases import ALL_CASES, CASES, build_cases, trial_counts
from bench.experiments.detector.trials import saturation_excerpt
from bench.experiments.detector.verdicts import (
    all_met,
    judge,
    outcome,
    reason_kind,
    required,
    spread,
    table,
    tally,
)
from bench.experiments.validate_detector import main, parse_args

EXPECT = {"light-pinned": "valid", "starved-burner": "flagged"}
WITH_INFO = {**EXPECT, "shared-core": "none"}
CPU_REASON = "load generator vm/5287 used 97% CPU (limit 90%)"
LAG_REASON = "greenlet canary lag p99 41.3 ms (limit 20 ms)"


def rec(case: str, valid: bool | None, reasons: tuple[str, ...] = (),
        saturated: bool | None = None, canary_p99_us: int | None = None) -> dict[str, Any]:
    r = {"case": case, "valid": valid, "reasons": list(reasons), "saturated": saturated}
    if canary_p99_us is not None:
        r["saturation"] = {"canary_p99_us": canary_p99_us, "cpu_mean": 2.0}
    return r


def hist(p99: int, count: int = 100) -> dict[str, Any]:
    return {"unit": "us", "count": count, "percentiles": {"p50": 1, "p99": p99}, "hdr": "HISTxyz"}


def test_required_counts() -> None:
    assert required(20, 0.95) == 19
    assert required(2, 0.95) == 2
    assert required(10, 1.0) == 10
    assert required(40, 0.95) == 38


def test_outcome() -> None:
    assert outcome(True) == "valid"
    assert outcome(False) == "flagged"
    assert outcome(None) == "error"


def test_reason_kind_blanks_numbers() -> None:
    assert reason_kind(CPU_REASON) == "load generator vm/N used N% CPU (limit N%)"
    assert reason_kind(LAG_REASON) == "greenlet canary lag p99 N ms (limit N ms)"
    assert reason_kind(LAG_REASON) == reason_kind("greenlet canary lag p99 22.0 ms (limit 20 ms)")


def test_light_case_passes_at_19_of_20() -> None:
    records = [rec("light-pinned", True)] * 19 + [rec("light-pinned", False, (LAG_REASON,), True)]
    v = judge(tally(records, EXPECT)["light-pinned"])
    assert (v["trials"], v["valid"], v["flagged"], v["required"]) == (20, 19, 1, 19)
    assert v["met"] is True
    assert v["reasons"] == {reason_kind(LAG_REASON): 1}


def test_light_case_fails_at_18_of_20() -> None:
    records = [rec("light-pinned", True)] * 18 + [rec("light-pinned", False, (CPU_REASON,))] * 2
    assert judge(tally(records, EXPECT)["light-pinned"])["met"] is False


def test_errors_count_against_both_kinds() -> None:
    light = [rec("light-pinned", True)] * 19 + [rec("light-pinned", None)]
    starved = [rec("starved-burner", False, (CPU_REASON,), True)] * 9 + [rec("starved-burner",
                                                                              None)]
    t = tally(light + starved, EXPECT)
    assert t["light-pinned"].errors == 1
    assert judge(t["light-pinned"])["met"] is True  # 19 valid of 20 still meets 0.95
    assert t["starved-burner"].errors == 1
    assert judge(t["starved-burner"])["met"] is False  # 9 of 10 flagged


def test_starved_case_needs_every_trial_flagged() -> None:
    flagged = [rec("starved-burner", False, (CPU_REASON, LAG_REASON), True)] * 10
    v = judge(tally(flagged, EXPECT)["starved-burner"])
    assert v["met"] is True
    assert v["saturated"] == 10
    # a reason kind is counted once per trial, however many processes gave it
    assert v["reasons"] == {reason_kind(CPU_REASON): 10, reason_kind(LAG_REASON): 10}
    one_valid = [*flagged[:9], rec("starved-burner", True)]
    assert judge(tally(one_valid, EXPECT)["starved-burner"])["met"] is False


def test_flagged_by_loss_only_is_not_counted_as_saturated() -> None:
    t = tally([rec("starved-burner", False, ("3 of 60 expected deliveries missing",), False)],
              EXPECT)["starved-burner"]
    assert (t.flagged, t.saturated) == (1, 0)


def test_case_without_trials_is_not_met_and_unknown_cases_ignored() -> None:
    t = tally([rec("elsewhere", True)], EXPECT)
    assert list(t) == list(EXPECT)
    verdicts = {name: judge(x) for name, x in t.items()}
    assert verdicts["light-pinned"]["met"] is False
    assert all_met(verdicts) is False
    assert all_met({}) is False


def test_all_met() -> None:
    records = [rec("light-pinned", True)] * 2 + [rec("starved-burner", False, (CPU_REASON,))]
    verdicts = {name: judge(x) for name, x in tally(records, EXPECT).items()}
    assert all_met(verdicts) is True


def test_saturation_excerpt() -> None:
    sat = {"cpu_percent": {"vm/1": {"mean": 35.5, "max": 60.0, "samples": 5},
                           "vm/2": {"mean": 97.0, "max": 99.0, "samples": 5}},
           "canary_lag_us": hist(41_300), "schedule_lag_us": hist(0, count=0),
           "window": {"start_us": 1, "end_us": 2}, "thresholds": {"max_lag_ms": 20.0}}
    ex = saturation_excerpt(sat)
    assert ex["cpu_mean"] == 97.0
    assert ex["canary_p99_us"] == 41_300
    assert ex["schedule_p99_us"] is None  # nothing sampled
    assert ex["window"] == {"start_us": 1, "end_us": 2}
    assert "hdr" not in ex["signals"]["canary_lag_us"]
    assert ex["signals"]["thresholds"] == {"max_lag_ms": 20.0}


def test_saturation_excerpt_tolerates_missing_or_odd_keys() -> None:
    ex = saturation_excerpt({"cpu_percent": [1, 2], "canary_lag_us": "?"})
    assert (ex["cpu_mean"], ex["canary_p99_us"], ex["schedule_p99_us"]) == (None, None, None)
    assert "window" not in ex


def test_table_lists_verdicts_and_reasons() -> None:
    records = [rec("starved-burner", False, (CPU_REASON,), True), rec("starved-burner", True)]
    lines = table({name: judge(x) for name, x in tally(records, EXPECT).items()})
    row = next(line for line in lines if line.startswith("starved-burner"))
    assert row.endswith("FAIL")
    assert "flagged >= 2 of 2" in row
    assert any(line.strip() == f"1 x {reason_kind(CPU_REASON)}" for line in lines)


def test_cases_and_arguments() -> None:
    cases = build_cases(burners=4, overload_users=401, overload_rate=400, overload_seconds=8)
    assert tuple(cases) == ALL_CASES
    assert "shared-core" not in CASES  # informational: only when asked for
    # the starving burner is one SCHED_FIFO loop, whatever --burners says
    assert (cases["starved-burner"].burners, cases["starved-burner"].burner_policy) == (1, "fifo")
    assert cases["starved-burner"].expect == "flagged"
    shared = cases["shared-core"]
    assert (shared.expect, shared.burners, shared.burner_policy) == ("none", 4, "other")
    assert shared.locust_args() == cases["light-pinned"].locust_args()
    assert not cases["light-unpinned"].pin_load and not cases["light-unpinned"].pin_servers
    assert cases["light-pinned"].burners == 0 and cases["starved-overload"].burners == 0
    assert cases["light-pinned"].locust_args()[:6] == ["-u", "6", "-r", "6", "-t", "6s"]
    assert "400" in cases["starved-overload"].locust_args()
    args = parse_args(["--cases", "light-pinned,starved-burner", "--light-trials", "2"])
    assert args.cases == ["light-pinned", "starved-burner"] and args.light_trials == 2
    assert parse_args([]).cases == list(CASES)
    assert parse_args(["--cases", "shared-core,shared-core"]).cases == ["shared-core"]


def test_trial_counts_follow_expectation() -> None:
    cases = build_cases(burners=2, overload_users=401, overload_rate=400, overload_seconds=8)
    counts = trial_counts(list(cases.values()), light=20, starved=10, shared=7)
    assert counts == {"light-pinned": 20, "light-unpinned": 20, "starved-burner": 10,
                      "starved-overload": 10, "shared-core": 7}


@pytest.mark.parametrize(("runtime", "period"), [(950_000, 1_000_000), (500_000, 1_000_000),
                                                 (990_000, 1_000_000)])
def test_rt_throttle_allows_a_throttled_core(runtime: int, period: int) -> None:
    assert rt_throttle_problem({"rt_runtime_us": runtime, "rt_period_us": period}, 1) is None


@pytest.mark.parametrize(("runtime", "period", "words"), [
    (-1, 1_000_000, "disabled"),  # no throttling: the core would hang
    (1_000_000, 1_000_000, "0.0%"),  # RT may take the whole period
    (1_200_000, 1_000_000, "leaves normal tasks"),
    (995_000, 1_000_000, "0.5%"),  # under MIN_OTHERS_SHARE
    (None, 1_000_000, "cannot read"),
    (950_000, None, "cannot read"),
    (950_000, 0, "cannot read"),
])
def test_rt_throttle_refuses_an_unthrottled_core(runtime: int | None, period: int | None,
                                                  words: str) -> None:
    problem = rt_throttle_problem({"rt_runtime_us": runtime, "rt_period_us": period}, 1)
    assert problem is not None
    assert words in problem and "core 1" in problem


def test_burner_code() -> None:
    fifo = burner_code(BURNER_LIFETIME, 1, fifo=True, parent=4321)
    other = burner_code(75, 3, fifo=False, parent=4321)
    compile(fifo, "<burner>", "exec")
    compile(other, "<burner>", "exec")
    assert f"signal.alarm({BURNER_LIFETIME})" in fifo and "signal.alarm(75)" in other
    assert "os.getppid() != 4321" in fifo
    assert "os.sched_getaffinity(0) != {1}" in fifo and "!= {3}" in other
    assert "os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))" in fifo
    assert "if True:" in fifo and "if False:" in other  # SCHED_FIFO only when asked
    # the checks come before the loop: nothing spins unchecked
    assert fifo.index("signal.alarm") < fifo.index("SCHED_FIFO, ") < fifo.index("while True")


def test_tally_keeps_canary_p99s_and_spread() -> None:
    records = [rec("shared-core", True, canary_p99_us=4415), rec("shared-core", True),
               rec("shared-core", False, (LAG_REASON,), True, canary_p99_us=41_300),
               rec("shared-core", True, canary_p99_us=1_000)]
    t = tally(records, WITH_INFO)["shared-core"]
    assert t.canary_p99_us == [4415, 41_300, 1_000]  # the trial without one is left out
    assert spread(t.canary_p99_us) == (1_000, 4415, 41_300)
    assert spread([1.0, 2.0, 4.0, 9.0]) == (1.0, 3.0, 9.0)
    assert spread([]) is None


def test_informational_case_has_no_target() -> None:
    records = [rec("light-pinned", True)] * 2 + [
        rec("starved-burner", False, (LAG_REASON,), True, canary_p99_us=950_000),
        rec("shared-core", True, canary_p99_us=4415),
        rec("shared-core", False, (LAG_REASON,), True, canary_p99_us=41_300)]
    verdicts = {name: judge(x) for name, x in tally(records, WITH_INFO).items()}
    info = verdicts["shared-core"]
    assert (info["met"], info["required"], info["target_ratio"]) == (None, None, None)
    assert (info["valid"], info["flagged"]) == (1, 1)
    assert all_met(verdicts) is True  # a flag in the informational case fails nothing
    assert all_met({"shared-core": info}) is True
    lines = table(verdicts)
    row = next(line for line in lines if line.startswith("shared-core"))
    assert "none (informational)" in row and row.endswith("info")
    assert "    canary p99 ms: min 4.4, median 22.9, max 41.3 (2 trials)" in lines
    assert "    canary p99 ms: min 950.0, median 950.0, max 950.0 (1 trials)" in lines
    # with the starved case failing, the whole is not met
    verdicts["starved-burner"] = judge(tally([rec("starved-burner", True)],
                                             WITH_INFO)["starved-burner"])
    assert all_met(verdicts) is False


def test_skipped_case_is_not_met() -> None:
    why = "RT throttling is disabled (...): a SCHED_FIFO busy loop would hang core 1"
    t = tally([rec("light-pinned", True)], EXPECT)
    verdicts = {"light-pinned": judge(t["light-pinned"]),
                "starved-burner": judge(t["starved-burner"], skipped=why)}
    assert verdicts["starved-burner"]["met"] is False
    assert verdicts["starved-burner"]["skipped"] == why
    # a skipped case never counts as met, whatever trials there are
    flagged = tally([rec("starved-burner", False, (LAG_REASON,), True)] * 10, EXPECT)
    assert judge(flagged["starved-burner"])["met"] is True
    assert judge(flagged["starved-burner"], skipped=why)["met"] is False
    assert verdicts["light-pinned"]["skipped"] is None
    assert all_met(verdicts) is False
    lines = table(verdicts)
    row = next(x for x in lines if x.startswith("starved-burner"))
    assert row.endswith("SKIP") and "flagged (not run)" in row
    assert f"    skipped: {why}" in lines


@pytest.mark.parametrize("argv", [["--cases", "nope"], ["--light-trials", "0"],
                                  ["--shared-trials", "0"], ["--burners", "0"],
                                  ["--transport", "carrier-pigeon"]])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err
