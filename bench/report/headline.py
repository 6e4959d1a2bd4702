"""The report's headline: how far each transport goes on one server core.

One row per target (a transport on one server stack: `ws`, `starlette`), from
two scenarios of a run:
- broadcast, a rate ramp to the servers' knee (loadgen/steps.py): its
  `extra.ramp` gives the most deliveries per second carried (a step that lost
  nothing, kept p99 under the limit and had a valid load generator), whether the
  ramp ended at a knee and why, p99 and server CPU per delivery at that step;
- connections: the connections the replicas held at their peak (their
  /metrics, summed) and resident memory per connection (mean over replicas).

`valid` is true only when both scenarios' rows of the run summary are valid
(bench.report.tables.summary) and the load generator was valid in every ramp step. A
ramp that ended because the load generator saturated says `load-side limited`
and claims no knee.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pandas as pd

from bench.harness.plan import Target, label
from bench.harness.runs import RunData, stack_of

# run format 2's columns, with `stack` (format 3) right after `transport`
COLUMNS = ("transport", "stack", "max_deliveries_per_s", "knee_reached", "knee_reason",
           "p99_ms_at_knee", "max_held_connections", "kb_per_connection", "cpu_us_per_delivery",
           "valid")
LABELS = {"transport": "transport", "stack": "stack", "max_deliveries_per_s": "max deliveries/s",
          "knee": "knee", "p99_ms_at_knee": "p99 ms", "max_held_connections": "held conns",
          "kb_per_connection": "KiB/conn", "cpu_us_per_delivery": "CPU-us/delivery",
          "valid": "valid"}
LOAD_SIDE = "load-side limited"


def num(value: Any) -> float | None:
    """3 significant digits, at least 1 decimal: never 0 for a value that is not 0."""
    if value is None or isinstance(value, bool):
        return None
    v = float(value)
    if math.isnan(v):
        return None
    if v == 0:
        return 0.0
    return round(v, max(1, 2 - math.floor(math.log10(abs(v)))))


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    v = float(value)
    return None if math.isnan(v) else round(v)


def _scenario_valid(summary: pd.DataFrame, scenario: str, target: Target,
                    ) -> tuple[bool, str | None]:
    """(valid, why not) of one row of the run summary, as bench.report.tables decides it."""
    if summary.empty or "scenario" not in summary:
        return False, f"{scenario} not measured"
    hit = summary[(summary["scenario"] == scenario) & (summary["transport"] == target.transport)
                  & (summary["stack"] == target.stack)]
    if hit.empty:
        return False, f"{scenario} not measured"
    row = hit.iloc[0]
    if bool(row["valid"]):
        return True, None
    why = row["error"] if row["status"] != "ok" else row["reasons"]
    return False, f"{scenario} {row['status'] if row['status'] != 'ok' else 'invalid'}: " \
        f"{why or 'invalid'}"


def _broadcast(res: dict[str, Any] | None, row: dict[str, Any], notes: list[str]) -> bool:
    """Fill the ramp's cells; True when the load generator was valid in every step."""
    ramp = (res or {}).get("extra", {}).get("ramp")
    if not isinstance(ramp, dict):
        if res is not None:
            notes.append("broadcast result has no rate ramp (extra.ramp)")
        return False
    reason = str(ramp.get("stopped_because") or "")
    side = bool(ramp.get("load_side_limited")) or reason.startswith(LOAD_SIDE)
    row.update({
        "max_deliveries_per_s": _int(ramp.get("max_deliveries_per_s")),
        "knee_reached": bool(ramp.get("knee_reached")) and not side,
        "knee_reason": reason or None,
        "p99_ms_at_knee": num(ramp.get("p99_ms_at_max")),
        "cpu_us_per_delivery": num(ramp.get("server_cpu_us_per_delivery_at_max")),
        "load_side_limited": side,
        "knee_step": ramp.get("knee_step"), "best_step": ramp.get("best_step"),
    })
    bad = [s for s in (res or {}).get("steps", []) if isinstance(s, dict)
           and not s.get("loadgen", {}).get("valid", True)]
    if bad and not side:  # a load-side stop already says why in knee_reason
        notes.append(f"load generator not valid in step {bad[0].get('step')}: "
                     + "; ".join(bad[0].get("loadgen", {}).get("reasons", [])))
    if row["max_deliveries_per_s"] is None:
        notes.append("no step carried its load within the limits")
    return ramp.get("loadgen_valid") is True


def _connections(res: dict[str, Any] | None, row: dict[str, Any], notes: list[str]) -> None:
    extra = (res or {}).get("extra", {})
    servers = [s for s in (extra.get("servers") or {}).values() if isinstance(s, dict)]
    ok = [s for s in servers if "error" not in s and s.get("connections_peak") is not None]
    errors = [str(s["error"]) for s in servers if "error" in s]
    if errors:
        notes.append(f"/metrics of {len(errors)} replica(s) unreadable: {errors[0]}")
    if ok:
        row["max_held_connections"] = _int(sum(float(s["connections_peak"]) for s in ok))
    per = [float(s["rss_per_connection_bytes"]) for s in ok
           if s.get("rss_per_connection_bytes") is not None]
    if per:
        kb = sum(per) / len(per) / 1024
        row["kb_per_connection"] = round(kb, 1) if abs(kb) >= 0.1 or kb == 0 else num(kb)
    stop = extra.get("connections_stop")
    if isinstance(stop, dict) and stop.get("reason"):
        row["connections_stop"] = str(stop["reason"])
        row["connections_limit_reached"] = bool(stop.get("limit_reached"))


