"""Help that reads like git's or systemctl's: every command has a description, examples and its
exit codes; every option says what it does; placeholders are one style (UPPER case)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from agent.cli import build_parser
from tests.conftest import run_cli


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
              ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _commands(sub, (*prefix, name))


def test_every_command_explains_itself() -> None:
    commands = list(_commands(build_parser()))
    assert len(commands) >= 17
    for path, parser in commands:
        assert parser.description, path
        assert "examples:\n  " in (parser.epilog or ""), path
        assert "exit codes:\n  0 " in (parser.epilog or ""), path
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, (path, action.option_strings or action.dest)
            if not action.option_strings:  # a positional: its placeholder in UPPER case
                assert action.metavar and str(action.metavar).isupper(), (path, action.dest)


def test_top_level_help_lists_exit_codes_and_config_sources() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for text in ("exit codes:", "130", "GATE_AGENT_CONFIG", "-c PATH, --config PATH"):
        assert text in out.stdout, text
