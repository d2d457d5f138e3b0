"""The order the suite runs in: its costliest modules first, so its two workers end together.

Why: pytest-xdist hands tests to whichever worker is free, in collection order. In path order
the venue's and the daemon's long tests came last, and one worker sat idle while the other
finished a 30-60 s storm. Started first, the long modules are spread over both workers while
the many short tests fill the gaps at the end (longest-first scheduling). Small chunks
(`MAX_SCHED_CHUNK`) keep xdist from queuing a worker a long run of tests the other could have
taken.

The costs are measured, not guessed: `module_costs.txt` beside this file, seconds per module
from a `--durations=0` run (refresh with `python -m tests.scheduling < pytest-output.txt`). A
stale or missing entry only costs time: modules it does not list run after the listed ones, in
their usual order. Tests inside a module keep their order, so a module-scoped fixture is still
made once per module. Nothing here decides what runs, only when.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

COSTS_FILE = Path(__file__).with_name("module_costs.txt")
MAX_SCHED_CHUNK = 2
_DURATION = re.compile(r"^\s*([0-9.]+)s\s+(?:call|setup|teardown)\s+(\S+?\.py)::")


def load_costs(path: Path = COSTS_FILE) -> dict[str, float]:
    """`{module path: seconds}` from `path` ("SECONDS PATH" lines, # comments)."""
    costs: dict[str, float] = {}
    if not path.exists():
        return costs
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            seconds, module = line.split()
            costs[module] = float(seconds)
    return costs


def costliest_first(items: list[Any], costs: dict[str, float]) -> None:
    """Sort collected `items` in place: listed modules by cost, descending, then the rest.
    A stable sort: each module's tests, and unlisted modules, keep their order."""
    items.sort(key=lambda item: -costs.get(item.nodeid.split("::", 1)[0], -1.0))


def costs_from_durations(lines: Iterable[str]) -> dict[str, float]:
    """Seconds per module from pytest's `--durations=0` report lines."""
    costs: dict[str, float] = defaultdict(float)
    for line in lines:
        match = _DURATION.match(line)
        if match:
            costs[match.group(2)] += float(match.group(1))
    return dict(costs)


def main() -> None:
    costs = costs_from_durations(sys.stdin)
    if not costs:
        raise SystemExit("no durations on stdin: run pytest with --durations=0")
    lines = ["# Seconds per test module, measured (tests/scheduling.py says why and how).\n"]
    lines += [f"{seconds:.1f} {module}\n" for module, seconds in
              sorted(costs.items(), key=lambda kv: (-kv[1], kv[0])) if seconds >= 1.0]
    COSTS_FILE.write_text("".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
