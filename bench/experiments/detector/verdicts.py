"""Trials counted per case, judged against the targets, and the printed summary."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# share of trials that must come out as expected (issue 11: 19 of 20, 10 of 10);
# a case expecting "none" is informational, without a target
TARGETS = {"valid": 0.95, "flagged": 1.0}

_NUMBER = re.compile(r"(?<!\w)\d+(?:\.\d+)?")  # 97, 41.3, vm/5287; not the 99 of p99


def reason_kind(reason: str) -> str:
    """A reason with its numbers blanked, so reasons of one kind are counted together."""
    return _NUMBER.sub("N", reason)


def outcome(valid: bool | None) -> str:
    """What a trial showed: 'valid', 'flagged', or 'error' (no result to judge)."""
    if valid is None:
        return "error"
    return "valid" if valid else "flagged"


@dataclass(slots=True)
class Tally:
    """Trials of one case, counted by outcome, and the reasons given (by kind)."""

    case: str
    expect: str
    trials: int = 0
    valid: int = 0
    flagged: int = 0
    errors: int = 0
    saturated: int = 0  # flagged with a saturation reason (not only lost messages)
    reasons: Counter[str] = field(default_factory=Counter)
    canary_p99_us: list[int] = field(default_factory=list)  # one per trial that measured it

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = dict(self.reasons.most_common())
        return d


def tally(records: Sequence[Mapping[str, Any]], expect: Mapping[str, str]) -> dict[str, Tally]:
    """Per case (in `expect`'s order, the cases that were to run): counts over `records`."""
    out = {case: Tally(case, exp) for case, exp in expect.items()}
    for r in records:
        t = out.get(r["case"])
        if t is None:
            continue
        t.trials += 1
        kind = outcome(r.get("valid"))
        if kind == "valid":
            t.valid += 1
        elif kind == "flagged":
            t.flagged += 1
            if r.get("saturated"):
                t.saturated += 1
        else:
            t.errors += 1
        # each kind once per trial: the count says in how many trials it came up
        t.reasons.update({reason_kind(x) for x in r.get("reasons") or ()})
        sat = r.get("saturation")
        p99 = sat.get("canary_p99_us") if isinstance(sat, Mapping) else None
        if isinstance(p99, int) and not isinstance(p99, bool):
            t.canary_p99_us.append(p99)
    return out


def spread(values: Sequence[float]) -> tuple[float, float, float] | None:
    """(min, median, max) of `values`; None when there are none."""
    if not values:
        return None
    v = sorted(values)
    mid = len(v) // 2
    median = v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2
    return v[0], median, v[-1]


def required(trials: int, ratio: float) -> int:
    """Trials that must come out as expected: ceil(ratio x trials) (19 of 20 at 0.95)."""
    return math.ceil(round(ratio * trials, 9))  # 0.95 * 20 is not exactly 19 in binary


def judge(t: Tally, targets: Mapping[str, float] = TARGETS,
          skipped: str | None = None) -> dict[str, Any]:
    """The case's tally with its target and whether it was met (no trials: not met).

    A case without a target (expect "none") is informational: `met` is None.
    `skipped` is why the case was not run, if it was not.
    """
    ratio = targets.get(t.expect)
    if ratio is None:
        return {**t.to_dict(), "target_ratio": None, "required": None, "as_expected": None,
                "met": None, "skipped": skipped}
    need = required(t.trials, ratio)
    got = t.valid if t.expect == "valid" else t.flagged
    return {**t.to_dict(), "target_ratio": ratio, "required": need, "as_expected": got,
            "met": skipped is None and t.trials > 0 and got >= need, "skipped": skipped}


def all_met(verdicts: Mapping[str, Mapping[str, Any]]) -> bool:
    """Every case with a target met it (and there was at least one case)."""
    return bool(verdicts) and all(v["met"] is not False for v in verdicts.values())


def table(verdicts: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The printed summary: one row per case, then its reasons with their counts."""
    lines = [f"{'case':<17} {'trials':>6} {'valid':>5} {'flagged':>7} {'(sat)':>5} "
             f"{'errors':>6}  {'expected':<20} result"]
    for name, v in verdicts.items():
        if v["required"] is None:
            expected = "none (informational)"
        elif v.get("skipped"):
            expected = f"{v['expect']} (not run)"
        else:
            expected = f"{v['expect']} >= {v['required']} of {v['trials']}"
        result = ("SKIP" if v.get("skipped") else "info" if v["met"] is None
                  else "PASS" if v["met"] else "FAIL")
        lines.append(f"{name:<17} {v['trials']:>6} {v['valid']:>5} {v['flagged']:>7} "
                     f"{v['saturated']:>5} {v['errors']:>6}  {expected:<20} {result}")
        if v.get("skipped"):
            lines.append(f"    skipped: {v['skipped']}")
        p99 = spread(v.get("canary_p99_us") or [])
        if p99 is not None:
            lines.append(f"    canary p99 ms: min {p99[0] / 1000:.1f}, median "
                         f"{p99[1] / 1000:.1f}, max {p99[2] / 1000:.1f} "
                         f"({len(v['canary_p99_us'])} trials)")
        for reason, count in v["reasons"].items():
            lines.append(f"    {count:>3} x {reason}")
    return lines
