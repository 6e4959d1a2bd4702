"""The `rtbench` command: serve, token, and the benchmark verbs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _token(argv: Sequence[str]) -> int:
    from servers.core.auth import make_token
    from servers.settings import from_env

    p = argparse.ArgumentParser(prog="rtbench token", description="Print a signed token for USER.")
    p.add_argument("user")
    p.add_argument("--ttl", type=float, default=86400.0, help="validity in seconds (default 1 day)")
    p.add_argument("--secret", default=None, help="signing secret (default: RTBENCH_SECRET)")
    args = p.parse_args(argv)
    try:
        print(make_token(args.user, args.secret or from_env().secret, ttl=args.ttl))
    except ValueError as exc:
        print(f"rtbench token: {exc}", file=sys.stderr)
        return 2
    return 0


def _serve(argv: Sequence[str]) -> int:
    from servers.serve import main as serve_main

    return serve_main(argv)


def _run(argv: Sequence[str]) -> int:
    from bench.harness.run import main as run_main

    return run_main(argv)


def _report(argv: Sequence[str]) -> int:
    from bench.report.render import main as report_main

    return report_main(argv)


def _ls(argv: Sequence[str]) -> int:
    from bench.harness.runs import ls_main

    return ls_main(argv)


def _compare(argv: Sequence[str]) -> int:
    from bench.regress.compare import main as compare_main

    return compare_main(argv)


def _regress(argv: Sequence[str]) -> int:
    from bench.regress.check import main as regress_main

    return regress_main(argv)


def _baseline(argv: Sequence[str]) -> int:
    from bench.regress.baseline import main as baseline_main

    return baseline_main(argv)


COMMANDS = {
    "run": (_run, "run the benchmark (--quick, --full, --transports ...) and write the report"),
    "report": (_report, "re-render the report of a run directory"),
    "ls": (_ls, "list benchmark runs under results/"),
    "compare": (_compare, "compare two sets of runs (BASE HEAD): ratio, CI, test, verdict"),
    "regress": (_regress, "CI perf check: base vs head interleaved; exit 0/1/2/3"),
    "baseline": (_baseline, "baseline update: record results/baseline/ for `regress`"),
    "serve": (_serve, "run one server replica (--transport ws|sse|longpoll|grpc)"),
    "token": (_token, "print a signed development token for a user"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: rtbench COMMAND [ARGS]\n\ncommands:")
        for name, (_, doc) in COMMANDS.items():
            print(f"  {name:<10} {doc}")
        return 0 if args else 2
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"rtbench: unknown command {args[0]!r}; try 'rtbench --help'", file=sys.stderr)
        return 2
    return entry[0](args[1:])


if __name__ == "__main__":
    sys.exit(main())
