"""A gate-agent process SIGKILLed in the middle of a sync: pages are whole, the cursor is not
advanced, the next run resumes, and a killed rebuild never touches the live cache."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.platform.sync import discard_unfinished_rebuild
from agent.runtime.opening import opened_gate
from agent.sandbox.harness import start_sandbox
from tests.conftest import PROJECT_ROOT
from tests.platform.sync.conftest import EVENT, cached_ids, expected_ids, make_site, noon

TICKETS = 4000  # 3800 items: four 1000-item pages


@pytest.fixture
def slow_sandbox():
    """Async results take 0.25 s, so a pass is slow enough to be killed between pages."""
    with start_sandbox(tickets=TICKETS, async_delay_s=0.25, rpm=1000) as sb:
        yield sb


def state_of(path: Path) -> tuple[str | None, str | None] | None:
    if not path.exists():
        return None
    conn = sqlite3.connect(path, timeout=5)
    try:
        row = conn.execute("SELECT cursor, pending_cursor FROM sync_state WHERE event_id = ?",
                           (EVENT,)).fetchone()
    except sqlite3.OperationalError:  # tables not created yet
        return None
    finally:
        conn.close()
    return row


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 20) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (polled: the event is in another process)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"process ended before the kill point: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("kill point never reached")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agent", *args], cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_killed_first_pass_keeps_whole_pages_and_the_next_run_resumes(tmp_path, slow_sandbox):
    site = make_site(tmp_path / "g", slow_sandbox, rpm=1000)
    proc = start_cli("sync", "--json", "--config", str(site.config_path))

    def one_page_in() -> bool:
        row = state_of(site.cache_path)
        return bool(row and row[1])

    kill_when(proc, one_page_in)
    cursor, pending = state_of(site.cache_path)
    assert cursor is None and pending  # never finished: no cursor
    kept = len(cached_ids(site.cache_path))
    assert kept and kept % 1000 == 0  # whole pages only (one transaction each)

    async def resume():
        async with site.client() as client:
            syncer = site.syncer(client)
            try:
                return await syncer.sync_tickets(EVENT)
            finally:
                syncer.close()

    applied = asyncio.run(resume())
    assert applied == 3800 - kept  # only what the killed run had not applied
    ids = cached_ids(site.cache_path)
    assert sorted(ids) == sorted(expected_ids(TICKETS))
    cursor, pending = state_of(site.cache_path)
    assert cursor and pending is None


def test_killed_full_resync_leaves_the_old_cache_serving(tmp_path, slow_sandbox):
    site = make_site(tmp_path / "g", slow_sandbox, rpm=1000)
    done = subprocess.run([sys.executable, "-m", "agent", "sync", "--json", "--config",
                           str(site.config_path)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    before = state_of(site.cache_path)
    slow_sandbox.change_item("SF0000001", "refunded")
    new_path = site.cache_path.with_name("cache.db.new")
    proc = start_cli("sync", "--full", "--json", "--config", str(site.config_path))

    def building() -> bool:
        row = state_of(new_path)
        return bool(row and row[1])

    kill_when(proc, building)
    assert new_path.exists()
    assert state_of(site.cache_path) == before
    with opened_gate(site.config) as gate:  # the old cache decides as before
        decision = gate.check("SF0000001", site.config.lane("main"), noon(slow_sandbox))
        assert decision.admit
        assert gate.cache.item_counts() == {EVENT: 3800}
    assert discard_unfinished_rebuild(site.cache_path) is True
    assert not [p for p in new_path.parent.iterdir() if p.name.startswith("cache.db.new")]
    assert discard_unfinished_rebuild(site.cache_path) is False
