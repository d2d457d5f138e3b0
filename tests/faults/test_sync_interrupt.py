"""Ctrl-C during `gate-agent sync`: always the same clean exit (130, one line), never a crash.

The field saw exit 139 (a segmentation fault) about twice in 40 interrupts: on Ctrl-C the pass
was cancelled while a worker thread was still writing a page into SQLite, and the cancelled
coroutine closed that connection under the thread. Interrupting at random moments of a full
resync 50 times must give 130 each time. The 50 runs go as three rows of interrupts side by side
(each row its own store), which keeps the suite's wall time down and loads the machine as a busy
turnstile would.

No wait here is a fixed budget a loaded machine can exhaust: a command may take as long as it
needs to start, and as long as it needs to exit while its store keeps changing (an interrupt that
lands as the last page is written lets the whole sync finish, exit 0); only a command whose store
stops changing for `STALL_S` is a hang. A run that fails is killed with its pipes closed, so it
never poisons the next test in the worker.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.sandbox.harness import Sandbox, start_sandbox_process
from tests.conftest import PROJECT_ROOT
from tests.procs import communicate_while, dir_state, reap

RUNS = 50
ROWS = 3
START_S = 180  # a start-up that slow is not load any more
STALL_S = 120  # this long without a store file changing: the command hangs


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


def _wait_until_started(state: Path, proc: subprocess.Popen[str]) -> None:
    """The command is syncing once its rebuild file `cache.db.new` exists (start-up time varies a
    lot on a loaded machine; a fixed sleep would often interrupt the imports instead)."""
    deadline = time.monotonic() + START_S
    while not (state / "cache.db.new").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "sync never created its cache"
        time.sleep(0.02)


def _interrupt_in_a_row(config: Path, env: dict[str, str], runs: range,
                        seed: int) -> list[tuple[int, int, str]]:
    """Start `sync --full` and Ctrl-C it at a random moment, `runs` times one after another."""
    rng = random.Random(seed)
    seen: list[tuple[int, int, str]] = []
    state = config.parent / "state"  # a store that stops changing: a hang
    for run in runs:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "sync", "--full", "--json", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=PROJECT_ROOT)
        try:
            _wait_until_started(state, proc)
            time.sleep(rng.uniform(0.0, 0.9))  # somewhere in the pages
            proc.send_signal(signal.SIGINT)
            err = communicate_while(proc, lambda: dir_state(state), stall_s=STALL_S,
                                    what="sync after Ctrl-C")[1]
        finally:
            reap(proc)  # a failed run never outlives its row
        seen.append((run, proc.returncode, err))
    return seen


def test_ctrl_c_during_sync_never_crashes(busy_platform: Sandbox, tmp_path: Path) -> None:
    env = {**os.environ, "GATE_AGENT_TOKEN": busy_platform.token}
    configs = []
    for row in range(ROWS):
        (tmp_path / f"row{row}").mkdir()
        configs.append(_config(tmp_path / f"row{row}", busy_platform))
    with ThreadPoolExecutor(ROWS) as pool:
        rows = [pool.submit(_interrupt_in_a_row, configs[row], env, range(row, RUNS, ROWS), row)
                for row in range(ROWS)]
        seen = [result for future in rows for result in future.result()]
    assert len(seen) == RUNS
    for run, returncode, err in seen:
        assert returncode in (0, 130), (run, returncode, err[-2000:])
        assert "Traceback" not in err, (run, err[-2000:])
        if returncode == 130:
            assert "interrupted" in err, err
    codes = [returncode for _run, returncode, _err in seen]
    assert codes.count(130) >= RUNS // 2, codes  # most runs were really cut mid-sync
