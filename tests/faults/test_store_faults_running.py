"""Store faults that arrive while the gate runs, not at start (that is
tests/hostile/test_storage_faults.py and tests/runtime/daemon/test_store_file_access.py).

The rule in each case: a scan the journal cannot take is refused (fail closed), the refusal
counted and shown; status names the file and what to type; a good cache is never moved aside
nor taken for damaged; the gate journals (and applies) again by itself once the cause is gone.

Real faults only: a file marked immutable (`chattr +i`: root, the CI user, cannot write it
either, unlike a `chmod`), a tmpfs filled up to ENOSPC. A read-only remount cannot be made under
open files (`mount: mount point is busy`); SQLite's read-only errors are the immutable file's
here. Skipped, saying why, where `chattr` or a tmpfs mount is not available.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import demo_data
from agent.errors import CacheNotAccessible
from agent.platform.sync import swap_in
from agent.runtime import daemonjobs
from agent.runtime.daemon import Daemon
from agent.runtime.devrun import DaemonProcess
from agent.runtime.lane import LaneRunner
from agent.sandbox.harness import Sandbox
from agent.store.cache import TicketCache
from agent.store.journal import Journal, iter_all
from agent.venue.node import NodeProcess
from tests.conftest import DemoSite, make_site
from tests.hostile.test_cache_damaged_live import (  # noqa: F401 - sandbox: the fixture
    _scan_and_wait,
    run_with_platform,
    sandbox,
)
from tests.hostile.test_storage_faults import _fill_disk, needs_tmpfs, tmpfs  # noqa: F401
from tests.platform.sync.conftest import make_site as make_platform_site
from tests.platform.sync.conftest import noon
from tests.rigs import wait_until
from tests.runtime.daemon.conftest import Site
from tests.runtime.daemon.conftest import site as daemon_site  # noqa: F401
from tests.venue.conftest import venue_node  # noqa: F401
from tests.venue.test_daemon_venue import venue_section

C = demo_data.CODES


def _chattr_works() -> bool:
    if shutil.which("chattr") is None:
        return False
    with tempfile.NamedTemporaryFile(dir=tempfile.gettempdir()) as probe:
        if subprocess.run(["chattr", "+i", probe.name], capture_output=True).returncode:
            return False
        subprocess.run(["chattr", "-i", probe.name], check=True)
    return True


needs_chattr = pytest.mark.skipif(
    not _chattr_works(), reason="`chattr +i` not available here (needs root and a file system "
    "with inode flags): a file root cannot write is what these tests need")


def chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True)


@contextmanager
def lanes_running(site: DemoSite) -> Iterator[Daemon]:
    """The daemon's stores and lane threads (no platform: nothing else writes meanwhile)."""
    daemon = Daemon(site.config)
    daemon.open_stores()
    daemon.start_lanes(site.config.lanes)
    try:
        yield daemon
    finally:
        for runner in daemon.lanes.values():
            runner.stop()
        daemon.close_stores()


@pytest.fixture
def running(site: DemoSite) -> Iterator[Daemon]:
    with lanes_running(site) as daemon:
        yield daemon


def run_on_a_loop(daemon: Daemon, go: Callable[[Daemon], Awaitable[None]]) -> None:
    """`go(daemon)` on an asyncio loop (the daemon's jobs and tasks need one); then its jobs,
    heartbeats, lanes, bus and stores stopped, whatever `go` did."""
    async def within_loop() -> None:
        try:
            await go(daemon)
        finally:
            daemon.jobs.shutdown()
            if daemon._beats is not None:
                daemon._beats.cancel()

    try:
        asyncio.run(within_loop())
    finally:
        for r in daemon.lanes.values():
            r.stop()
        if daemon.bus is not None:
            daemon.bus.stop()
        daemon.close_stores()


def _reasons(daemon: Daemon) -> dict[str, str]:
    return {r["code"]: r["message"] for r in daemon.report()["reasons"]}


def _journaled(site: DemoSite) -> list[dict[str, Any]]:
    journal = Journal(site.config.store_dir / "journal.db")
    try:
        return list(iter_all(journal))
    finally:
        journal.close()


def _no_cache_moved_aside(site: DemoSite, daemon: Daemon) -> None:
    assert not list(site.config.store_dir.glob("cache.db.corrupt-*"))
    assert daemon.cache_degraded is None and daemon.cache_unreadable is None
    assert "cache_read_failed" not in _reasons(daemon)


