"""`make demo` end to end, run once for all its checks: it runs, shows the scanner repeat as
ignored (as status counts it), says in which zone its times are, and its venue act admits a
copied ticket once and reports the conflict."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT


@pytest.fixture(scope="module")
def demo() -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.demo"], capture_output=True, text=True,
                          timeout=180, cwd=PROJECT_ROOT, env={"COLUMNS": "120", "PATH": ""})


def test_demo_runs_and_reads_honestly(demo: subprocess.CompletedProcess[str]) -> None:
    out = demo
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stdout + out.stderr
    repeat = [line for line in out.stdout.splitlines() if "NU-VALID-0001" in line
              and "duplicateRead" in line]
    assert repeat and "IGNORE" in repeat[0] and "ignored/duplicateRead" in repeat[0], repeat
    assert "Lanes (times in UTC)" in out.stdout and "scannedOn (UTC)" in out.stdout


def test_demo_shows_refusals_and_the_venue_act(demo: subprocess.CompletedProcess[str]) -> None:
    out = demo
    assert out.returncode == 0, out.stderr[-3000:]
    assert "refunded" in out.stdout and "historicBarcode" in out.stdout
    assert out.stdout.count("ADMIT") >= 6
    # the second act: a venue (issue 14): one admit for a copied ticket, a reported conflict
    assert "admits in the venue: 1" in out.stdout
    assert out.stdout.count("conflicts 1") == 3