def rows(run: RunData, summary: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per target: COLUMNS, plus `label`, `notes` and ramp details for the HTML."""
    out = []
    for t in run.targets():
        row: dict[str, Any] = dict.fromkeys(COLUMNS)
        row.update(transport=t.transport, stack=t.stack, label=t.label, load_side_limited=None,
                   knee_step=None, best_step=None, connections_stop=None,
                   connections_limit_reached=None)
        notes: list[str] = []
        ramp_valid = _broadcast(run.result("broadcast", t.transport, t.stack), row, notes)
        _connections(run.result("connections", t.transport, t.stack), row, notes)
        b_ok, b_why = _scenario_valid(summary, "broadcast", t)
        c_ok, c_why = _scenario_valid(summary, "connections", t)
        notes += [w for w in (b_why, c_why) if w]
        row["valid"] = b_ok and c_ok and ramp_valid
        row["notes"] = notes
        row["core_speed_ms"] = _core_speed(run, t)
        out.append(row)
    return out


def _core_speed(run: RunData, target: Target) -> list[float] | None:
    """The servers' core speed around the target's ramp (bench.harness.cpu.core_speed): a
    fixed loop's CPU ms before and after it."""
    for rec in run.steps:
        speed = rec.get("core_speed_s")
        if rec.get("scenario") == "broadcast" and rec.get("transport") == target.transport \
                and stack_of(rec) == target.stack and isinstance(speed, dict):
            ms = [round(float(v) * 1000, 1) for v in (speed.get("before"), speed.get("after"))
                  if v is not None]
            return ms or None
    return None


SPEED_MOVED = 10.0  # %: a core speed that moved more within a run is worth a warning


def speed_note(table: list[dict[str, Any]]) -> tuple[str | None, bool]:
    """(one line on the server core's speed around each ramp, whether it moved more than
    SPEED_MOVED % within the run); (None, False) when it was not measured."""
    speeds = [(r, r.get("core_speed_ms")) for r in table]
    known = [(r, v) for r, v in speeds if v]
    if not known:
        return None, False
    values = [x for _, v in known for x in v]
    moved = 100 * (max(values) - min(values)) / min(values)
    parts = ", ".join(f"{label(r['transport'], r['stack'])} {' -> '.join(f'{x:g}' for x in v)}"
                      for r, v in known)
    return (f"Server core speed (a fixed loop's CPU ms, best of 3, before -> after each ramp; "
            f"lower is faster): {parts}; it moved {moved:.0f} % within the run"
            + (": knees measured at different speeds differ by that much for no reason of "
               "their own" if moved > SPEED_MOVED else "")), moved > SPEED_MOVED


def write_csv(table: list[dict[str, Any]], path: Path) -> None:
    """headline.csv: exactly COLUMNS, empty cells for what was not measured."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for row in table:
            w.writerow(["" if row.get(c) is None else row[c] for c in COLUMNS])


def knee_cell(row: dict[str, Any]) -> str:
    """The knee in a few words: its reason, `load-side limited`, or why there is none."""
    if row.get("knee_reason") is None:
        return "-"
    if row.get("load_side_limited"):
        return LOAD_SIDE
    reason = str(row["knee_reason"])
    return reason if row.get("knee_reached") else f"no knee: {reason}"


def cell(value: Any) -> str:
    """A headline cell as text: '-' when not measured, thousands separated."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int | float):
        return f"{value:,}"
    return str(value)


def row_notes(row: dict[str, Any], *, every_stop: bool = True) -> list[str]:
    """What to read next to a row: a load-side stop in full, why it is not valid, and
    why the connections scenario stopped (`every_stop=False`: only when at a limit)."""
    out = [str(row["knee_reason"])] if row.get("load_side_limited") else []
    out += row["notes"]
    stop = row.get("connections_stop")
    if stop and (every_stop or row.get("connections_limit_reached")):
        limit = " (a limit was reached)" if row.get("connections_limit_reached") else ""
        out.append(f"connections stopped: {stop}{limit}")
    return out


def text(table: list[dict[str, Any]]) -> str:
    """The headline for the terminal, notes under the table."""
    if not table:
        return "How far each transport goes: no transport in this run"
    keys = ("transport", "stack", "max_deliveries_per_s", "knee", "p99_ms_at_knee",
            "max_held_connections", "kb_per_connection", "cpu_us_per_delivery", "valid")
    cells = [[knee_cell(r) if k == "knee" else cell(r.get(k)) for k in keys] for r in table]
    widths = [max(len(LABELS[k]), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if i in (0, 1, 3) else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()

    out = ["How far each transport goes on one server core (broadcast rate ramp to the knee; "
           "p99 and CPU of the step nearest the max):", line([LABELS[k] for k in keys])]
    out += [line(c) for c in cells]
    notes = [f"  {label(r['transport'], r['stack'])}: {n}" for r in table
             for n in row_notes(r, every_stop=False)]
    if notes:
        out += ["", *notes]
    speed, _ = speed_note(table)
    if speed:
        out += ["", speed]
    return "\n".join(out)