@needs_chattr
def test_a_journal_made_unwritable_under_the_daemon_refuses_says_how_and_recovers(
        site: DemoSite, running: Daemon) -> None:
    journal = site.config.store_dir / "journal.db"
    wal = Path(f"{journal}-wal")
    runner: LaneRunner = running.lanes["north-in"]
    assert _scan_and_wait(runner, C["valid"])["admit"] is True
    assert wal.exists()  # the open connections write here
    chattr("+i", wal)
    try:
        refused = _scan_and_wait(runner, C["valid2"])
        said = _reasons(running)
    finally:
        chattr("-i", wal)
    assert (refused["admit"], refused["statusDetail"]) == (False, "journalUnavailable")
    assert runner.gate.unrecorded == 1
    assert C["valid2"] not in [r["code"] for r in _journaled(site)]  # refused, not journaled
    # status names the file, why, and the command that lifts it
    reason = said["journal_unavailable"]
    assert f"{wal} is marked immutable" in reason and f"chattr -i -a {wal}" in reason, reason
    _no_cache_moved_aside(site, running)
    # the cause gone: the same lane journals again by itself, and the alarm clears
    _scan_and_wait(runner, C["unknown"])  # another code between (the lane's debounce)
    assert _scan_and_wait(runner, C["valid2"])["admit"] is True
    assert "journal_unavailable" not in _reasons(running)
    assert [r["admit"] for r in _journaled(site) if r["code"] == C["valid2"]] == [1]


@needs_tmpfs
def test_a_disk_filled_under_the_daemon_refuses_says_how_and_recovers(tmpfs: Path) -> None:  # noqa: F811
    site = make_site(tmpfs, datetime.now(UTC).replace(microsecond=0))
    with lanes_running(site) as daemon:
        runner = daemon.lanes["north-in"]
        assert _scan_and_wait(runner, C["valid"])["admit"] is True
        filler = _fill_disk(tmpfs)
        results = []
        for n in range(400):  # unknown codes until a row no longer fits
            results.append(_scan_and_wait(runner, f"FILLER-{n:05d}"))
            if runner.gate.unrecorded:
                break
        assert runner.gate.unrecorded, "the disk never filled"
        refused = _scan_and_wait(runner, C["valid2"])
        assert (refused["admit"], refused["statusDetail"]) == (False, "journalUnavailable")
        reason = _reasons(daemon)["journal_unavailable"]
        store = site.config.store_dir
        assert f"{store / 'journal.db'}" in reason and "has no room left" in reason, reason
        assert f"df -h {store}" in reason, reason
        _no_cache_moved_aside(site, daemon)
        filler.unlink()
        _scan_and_wait(runner, C["unknown"])  # another code between (the lane's debounce)
        again = _scan_and_wait(runner, C["valid2"])
        assert again["admit"] is True, again
        assert "journal_unavailable" not in _reasons(daemon)
        assert [r["admit"] for r in _journaled(site) if r["code"] == C["valid2"]] == [1]


@needs_chattr
def test_a_rebuilt_cache_the_store_refuses_leaves_the_lanes_on_the_good_one(
        site: DemoSite, running: Daemon, tmp_path: Path) -> None:
    """The full resync's swap (rename cache.db.new over cache.db) refused: it used to leave
    every lane with closed connections (each scan then failed in the lane, no decision, no
    refusal, until the next swap worked); now they read the file they had, the job's error
    names the file and the `chattr -i`, and the next swap goes through."""
    live = site.config.store_dir / "cache.db"
    new = live.with_name("cache.db.new")
    built = TicketCache(tmp_path / "built.db")  # what a full resync writes: a good cache
    built.close()
    runner = running.lanes["north-in"]
    shutil.copyfile(tmp_path / "built.db", new)
    chattr("+i", live)
    try:
        with pytest.raises(CacheNotAccessible) as refused:
            running._swap_cache(lambda: swap_in(new, live))
        assert f"{live} is marked immutable" in str(refused.value), refused.value
        assert f"chattr -i -a {live}" in str(refused.value)
        decided = _scan_and_wait(runner, C["valid"])  # on the cache it had: tickets known
        assert decided["admit"] is True and decided["status"] == "valid", decided
        assert running.report()["cache"]["events"][0]["items"] > 0
    finally:
        chattr("-i", live)
    _no_cache_moved_aside(site, running)
    running._swap_cache(lambda: swap_in(new, live))  # access back: the swap works
    assert _scan_and_wait(runner, C["valid2"])["statusDetail"] == "cacheEmpty"  # the new file


