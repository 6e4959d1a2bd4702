"""Run directories: layout, metadata (`meta.json`), loading a run back, `rtbench ls`.

Layout of ``results/<run-id>/`` (format history below; bump VERSION when a
reader must know):

  meta.json                 what ran, where, with which versions and parameters
  steps.jsonl               one record per (transport, stack, scenario), appended as each ends
  loadgen/<key>.json        the load generator's result (loadgen.result)
  logs/<key>.log            Locust's output
  metrics/<key>-r<i>-{before,after}.prom   each replica's /metrics
  process_stats.csv         server/Redis CPU seconds and RSS sampled during each scenario
  headline.csv              per target: its knee, held connections, cost
                            (bench/report/headline.py)
  summary.csv, capacity.csv, connections.csv   tables derived for the report
  plots/*.png, report.html  the report (`rtbench report RUN_DIR` re-renders both)

<key> is <scenario>-<transport>, with -<stack> added for a stack other than the
default (bench.harness.plan.Step.key): chat-ws, chat-ws-aiohttp, chat-grpc.

Format history:
  1  first version.
  2  headline.csv; broadcast is a rate ramp to the servers' knee (loadgen result v2).
  3  server stacks: a target is (transport, stack). Step records carry `stack`, meta.json
     parameters `stacks` (asked for) and `targets`; every CSV has a `stack` column after
     `transport`, and the replicas' records their `Server` header. Runs of version <= 2
     ran the default stacks: starlette (uvicorn) for ws, sse and longpoll, grpcio for gRPC.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from bench import ROOT
from bench.cli import HelpFormatter
from bench.harness.plan import Target, default_stack, target_order

FORMAT = "rtbench.run"
VERSION = 3
DEFAULT_ROOT = Path("results")
PACKAGES = ("rtbench", "locust", "starlette", "uvicorn", "sse-starlette", "aiohttp", "websockets",
            "grpcio",
            "protobuf", "redis", "hiredis", "orjson", "gevent", "pandas", "matplotlib", "jinja2",
            "psutil", "hdrhistogram", "uvloop", "httptools")


def new_run_id(profile: str, now: dt.datetime | None = None) -> str:
    return f"{(now or dt.datetime.now(dt.UTC)):%Y%m%d-%H%M%S}-{profile}"


def make_run_dir(out: Path | None, profile: str) -> Path:
    """`out` itself when given, else a new results/<run-id>/ (never an existing one)."""
    if out is not None:
        path = out
    else:
        base = DEFAULT_ROOT / new_run_id(profile)
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
    for sub in ("loadgen", "logs", "metrics", "plots"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------ metadata


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def git_state(*paths: str) -> dict[str, Any]:
    """The checkout's revision, and whether tracked files (under `paths`, relative to the
    repository; all when none) have uncommitted changes: then the revision is not what ran."""
    pathspec = ("--", *paths) if paths else ()
    dirty = _git("status", "--porcelain", "--untracked-files=no", *pathspec)
    return {"revision": _git("rev-parse", "HEAD"), "dirty": bool(dirty)}


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def base_meta(run_id: str, argv: Sequence[str], parameters: dict[str, Any]) -> dict[str, Any]:
    """Everything known before the run starts; the harness adds Redis and placement."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "run_id": run_id,
        "status": "running",
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "finished_utc": None,
        "wall_seconds": None,
        "command": ["rtbench", "run", *argv],
        "git": git_state(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "parameters": parameters,
    }


def write_json(path: Path, data: Any) -> None:
    """Atomic write: a reader (or a crash) never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    tmp.replace(path)


def append_step(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / "steps.jsonl", "ab") as f:
        f.write(orjson.dumps(record) + b"\n")


# ------------------------------------------------------------------- loading


def stack_of(record: dict[str, Any]) -> str:
    """A step record's server stack (a run of format <= 2 ran the default ones)."""
    return str(record.get("stack") or default_stack(str(record["transport"])))


@dataclass
class RunData:
    """A run directory read back: metadata, step records, load-generator results."""

    path: Path
    meta: dict[str, Any]
    steps: list[dict[str, Any]]
    # (scenario, transport, stack) -> the load generator's result
    results: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # unreadable files, said in the report

    def result(self, scenario: str, transport: str, stack: str | None = None,
               ) -> dict[str, Any] | None:
        return self.results.get((scenario, transport, stack or default_stack(transport)))

    def targets(self) -> list[Target]:
        """The run's targets, planned or measured, in the usual order."""
        params = self.meta.get("parameters", {})
        found = {Target(str(t["transport"]), str(t["stack"]))
                 for t in params.get("targets", []) if isinstance(t, dict)}
        if not params.get("targets"):  # format <= 2: transports on their default stacks
            found |= {Target(str(t), default_stack(str(t))) for t in params.get("transports", [])}
        found |= {Target(str(s["transport"]), stack_of(s)) for s in self.steps
                  if "transport" in s}
        return sorted(found, key=lambda t: target_order(t.transport, t.stack))


def load_meta(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no meta.json (not an rtbench run directory)")
    meta: dict[str, Any] = orjson.loads(path.read_bytes())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an rtbench run (format {meta.get('format')!r})")
    if int(meta.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: run format version {meta['version']} is newer than {VERSION}; "
                         "upgrade rtbench to read it")
    return meta


def load_run(run_dir: Path) -> RunData:
    from loadgen import result as result_mod  # no gevent/locust import: safe here

    meta = load_meta(run_dir)
    steps = []
    problems = []
    path = run_dir / "steps.jsonl"
    if path.exists():
        for n, line in enumerate(path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                steps.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                problems.append(f"steps.jsonl line {n} unreadable (run interrupted while writing?)")
    data = RunData(run_dir, meta, steps, problems=problems)
    for step in steps:
        rel = step.get("result_file")
        if not rel:
            continue
        try:
            data.results[(step["scenario"], step["transport"], stack_of(step))] = \
                result_mod.load(run_dir / rel)
        except (OSError, ValueError) as exc:
            problems.append(f"{rel}: {exc}")
    return data


# ------------------------------------------------------------------------ ls


def list_runs(root: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not root.is_dir():
        return rows
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            meta = load_meta(d)
        except (OSError, ValueError):
            continue
        steps = []
        if (d / "steps.jsonl").exists():
            steps = [orjson.loads(x) for x in (d / "steps.jsonl").read_bytes().splitlines()
                     if x.strip()]
        params = meta.get("parameters", {})
        rows.append({
            "run": d.name, "created": meta.get("created_utc", ""),
            "status": meta.get("status", "?"), "profile": params.get("profile", "?"),
            "transports": ",".join(params.get("transports", [])),
            "stacks": ",".join(params.get("stacks") or [default_stack("ws")]),
            "steps": f"{sum(1 for s in steps if s.get('status') == 'ok')}/{len(steps)}",
            "wall": f"{meta['wall_seconds']:.0f}s" if meta.get("wall_seconds") else "-",
            "report": "yes" if (d / "report.html").exists() else "no",
            "path": str(d),
        })
    return rows


def ls_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtbench ls", description="List benchmark runs.",
                                formatter_class=HelpFormatter)
    p.add_argument("root", nargs="?", default=str(DEFAULT_ROOT),
                   help="directory holding run directories (default results/)")
    return p


def ls_main(argv: Sequence[str]) -> int:
    args = ls_parser().parse_args(argv)
    rows = list_runs(Path(args.root))
    if not rows:
        print(f"no runs under {args.root}/ (start one with `rtbench run --quick`)")
        return 0
    cols = ("run", "created", "status", "profile", "transports", "stacks", "steps", "wall",
            "report")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
    return 0
