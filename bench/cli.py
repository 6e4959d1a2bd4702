"""The `rtbench` command: serve, token, and the benchmark verbs.

Each verb lives in its own module with a `main(argv)`; this one only dispatches, and
holds what every verb's parser shares: help that shows each option's default, and
the deprecated spelling of a renamed option.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already names it or
    there is none to name (a flag, None, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.help == argparse.SUPPRESS or "default" in text.lower():
            return action.help
        if action.nargs == 0 or action.default in (None, [], argparse.SUPPRESS):
            return action.help  # a flag (its dest's default is not its own), or nothing to say
        if not action.option_strings and action.nargs not in ("?", "*"):
            return action.help  # a required positional
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class Deprecated(argparse.Action):
    """An old option name kept working: stores into the new option's dest, says which name
    to use instead on stderr, and stays out of --help (pass help=argparse.SUPPRESS)."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str,
                 **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"{parser.prog}: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _token(argv: Sequence[str]) -> int:
    from servers.core.auth import make_token
    from servers.settings import from_env

    p = argparse.ArgumentParser(prog="rtbench token", description="Print a signed token for USER.",
                                formatter_class=HelpFormatter)
    p.add_argument("user", help="the user id the token names")
    p.add_argument("--ttl", type=float, default=86400.0, metavar="SECONDS",
                   help="validity (86400: one day)")
    p.add_argument("--secret", default=None,
                   help="signing secret (default: RTBENCH_SECRET, else the development secret)")
    args = p.parse_args(argv)
    try:
        print(make_token(args.user, args.secret or from_env().secret, ttl=args.ttl))
    except ValueError as exc:
        print(f"rtbench token: {exc}", file=sys.stderr)
        return 2
    return 0


def _verb(module: str, func: str = "main") -> Callable[[Sequence[str]], int]:
    """The verb's `main`, imported only when it runs (the report pulls in pandas)."""

    def run(argv: Sequence[str]) -> int:
        entry: Callable[[Sequence[str]], int] = getattr(importlib.import_module(module), func)
        return entry(argv)

    return run


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "run": (_verb("bench.harness.run"),
            "run the benchmark (--smoke, --quick, --full; --transports, --stacks ...), write "
            "the report"),
    "report": (_verb("bench.report.render"), "re-render the report of a run directory"),
    "ls": (_verb("bench.harness.runs", "ls_main"), "list benchmark runs under results/"),
    "compare": (_verb("bench.regress.compare"),
                "compare two sets of runs (BASE HEAD): ratio, CI, test, verdict"),
    "regress": (_verb("bench.regress.check"),
                "CI perf check: base vs head interleaved, every transport; exit 0/1/2/3"),
    "baseline": (_verb("bench.regress.baseline"),
                 "baseline update: record results/baseline/ for `regress`"),
    "serve": (_verb("servers.serve"), "run one server replica (--transport ws|sse|longpoll|grpc)"),
    "token": (_token, "print a signed development token for a user"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: rtbench COMMAND [ARGS]   (rtbench COMMAND --help: its options)\n\n"
              "commands:")
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
