"""Sub-commands of `gate-agent`: one module per group, each with `register(subparsers, common)`.

`common` is a parent parser carrying `-c/--config`; pass it as `parents=[common]` to every
sub-command so `--config PATH` works everywhere. `explain()` gives each command what `git help`
and `systemctl --help` give: a description, examples, and its exit codes.
"""

from __future__ import annotations

import argparse
import textwrap

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
