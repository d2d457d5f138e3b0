"""Sub-commands of `gate-agent`: one module per group, each with `register(subparsers, common)`.

`common` is a parent parser carrying `-c/--config`; pass it as `parents=[common]` to every
sub-command so `--config PATH` works everywhere. `explain()` gives each command what `git help`
and `systemctl --help` give: a description, examples, and its exit codes. `plain()` is how every
command prints text it did not write itself (see there).

Every command module is imported to build the parser, for `--help` and for every command: a
module imports at its top only what `register` needs (argparse, the config, the errors), and
the heavy rest (rich, httpx, asyncio, the stores, the runtime, nats) inside the commands that
use them, so `gate-agent --help`, `status` and `devices list` start fast on a Raspberry Pi.
tests/commands/test_cli_start.py holds the list of what `--help` must not load.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.text import Text

EXIT_GENERAL = ("0 done; 1 failed (the platform, a device); 2 a mistake in the configuration, "
                "the input or the command line; 70 internal error; 130 interrupted")


def explain(parser: argparse.ArgumentParser, description: str, examples: list[str],
            exits: str = EXIT_GENERAL) -> argparse.ArgumentParser:
    """Set a command's description and an epilog of examples and exit codes."""
    parser.description = textwrap.fill(description, 92)
    parser.epilog = ("examples:\n" + "\n".join(f"  {e}" for e in examples) + "\n\nexit codes:\n"
                     + textwrap.fill(exits, 90, initial_indent="  ", subsequent_indent="  "))
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def plain(*parts: str | tuple[str, str]) -> Text:
    """One line (or table cell) for rich that is printed exactly as given.

    Commands print text the agent did not write: a scanned code, an event's or a customer's
    name, the platform's message, a file name, a device's description. Given to rich as a
    string it is read as markup and emoji codes: `Anna [/i] Smith` stops the command with a
    MarkupError (after `scan` journaled the admit, so the steward never sees ADMIT),
    `gate-agent[hid]` loses `[hid]`, `:smile:` becomes a picture. A `Text` is never parsed.
    Parts are plain strings, or (string, style) pairs for the agent's own colours; even a
    part built with an f-string from the agent's own words stays unparsed."""
    from rich.text import Text

    return Text.assemble(*parts)
