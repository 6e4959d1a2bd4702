"""The `rtbench` command: every verb dispatches, every option of every benchmark verb
says what it does and its default (plain calls, no processes)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from bench.cli import COMMANDS, Deprecated, HelpFormatter, main
from bench.harness.run import parser as run_parser
from bench.harness.runs import ls_parser
from bench.regress.baseline import parser as baseline_parser
from bench.regress.check import parser as regress_parser
from bench.regress.compare import parser as compare_parser
from bench.report.render import parser as report_parser

PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "run": run_parser, "report": report_parser, "ls": ls_parser, "compare": compare_parser,
    "regress": regress_parser, "baseline": baseline_parser,
}


def _options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("name", PARSERS)
def test_every_option_has_help_showing_its_default(name: str) -> None:
    p = PARSERS[name]()
    assert p.formatter_class is HelpFormatter
    for action in _options(p):
        if action.help == argparse.SUPPRESS:
            assert isinstance(action, Deprecated), f"{name}: {action.option_strings} hidden"
            continue
        assert action.help, f"rtbench {name} {action.option_strings or action.dest}: no help"
        shown = p._get_formatter()._expand_help(action)  # what --help prints for it
        if action.nargs != 0 and action.default not in (None, [], argparse.SUPPRESS):
            assert "default" in shown.lower(), f"rtbench {name} {action.dest}: default not shown"


def test_help_names_a_default_once() -> None:
    text = " ".join(regress_parser().format_help().split())
    assert "(default: results/baseline)" in text and "(default: ws,sse,longpoll,grpc)" in text
    text = " ".join(run_parser().format_help().split())
    assert "--smoke a few seconds per scenario" in text
    assert "(the default)" in text and "(default: quick)" not in text  # the profile flags
    assert "default: a new results/<run-id>/" in text and "(default: None)" not in text


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)
    assert "--smoke" in out
    assert main([]) == 2
    assert main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("name", [*PARSERS, "token"])
def test_each_verb_answers_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: rtbench {name}")
