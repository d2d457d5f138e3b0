"""Write tests/durations.json from a run's `--durations=0` report: each test file's seconds
(set-up, call and tear-down of its tests, summed), which tests/conftest.py orders the suite by.

    .venv/bin/python -m pytest -q -n 2 -p no:cacheprovider --durations=0 > run.txt
    .venv/bin/python -m tests.record_durations run.txt

Refresh it when files are added or a file's time changes a lot; a file it lacks runs first.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

LINE = re.compile(r"\s*([\d.]+)s (?:call|setup|teardown)\s+(tests/\S+?\.py)::")
OUT = Path(__file__).with_name("durations.json")


def per_file(report: str) -> dict[str, float]:
    seconds: Counter[str] = Counter()
    for line in report.splitlines():
        if m := LINE.match(line):
            seconds[m[2]] += float(m[1])
    return {path: round(s, 1) for path, s in sorted(seconds.items())}


def main(argv: list[str]) -> int:
    (path,) = argv
    found = per_file(Path(path).read_text(encoding="utf-8"))
    if not found:
        print(f"{path}: no --durations=0 lines", file=sys.stderr)
        return 1
    OUT.write_text(json.dumps(found, indent=0) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(found)} files, {sum(found.values()):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
