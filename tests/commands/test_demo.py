"""`make demo` end to end: it runs, shows the scanner repeat as ignored (as status counts it)
and says in which zone its times are."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import PROJECT_ROOT


def test_demo_runs_and_reads_honestly() -> None:
    out = subprocess.run([sys.executable, "-m", "agent.demo"], capture_output=True, text=True,
                         timeout=120, cwd=PROJECT_ROOT, env={"COLUMNS": "120", "PATH": ""})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stdout + out.stderr
    repeat = [line for line in out.stdout.splitlines() if "NU-VALID-0001" in line
              and "duplicateRead" in line]
    assert repeat and "IGNORE" in repeat[0] and "ignored/duplicateRead" in repeat[0], repeat
    assert "Lanes (times in UTC)" in out.stdout and "scannedOn (UTC)" in out.stdout
