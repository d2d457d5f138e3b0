"""Ctrl-C during `gate-agent sync`: always the same clean exit (130, one line), never a crash.

The field saw exit 139 (a segmentation fault) about twice in 40 interrupts: on Ctrl-C the pass
was cancelled while a worker thread was still writing a page into SQLite, and the cancelled
coroutine closed that connection under the thread. Interrupting at random moments of a full
resync 50 times in a row must give 130 each time.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sandbox.harness import Sandbox, start_sandbox_process
from tests.conftest import PROJECT_ROOT

RUNS = 50


@pytest.fixture(scope="module")
def busy_platform() -> Iterator[Sandbox]:
    sandbox = start_sandbox_process(tickets=30_000, rpm=100_000)
    yield sandbox
    sandbox.stop()


def _config(root: Path, sandbox: Sandbox) -> Path:
    path = root / "config.toml"
    path.write_text(f"""
[api]
base_url = "{sandbox.url}"
company_id = {sandbox.company_id}
token_file = ""

[store]
dir = "{root / 'state'}"

[[lanes]]
name = "entry"
""")
    return path


def test_ctrl_c_during_sync_never_crashes(busy_platform: Sandbox, tmp_path: Path) -> None:
    config = _config(tmp_path, busy_platform)
    env = {**os.environ, "GATE_AGENT_TOKEN": busy_platform.token}
    rng = random.Random(13)
    seen: list[int] = []
    for run in range(RUNS):
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "sync", "--full", "--json", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=PROJECT_ROOT)
        time.sleep(rng.uniform(0.7, 1.6))  # after start-up, somewhere in the pages
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        seen.append(proc.returncode)
        assert proc.returncode in (0, 130), (run, proc.returncode, err[-2000:])
        assert "Traceback" not in err, (run, err[-2000:])
        if proc.returncode == 130:
            assert "interrupted" in err, err
    assert seen.count(130) >= RUNS // 2, seen  # most runs were really cut mid-sync