@needs_chattr
@pytest.mark.e2e
def test_venue_db_made_unwritable_under_the_daemon_is_said_and_applied_again(
        daemon_site: Site, venue_node: NodeProcess) -> None:  # noqa: F811
    """venue.db refusing the stream's messages while the daemon runs (its -wal made immutable):
    the gate keeps deciding (its own journal works; claims go through the bus), status says
    venue_db_failing naming the file and the `chattr -i`, and once it is lifted the held
    messages are applied by themselves and the reason clears. The real daemon and nats-server."""
    daemon_site.write_config(extra_lanes=venue_section(venue_node.url))
    daemon = daemon_site.daemon().start()
    wal = daemon_site.store / "venue.db-wal"
    try:
        daemon.wait_ready()
        wait_until(lambda: daemon.status()["venue"]["ready"], 30, "the daemon on the bus")
        assert wal.exists()
        before = daemon.status()["venue"]["applied_seq"]
        chattr("+i", wal)
        try:
            daemon_site.scanner.write(C["valid"].encode() + b"\r\n")
            wait_until(lambda: "venue_db_failing" in _status_reasons(daemon), 30,
                       "venue.db's failure said")
            said = _status_reasons(daemon)["venue_db_failing"]
        finally:
            chattr("-i", wal)
        assert f"{wal} is marked immutable" in said and f"chattr -i -a {wal}" in said, said
        # The bus clears the reason just before it moves its position on: wait for both.
        wait_until(lambda: "venue_db_failing" not in _status_reasons(daemon)
                   and daemon.status()["venue"]["applied_seq"] > before, 30,
                   "the held messages applied")
        assert daemon.status()["venue"]["applied_seq"] >= 1
    finally:
        assert daemon.stop() == 0


def _status_reasons(daemon: DaemonProcess) -> dict[str, str]:
    return {r["code"]: r["message"] for r in daemon.status()["reasons"]}


@needs_tmpfs
def test_a_full_disk_at_start_keeps_the_good_cache_and_the_lanes_read_it_once_there_is_room(
        tmpfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """SQLite cannot make cache.db's -shm on a full disk ("disk I/O error"): the cache was
    taken for damaged, moved aside and left to a rebuild that the full disk made fail too — a
    gate with no tickets. Now it is kept and said (cache_unreadable, with the `df`), and once
    there is room the daemon opens it again by itself (no restart, no rebuild)."""
    site = make_site(tmpfs, datetime.now(UTC).replace(microsecond=0))
    filler = _fill_disk(tmpfs)
    monkeypatch.setattr(daemonjobs, "CACHE_ACCESS_RETRY_S", 0.2)
    lane = site.config.lane("north-in")

    async def go(daemon: Daemon) -> None:
        daemon._loop = asyncio.get_running_loop()
        assert daemon.open_stores() is False  # no rebuild due
        assert daemon.cache_in_memory and daemon.cache_degraded is None
        assert not list(site.config.store_dir.glob("cache.db.corrupt-*"))
        daemon.start_lanes(site.config.lanes)
        gate = daemon.lanes["north-in"].gate
        assert gate.check(C["valid"], lane, site.now).detail == "cacheEmpty"
        said = _reasons(daemon)
        store = site.config.store_dir
        for code in ("cache_unreadable", "journal_unavailable"):
            assert "has no room left" in said[code] and f"df -h {store}" in said[code], said
        assert "sync --full" not in said["cache_unreadable"]
        daemon.schedule(False)
        filler.unlink()
        deadline = time.monotonic() + 30
        while daemon.cache_unreadable:
            assert time.monotonic() < deadline, _reasons(daemon)
            await asyncio.sleep(0.05)
        assert gate.check(C["valid"], lane, site.now).admit  # the kept file's tickets
        assert "cache_unreadable" not in _reasons(daemon)

    run_on_a_loop(Daemon(site.config), go)


@needs_chattr
@pytest.mark.e2e
def test_a_rebuild_into_a_store_dir_made_immutable_names_it_and_keeps_the_cache(
        tmp_path: Path, sandbox: Sandbox) -> None:  # noqa: F811
    """The full resync writes cache.db.new beside the live cache: in a store.dir no one may
    write (`chattr +i`) it fails saying so (the directory and the `chattr -i`, not "damaged"),
    the live cache stays in place and the lanes go on deciding on it; lifted, the next
    rebuild goes through. The platform is the sandbox on loopback."""
    site = make_platform_site(tmp_path / "gate", sandbox, rpm=1000)
    store = site.config.store_dir
    at = noon(sandbox)

    async def go(daemon: Daemon) -> tuple[str, bool, bool]:
        await daemon._full_job()  # the first fill
        daemon.start_lanes(site.config.lanes)
        runner = daemon.lanes["main"]
        with runner.lock:
            code = next(c for c in (f"SF{n:07d}" for n in range(1, 60))
                        if runner.gate.check(c, runner.lane, at).admit)
        chattr("+i", store)
        try:
            with pytest.raises(CacheNotAccessible) as failed:
                await daemon._full_job()
            with runner.lock:
                still = runner.gate.check(code, runner.lane, at).admit
        finally:
            chattr("-i", store)
        await daemon._full_job()
        with runner.lock:
            after = runner.gate.check(code, runner.lane, at).admit
        return str(failed.value), still, after

    said, still, after = run_with_platform(Daemon(site.config), go)
    assert f"{store} is marked immutable" in said and f"chattr -i -a {store}" in said, said
    assert "sync --full" not in said
    assert still and after  # decided on the live cache throughout
    assert not list(store.glob("cache.db.corrupt-*")) and not (store / "cache.db.new").exists()
