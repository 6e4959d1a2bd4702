"""`rtbench run`: every scenario against every target, then the report.

A target is a transport on one server stack (bench.harness.plan): `--stacks
starlette,aiohttp` runs ws, sse and longpoll on both, gRPC once. The processes
and the loop over the steps are bench.harness.harness; one step (Locust against
a cluster) is bench.harness.step. This module is the command: its options, the
run directory's metadata, signals, the exit code and the report at the end.

SIGTERM and SIGHUP are turned into an exception so the cleanup runs, and further
signals are ignored while cleaning up. The harness never imports Locust (gevent
would patch asyncio).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.cli import HelpFormatter
from bench.harness import plan as plan_mod
from bench.harness import runs
from bench.harness.cluster import SERVER_CPU, load_cpus, pin_self
from bench.harness.harness import Harness
from bench.harness.procs import Interrupted, signals_raise
from bench.harness.progress import Progress
from servers.testing import REDIS_HINT, MissingRedis

EXIT_INTERRUPTED = 130


def _minutes(profile: str, stacks: Sequence[str]) -> str:
    """A profile's expected length with every transport and scenario (plan.eta_seconds)."""
    steps = plan_mod.build(profile, plan_mod.TRANSPORTS, plan_mod.SCENARIOS, stacks=stacks)
    return f"{plan_mod.eta_seconds(steps) / 60:.0f}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rtbench run", formatter_class=HelpFormatter,
        description="Run every scenario against every target (a transport on a server "
                    "stack) and write the report.")
    one, every = [plan_mod.DEFAULT_STACK], plan_mod.STACKS
    size = p.add_argument_group("profile (one of)").add_mutually_exclusive_group()
    size.add_argument("--quick", dest="profile", action="store_const", const="quick",
                      help=f"(the default) about {_minutes('quick', one)} minutes on a 2-core "
                           f"machine, {_minutes('quick', every)} with --stacks all")
    size.add_argument("--full", dest="profile", action="store_const", const="full",
                      help=f"about {_minutes('full', one)} minutes ({_minutes('full', every)} "
                           "with --stacks all): larger populations, longer steady states")
    size.add_argument("--smoke", dest="profile", action="store_const", const="smoke",
                      help="a few seconds per scenario: checks that the harness and every "
                           "scenario work (its numbers mean nothing)")
    p.set_defaults(profile="quick")
    p.add_argument("--transports", default="all", metavar="LIST",
                   help=f"comma-separated subset of {','.join(plan_mod.TRANSPORTS)}, or all")
    p.add_argument("--stacks", default=plan_mod.DEFAULT_STACK, metavar="LIST",
                   help=f"server stacks for ws, sse and longpoll: comma-separated subset of "
                        f"{','.join(plan_mod.STACKS)}, or all (each runs every scenario; "
                        f"gRPC runs once, on {plan_mod.GRPC_STACK})")
    p.add_argument("--scenarios", default="all", metavar="LIST",
                   help=f"comma-separated subset of {','.join(plan_mod.SCENARIOS)}, or all")
    p.add_argument("--replicas", type=int, default=2, help="server replicas per target")
    p.add_argument("--broker", choices=("redis", "memory"), default="redis",
                   help="memory: no Redis, one replica (labelled single-node in the report)")
    p.add_argument("--redis-url", default=None, metavar="URL",
                   help="use this Redis instead of starting a private redis-server")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="seconds per scenario (default: the profile's)")
    p.add_argument("--server-args", default="", metavar="ARGS",
                   help="extra `rtbench serve` flags for every replica, one quoted string "
                        "(default: none)")
    p.add_argument("--tls", action="store_true",
                   help="serve every transport over TLS (wss, https, gRPC over TLS) with a "
                        "throwaway CA and certificate made for the run; every client "
                        "verifies it (docs/tls.md)")
    p.add_argument("--net", default=None, metavar="LIST",
                   help="network profiles, comma-separated (loopback, lan, wan, lossy, a "
                        "[tool.rtbench.net.NAME] of pyproject.toml, or a TOML file): the whole "
                        "plan runs once per profile with the servers and the load generator "
                        "on the two ends of that link, each in DIR/net-NAME/, and DIR's "
                        "report compares them (docs/network.md; every profile but loopback "
                        "needs root) (default: loopback, no sub-runs)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="run directory (default: a new results/<run-id>/)")
    p.add_argument("--no-report", action="store_true",
                   help="skip rendering the report (`rtbench report DIR` renders it later)")
    return p


def _check(args: argparse.Namespace) -> list[plan_mod.Step]:
    if args.replicas < 1:
        raise ValueError("--replicas must be at least 1")
    if args.broker == "memory" and args.replicas != 1:
        # replicas with in-process brokers do not see each other's messages
        args.replicas = 1
    args.server_args = shlex.split(args.server_args)
    transports = plan_mod.parse_list(args.transports, plan_mod.TRANSPORTS)
    scenarios = plan_mod.parse_list(args.scenarios, plan_mod.SCENARIOS)
    args.stacks = plan_mod.parse_list(args.stacks, plan_mod.STACKS)
    steps = plan_mod.build(args.profile, transports, scenarios, args.duration, args.stacks)
    return plan_mod.adapt(steps, tls=args.tls)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        steps = _check(args)
    except ValueError as exc:
        print(f"rtbench run: {exc}", file=sys.stderr)
        return 2
    fresh = args.out is None or not args.out.exists()
    run_dir = runs.make_run_dir(args.out, args.profile)
    targets = list(dict.fromkeys(s.target for s in steps))
    params = {"profile": args.profile, "transports": sorted({s.transport for s in steps},
                                                           key=plan_mod.TRANSPORTS.index),
              "stacks": args.stacks, "targets": [t.to_dict() for t in targets],
              "scenarios": [n for n in plan_mod.SCENARIOS
                            if any(s.scenario.name == n for s in steps)],
              "replicas": args.replicas, "broker": args.broker,
              "single_node": args.broker == "memory" or args.replicas == 1,
              "duration": args.duration, "server_args": args.server_args,
              "redis_url_given": bool(args.redis_url), "tls": args.tls,
              "scenario_parameters": {s.scenario.name: s.scenario.to_dict() for s in steps}}
    if args.net is None:
        code, records = _one_run(args, argv, steps, run_dir, params, None)
        return _finish(args, run_dir, fresh, code, records)
    return _profiles(args, argv, steps, run_dir, params, fresh)


def _profiles(args: argparse.Namespace, argv: list[str], steps: list[plan_mod.Step],
              run_dir: Path, params: dict[str, Any], fresh: bool) -> int:
    """`--net`: the plan once per network profile, each a run of its own in net-NAME/, then
    the comparison across them in run_dir."""
    from bench import ROOT
    from bench.network import Network, NetworkError, get_profiles
    from bench.network.network import check_capable

    try:
        profiles = get_profiles(args.net, ROOT / "pyproject.toml")
        for prof in profiles:
            if not prof.loopback:
                check_capable(prof, "auto")
                if args.redis_url:
                    raise NetworkError(f"--redis-url cannot be used with the network profile "
                                       f"{prof.name!r}: the servers run in a network namespace "
                                       "of their own with a private Redis beside them")
    except NetworkError as exc:
        print(f"rtbench run: {exc}", file=sys.stderr)
        if fresh:
            shutil.rmtree(run_dir, ignore_errors=True)
        return 2
    meta = runs.base_meta(run_dir.name, argv, {**params, "net": [p.name for p in profiles]})
    meta.update(kind="profiles", status="running",
                sub_runs=[f"net-{p.name}" for p in profiles], tls=args.tls)
    runs.write_json(run_dir / "meta.json", meta)
    code, all_records = 0, []
    for prof in profiles:
        sub = run_dir / f"net-{prof.name}"
        print(f"rtbench run: network profile {prof.name} -> {sub}", flush=True)
        try:
            planned = plan_mod.adapt(steps, bandwidth_mbit=prof.bandwidth_mbit)
            with Network(prof, element_cpus=load_cpus()) as net:
                one, records = _one_run(args, argv, planned, sub, {
                    **params, "net": prof.name,
                    "scenario_parameters": {s.scenario.name: s.scenario.to_dict()
                                            for s in planned}}, net)
        except NetworkError as exc:
            print(f"rtbench run: network profile {prof.name}: {exc}", file=sys.stderr)
            one, records = 1, []
        all_records += records
        if not args.no_report and records:
            from bench.report import render

            print(render.render(sub))
        code = max(code, one)
        if one == EXIT_INTERRUPTED:
            break
    meta["status"] = "complete" if code == 0 else "failed" if code != EXIT_INTERRUPTED \
        else "interrupted"
    runs.write_json(run_dir / "meta.json", meta)
    if not args.no_report and all_records:
        from bench.report import profiles as profiles_report

        print(profiles_report.render(run_dir))
        print(f"\nreport: {run_dir / 'report.html'}")
    if code == 0 and any(r["status"] != "ok" for r in all_records):
        code = 1
    return code


def _one_run(args: argparse.Namespace, argv: list[str], steps: list[plan_mod.Step],
             run_dir: Path, params: dict[str, Any], net: Any) -> tuple[int, list[dict[str, Any]]]:
    """The plan against servers started here (in `net`'s server side, Locust in its client
    side, when a network profile is given): run_dir's meta.json and steps; (exit code,
    step records)."""
    runs.make_run_dir(run_dir, str(params["profile"]))
    targets = list(dict.fromkeys(s.target for s in steps))
    meta = runs.base_meta(run_dir.name, argv, params)
    meta["tls"] = args.tls
    progress = Progress([plan_mod.planned_seconds(s) for s in steps])
    harness = Harness(args, run_dir, steps, progress, net=net)
    t0 = time.monotonic()
    code = 0
    print(f"rtbench run: {len(steps)} steps on {len(targets)} targets "
          f"({', '.join(t.label for t in targets)}), about {_eta(steps)} -> {run_dir}",
          flush=True)
    try:
        with signals_raise():
            try:
                if args.tls:
                    harness.make_certs()
                harness.start_redis()
                meta["redis"] = harness.redis_info()
                meta["placement"] = {
                    "servers": [SERVER_CPU], "redis": [SERVER_CPU] if harness.redis else None,
                    "load_generator": harness.load_cpus, "harness": harness.load_cpus,
                    "shared_core": SERVER_CPU in harness.load_cpus}
                if net is not None:
                    meta["network"] = net.describe()
                    meta["placement"]["network_element"] = harness.load_cpus
                runs.write_json(run_dir / "meta.json", meta)
                pin_self(harness.load_cpus)
                harness.run_all()
                meta["status"] = "complete"
            finally:
                harness.cleanup()
    except MissingRedis:
        print(f"rtbench run: {REDIS_HINT}", file=sys.stderr)
        meta["status"], code = "failed", 2
    except (KeyboardInterrupt, Interrupted) as exc:
        progress.close()
        print(f"\nrtbench run: interrupted ({exc or 'SIGINT'}); servers stopped, "
              f"partial results in {run_dir}", file=sys.stderr)
        meta["status"], code = "interrupted", EXIT_INTERRUPTED
    except RuntimeError as exc:
        progress.close()
        print(f"rtbench run: {exc}", file=sys.stderr)
        meta["status"], code = "failed", 1
    progress.close()
    meta["finished_utc"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    meta["wall_seconds"] = round(time.monotonic() - t0, 1)
    if net is not None and net.stats() is not None:
        meta.setdefault("network", {})["element_after"] = net.stats()
    runs.write_json(run_dir / "meta.json", meta)
    return code, harness.records


def _finish(args: argparse.Namespace, run_dir: Path, fresh: bool, code: int,
            records: list[dict[str, Any]]) -> int:
    """A single run's end: no empty run left behind, the report, the exit code."""
    if code == 2 and not records:
        if fresh:  # nothing ran: leave no empty run behind
            shutil.rmtree(run_dir, ignore_errors=True)
        return code
    if not args.no_report and records:
        from bench.report import render

        summary = render.render(run_dir)
        print(summary)
        wall = runs.load_meta(run_dir).get("wall_seconds") or 0
        print(f"\nreport: {run_dir / 'report.html'}  (wall time {wall:.0f}s)")
    if code == 0 and any(r["status"] != "ok" for r in records):
        code = 1
    return code


def _eta(steps: list[plan_mod.Step]) -> str:
    seconds = plan_mod.eta_seconds(steps)
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
