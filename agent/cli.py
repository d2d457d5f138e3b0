"""The `gate-agent` command line: parses arguments, dispatches to `agent/commands/*`.

Each module in `agent.commands` has `register(subparsers)` that adds its sub-commands and sets
`func` on them; new modules are found by name, so adding a command never edits this file. Every
GateAgentError is printed as one clear line (no traceback) with its own exit code.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from collections.abc import Sequence

from agent import __version__, commands
from agent.config import DEFAULT_CONFIG_PATH
from agent.errors import GateAgentError, redact


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gate-agent",
        description="Offline-first turnstile agent for Nu Web Group's ticketing platform.",
    )
    parser.add_argument("--version", action="version", version=f"gate-agent {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", default=DEFAULT_CONFIG_PATH, metavar="PATH",
        help=f"configuration file (default {DEFAULT_CONFIG_PATH})",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"agent.commands.{info.name}")
        module.register(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except GateAgentError as exc:
        print(f"gate-agent: error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:  # noqa: BLE001 - a bug: show it, but never with a secret in it
        print("gate-agent: internal error (please report it):\n"
              + redact(traceback.format_exc()), file=sys.stderr)
        return 70
    return int(result or 0)
