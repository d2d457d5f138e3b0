"""A test whose subprocess helper times out fails alone: the next test in the same worker passes.

Proven on a real inner pytest session (a subprocess, `filterwarnings = error` as here): its first
test starts a child with pipes and gives up waiting for it (TimeoutExpired); its second test does
nothing but collect garbage, where the abandoned `Popen` used to raise ResourceWarning. Without
the `reap_children` fixture the innocent test fails (so the inner session really shows the
cascade); with it, it passes and the child is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.procs import communicate_while, join_while

INNER_TESTS = '''
import gc
import os
import subprocess
import sys
import threading

CHILD = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"


def test_helper_times_out():
    proc = subprocess.Popen([sys.executable, "-c", CHILD, os.environ["CHILD_PID_FILE"]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.communicate(timeout=0.5)


def test_next_in_the_worker():
    gc.collect()
'''

WITH_REAPER = "from tests.conftest import reap_children  # noqa: F401\n"


def _inner_session(root: Path, conftest: str) -> tuple[str, int | None]:
    """Run the two inner tests; returns pytest's output and the child's pid (if it wrote it)."""
    root.mkdir()
    (root / "test_inner.py").write_text(INNER_TESTS)
    (root / "conftest.py").write_text(conftest)
    (root / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    pid_file = root / "child.pid"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         f"--basetemp={root / 'tmp'}", str(root)],
        capture_output=True, text=True, cwd=root, timeout=600,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "CHILD_PID_FILE": str(pid_file)})
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    return done.stdout + done.stderr, pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_timed_out_helper_does_not_fail_the_next_test(tmp_path: Path) -> None:
    without, orphan = _inner_session(tmp_path / "without", "")
    try:
        assert "test_next_in_the_worker" in without and "2 failed" in without, without
        assert "ResourceWarning" in without, without
    finally:
        _kill(orphan)  # nobody killed it in that session: this test does

    with_reaper, child = _inner_session(tmp_path / "with", WITH_REAPER)
    try:
        assert "1 failed, 1 passed" in with_reaper, with_reaper
        assert "FAILED test_inner.py::test_helper_times_out" in with_reaper, with_reaper
        assert child is not None and not _alive(child), "the timed-out child still runs"
    finally:
        _kill(child)


def _kill(pid: int | None) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


WAITS_FOR = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.01)\n" \
            "print('done')"


def _work_done_after_8_polls(finish: Callable[[], object],
                            polls: list[float]) -> Callable[[], int]:
    """A `progress` for the waits: a step of work at each poll (its time kept in `polls`),
    `finish()` after 8 polls (of 0.1 s in the tests: longer than their stall_s)."""
    def progress() -> int:
        polls.append(time.monotonic())
        if len(polls) > 8:
            finish()
        return len(polls)
    return progress


def test_a_process_that_gets_on_is_waited_for_past_any_budget(tmp_path: Path) -> None:
    """It finishes only after more polls than `stall_s` holds, while its progress changes at
    each poll: waited for (a fixed `communicate(timeout=stall_s)` would have failed it), and
    all its output kept across the retried communicates."""
    go = tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", WAITS_FOR, str(go)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    polls: list[float] = []
    progress = _work_done_after_8_polls(go.touch, polls)
    out, err = communicate_while(proc, progress, stall_s=0.3, what="the worker", poll_s=0.1)
    assert (proc.returncode, out, err) == (0, "done\n", "")
    assert polls[-1] - polls[0] > 0.3  # longer than stall_s: no budget on the whole


def test_a_process_that_stalls_fails_the_test_and_is_reaped(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WAITS_FOR, str(tmp_path / "never")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with pytest.raises(AssertionError, match="the worker: no exit and no progress for 0.3 s"):
        communicate_while(proc, lambda: "same", stall_s=0.3, what="the worker", poll_s=0.1)
    assert proc.returncode is not None and proc.stdout is not None and proc.stdout.closed


def test_threads_that_get_on_are_joined_past_any_budget() -> None:
    """The threads' counterpart (`join_while`): a thread that finishes only after more polls
    than `stall_s` holds, while its progress changes at each poll, is waited for."""
    go = threading.Event()
    polls: list[float] = []
    progress = _work_done_after_8_polls(go.set, polls)
    thread = threading.Thread(target=go.wait, daemon=True)
    thread.start()
    join_while([thread], progress, stall_s=0.3, what="the lane", poll_s=0.1)
    assert not thread.is_alive()
    assert polls[-1] - polls[0] > 0.3  # longer than stall_s: no budget on the whole


def test_a_thread_that_stalls_fails_the_test() -> None:
    never = threading.Event()
    thread = threading.Thread(target=never.wait, daemon=True)
    thread.start()
    try:
        with pytest.raises(AssertionError, match="the lane: still running and no progress"):
            join_while([thread], lambda: "same", stall_s=0.3, what="the lane", poll_s=0.1)
    finally:
        never.set()
