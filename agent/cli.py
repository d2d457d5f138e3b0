"""The `gate-agent` command line: parses arguments, dispatches to `agent/commands/*`.

Each module in `agent.commands` has `register(subparsers)` that adds its sub-commands and sets
`func` on them; new modules are found by name, so adding a command never edits this file. Every
GateAgentError is printed as one clear line (no traceback) with its own exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import traceback
from collections.abc import Sequence

from agent import __version__, commands
from agent.config import DEFAULT_CONFIG_PATH
from agent.errors import GateAgentError, redact

CONFIG_ENV = "GATE_AGENT_CONFIG"

EXIT_CODES = """exit codes:
  0    done (check/scan: every code admitted; status: health pass or warn)
  1    refused or failed (a refused code, a platform error, status: health fail)
  2    a mistake in the configuration, the input or the command line; another daemon runs;
       the running daemon is older than this command (restart it)
  70   internal error (a bug: please report it with the message)
  130  interrupted (Ctrl-C)"""


def build_parser() -> argparse.ArgumentParser:
    default_config = os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH
    parser = argparse.ArgumentParser(
        prog="gate-agent",
        description="Offline-first turnstile agent for Nu Web Group's ticketing platform.",
        epilog=f"examples:\n  gate-agent -c ./config.toml status\n  sudo gate-agent scan "
               f"TICKET123 --lane entry\n\n{EXIT_CODES}\n\nconfiguration: -c/--config PATH "
               f"(before or after the command), else ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gate-agent {__version__}")
    config_help = f"configuration file (default ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH})"
    parser.add_argument("-c", "--config", default=default_config, metavar="PATH",
                        help=config_help)
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given after the command it wins; absent, the value parsed before it stays.
    common.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="PATH",
                        help=config_help)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"agent.commands.{info.name}")
        module.register(subparsers, common)
    return parser


def _not_cancelled_noise(record: logging.LogRecord) -> bool:
    """Ctrl-C cancels a command's HTTP request while its answer is arriving; the HTTP stack
    (anyio's stream protocol) then sets a result on a future the cancel already settled, and
    asyncio logs "Fatal error: protocol.data_received() call failed" with a traceback, after
    the command has stopped cleanly. That one record (an InvalidStateError) is left out; every
    other asyncio error still shows."""
    import asyncio  # loaded already: only asyncio logs here (not at start: it is slow to load)

    exc = record.exc_info[1] if record.exc_info else None
    return not (isinstance(exc, asyncio.InvalidStateError)
                and "data_received() call failed" in str(record.msg))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every way out is an exit code and at most one line (see EXIT_CODES).

    Ctrl-C is caught from the first moment here, while the command modules are still being
    imported too: a technician who presses it early sees "interrupted", not a traceback.
    """
    logging.getLogger("asyncio").addFilter(_not_cancelled_noise)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        result = args.func(args)
    except GateAgentError as exc:
        print(f"gate-agent: error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("gate-agent: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `gate-agent queue --json | head`: the reader left; say nothing more, like git does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception:  # noqa: BLE001 - a bug: show it, but never with a secret in it
        print("gate-agent: internal error (please report it):\n"
              + redact(traceback.format_exc()), file=sys.stderr)
        return 70
    return int(result or 0)
