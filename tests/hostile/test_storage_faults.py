"""Storage faults: a damaged cache, a full or read-only disk under the journal, a journal
locked by another writer. The rule in every case: a scan is journaled (durably) or refused —
never admitted without a record unless `store.fail_closed = false` says so, and then logged;
the failure shows in status (`journal_unavailable`); the journal file is never touched by
cache trouble.

Two kinds of fault injection:
- real: a tmpfs of a few hundred KiB mounted for the test (filled up, or remounted read-only).
  That needs root (CAP_SYS_ADMIN); elsewhere those tests skip, saying so;
- stand-ins that run anywhere: `PRAGMA max_page_count` makes SQLite answer SQLITE_FULL exactly
  as on a full disk, `PRAGMA query_only` makes writes fail as on a read-only file. `chmod` is
  no stand-in: root (the CI user) ignores file modes.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent import demo_data
from agent.config import Config
from agent.errors import CacheCorrupt, JournalUnavailable
from agent.ops.status import evaluate
from agent.platform.sync import swap_in
from agent.runtime.daemon import Daemon
from agent.runtime.gate import Gate, ScanResult
from agent.runtime.lane import manual_scan
from agent.runtime.opening import opened_gate
from agent.store.cache import TicketCache
from agent.store.journal import Journal, iter_all
from tests.conftest import DemoSite, make_site

C = demo_data.CODES


# -- the ticket cache: truncated at several points ---------------------------------------------

def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)
    for extra in ("-wal", "-shm"):
        Path(str(path) + extra).unlink(missing_ok=True)


CUTS = {"in the header": 50, "after the header": 100, "first page": 4096,
        "first page and a byte": 4097, "half": -2, "one page short": -4096}


@pytest.mark.parametrize("where", list(CUTS))
def test_truncated_cache_is_corrupt_and_the_journal_untouched(site: DemoSite, where: str) -> None:
    path = site.config.store_dir / "cache.db"
    journal = site.config.store_dir / "journal.db"
    size = path.stat().st_size
    assert size >= 8 * 4096, "the demo cache should span several pages"
    cut = CUTS[where]
    _truncate(path, size // 2 if cut == -2 else size + cut if cut < 0 else cut)
    before = journal.read_bytes()
    with pytest.raises(CacheCorrupt, match="sync --full"):
        TicketCache(path)
    assert journal.read_bytes() == before
    Journal(journal).close()


def test_a_short_last_page_reads_as_zeros_and_loses_nothing(site: DemoSite) -> None:
    """Less than a page cut off the end: SQLite zero-fills the short read; the check passes and
    every item is still there (documented so a future change notices)."""
    path = site.config.store_dir / "cache.db"
    _truncate(path, path.stat().st_size - 100)
    cache = TicketCache(path)
    assert cache.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 15
    cache.close()


def test_an_emptied_cache_file_is_a_new_empty_cache_and_alarms(site: DemoSite) -> None:
    """0 bytes is what SQLite calls a new database: not 'corrupt', but empty — status fails with
    cache_empty and the next sync (no cursor: a full pass) refills it."""
    path = site.config.store_dir / "cache.db"
    _truncate(path, 0)
    cache = TicketCache(path)
    snap = {"cache": cache.get_status(), "journal": {}, "lanes": []}
    health, reasons = evaluate(snap, datetime.now(UTC), 3600)
    assert health == "fail" and "cache_empty" in [r.code for r in reasons]
    assert cache.sync_state(demo_data.EVENT_ID) is None
    cache.close()


@pytest.mark.parametrize("cut", [100, 4097, -4096])
def test_daemon_starts_degraded_on_a_truncated_cache(site: DemoSite, cut: int) -> None:
    path = site.config.store_dir / "cache.db"
    with opened_gate(site.config) as gate:
        gate.scan(C["valid"], site.config.lane("north-in"), site.now)
    journal = site.config.store_dir / "journal.db"
    before = journal.read_bytes()
    size = path.stat().st_size
    _truncate(path, size + cut if cut < 0 else cut)
    daemon = Daemon(site.config)
    try:
        assert daemon.open_stores() is True  # a full resync is due at once
        assert daemon.cache_degraded and "rebuilding" in daemon.cache_degraded
        assert [p.name for p in path.parent.glob("cache.db.corrupt-*")]
        assert daemon.journal is not None and daemon.journal.counts()["pending"] == 1
        codes = [r["code"] for r in daemon.report()["reasons"]]
        assert "cache_rebuilding" in codes and "cache_empty" in codes
    finally:
        daemon.close_stores()
    assert journal.read_bytes() == before



def test_a_damaged_cache_moved_aside_replaces_the_older_ones(site: DemoSite) -> None:
    """Each copy is as big as the cache: a disk that keeps damaging it keeps only the newest."""
    path = site.config.store_dir / "cache.db"
    older = [path.with_name("cache.db.corrupt-1700000000"),
             path.with_name("cache.db.corrupt-1700000100")]
    for old in older:
        old.write_bytes(b"an earlier damaged cache")
    _truncate(path, 4097)
    daemon = Daemon(site.config)
    try:
        assert daemon.open_stores() is True
    finally:
        daemon.close_stores()
    aside = sorted(path.parent.glob("cache.db.corrupt-*"))
    assert len(aside) == 1 and aside[0] not in older, aside
    assert aside[0].stat().st_size == 4097  # the newest damaged copy, kept for diagnosis
    assert path.exists()  # and a new cache in its place



def test_a_reload_whose_new_lane_cannot_open_its_cache_keeps_every_lane(site: DemoSite) -> None:
    """SIGHUP adding a lane while the cache file cannot be verified: the reload is refused
    before any lane stops (it stopped the changed lanes first, then lost every lane not yet
    restarted when a gate could not be opened), and status says why."""
    path = site.config.store_dir / "cache.db"
    daemon = Daemon(site.config)
    try:
        daemon.open_stores()
        daemon.start_lanes(site.config.lanes)
        running = dict(daemon.lanes)
        site.config_path.write_text(site.config_path.read_text().replace(
            'name = "north-out"', 'name = "north-out"\ndebounce_ms = 900', 1)
            + '\n[[lanes]]\nname = "south-in"\ngate_id = 71\ndirection = "in"\n'
              'max_entries = 1\n', encoding="utf-8")
        _truncate(path, path.stat().st_size - 4096)  # a new connection's check fails
        daemon.reload()
        assert daemon.lanes == running  # the same runners, none stopped
        assert all(r._thread is not None and r._thread.is_alive() for r in running.values())
        said = {r["code"]: r["message"] for r in daemon.report()["reasons"]}
        assert "lane north-out cannot be started" in said["config_not_applied"], said
        assert daemon.config.lane("north-out").debounce_ms != 900  # old config in force
    finally:
        for r in daemon.lanes.values():
            r.stop()
        daemon.close_stores()


# -- the journal: full disk (stand-in) ------------------------------------------------------------

def _fill_journal(gate: Gate) -> int:
    """Cap the journal at its current size: the next page it needs is 'disk full'."""
    pages = gate.journal.conn.execute("PRAGMA page_count").fetchone()[0]
    gate.journal.conn.execute(f"PRAGMA max_page_count = {pages}")
    return pages


def _scan_until_refused(gate: Gate, site: DemoSite, lane: str = "north-in",
                        code: str | None = None, limit: int = 400) -> list[ScanResult]:
    """Scan (numbered unknown codes, or `code` again and again) until one is not journaled."""
    results = []
    for i in range(limit):
        results.append(gate.scan(code or f"FILLER-{i:05d}", site.config.lane(lane), site.now))
        if results[-1].uuid is None:
            break
    return results


def _journal_uuids(site: DemoSite) -> set[str]:
    journal = Journal(site.config.store_dir / "journal.db")
    try:
        return {row["uuid"] for row in iter_all(journal)}
    finally:
        journal.close()


def test_full_journal_refuses_then_recovers(gate: Gate, site: DemoSite,
                                            caplog: pytest.LogCaptureFixture) -> None:
    pages = _fill_journal(gate)
    results = _scan_until_refused(gate, site)
    assert results[-1].uuid is None and results[-1].decision.detail == "journalUnavailable"
    assert "full" in (gate.journal_error or "")
    # a valid ticket: admitted (and journaled) while its row still fits, refused once not
    results += _scan_until_refused(gate, site, code=C["valid"])
    assert results[-1].decision.code == C["valid"]
    assert (results[-1].decision.admit, results[-1].decision.detail) == (
        False, "journalUnavailable")
    unrecorded = [r for r in results if r.uuid is None]
    assert gate.unrecorded == len(unrecorded) == 2
    assert all(not r.decision.admit and r.decision.detail == "journalUnavailable"
               for r in unrecorded)
    assert "refused" in caplog.text
    # every scan that was answered with a uuid is durably in the journal
    assert {r.uuid for r in results if r.uuid} <= _journal_uuids(site)
    # space again: journaled again, and the alarm clears
    gate.journal.conn.execute(f"PRAGMA max_page_count = {pages * 100}")
    again = gate.scan(C["valid2"], site.config.lane("north-in"), site.now)
    assert again.decision.admit and again.uuid in _journal_uuids(site)
    assert gate.journal_error is None


def test_fail_open_admits_and_logs_every_unrecorded_scan(site: DemoSite,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    config = dataclasses.replace(site.config, store={**site.config.store, "fail_closed": False})
    with opened_gate(config) as gate, caplog.at_level(logging.ERROR, logger="agent.runtime.gate"):
        _fill_journal(gate)
        _scan_until_refused(gate, site)  # unknown codes are refused anyway; fills the page
        # an unlimited in/out lane admits every scan of this ticket, until one is unrecorded
        results = _scan_until_refused(gate, site, lane="floor", code=C["valid2"])
        last = results[-1]
        assert last.decision.admit and last.uuid is None
        assert gate.unrecorded == 2 and gate.journal_error
    lines = [r.getMessage() for r in caplog.records if "ADMITTED WITHOUT A RECORD" in r.getMessage()]
    assert len(lines) == 1 and C["valid2"] in lines[0] and "store.fail_closed = false" in lines[0]


def test_read_only_journal_stand_in_refuses_then_recovers(gate: Gate, site: DemoSite) -> None:
    gate.journal.conn.execute("PRAGMA query_only = ON")
    refused = gate.scan(C["valid"], site.config.lane("north-in"), site.now)
    assert (refused.decision.admit, refused.decision.detail) == (False, "journalUnavailable")
    assert "readonly" in (gate.journal_error or "").replace("-", "").replace(" ", "")
    gate.journal.conn.execute("PRAGMA query_only = OFF")
    assert gate.scan(C["valid"], site.config.lane("north-in"), site.now).decision.admit


# -- the journal: locked by another writer ---------------------------------------------------------

def test_locked_journal_refuses_then_admits_when_released(gate: Gate, site: DemoSite) -> None:
    """Another connection holds the write lock longer than the busy timeout: the scan is
    refused with journalUnavailable (not an exception); released, scans admit again. The
    timeout is cut from 5 s to 0.2 s for the test."""
    gate.journal.conn.execute("PRAGMA busy_timeout = 200")
    other = sqlite3.connect(site.config.store_dir / "journal.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        refused = gate.scan(C["valid"], site.config.lane("north-in"), site.now)
        waited = time.monotonic() - started
        assert (refused.decision.admit, refused.decision.detail) == (False, "journalUnavailable")
        assert "locked" in (gate.journal_error or "") and 0.15 < waited < 3
    finally:
        other.execute("ROLLBACK")
        other.close()
    admitted = gate.scan(C["valid"], site.config.lane("north-in"), site.now)
    assert admitted.decision.admit and admitted.uuid and gate.journal_error is None


# -- the daemon notices at scan time ----------------------------------------------------------------

def _wait(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_daemon_status_alarms_when_a_lane_cannot_journal(site: DemoSite) -> None:
    daemon = Daemon(site.config)
    daemon.open_stores()
    daemon.start_lanes(site.config.lanes)
    runner = daemon.lanes["north-in"]
    try:
        assert "journal_unavailable" not in [r["code"] for r in daemon.report()["reasons"]]
        pages = runner.gate.journal.conn.execute("PRAGMA page_count").fetchone()[0]
        with runner.lock:
            runner.gate.journal.conn.execute(f"PRAGMA max_page_count = {pages}")
        for i in range(400):
            runner.submit(manual_scan(f"FILLER-{i:05d}", "north-in"))
        _wait(lambda: runner.gate.journal_error is not None)
        report = daemon.report()
        reason = next(r for r in report["reasons"] if r["code"] == "journal_unavailable")
        assert reason["level"] == "fail" and "north-in" in reason["message"]
        assert report["health"] == "fail"
        lane = next(lane for lane in report["lanes"] if lane["name"] == "north-in")
        assert lane["journal_error"] and lane["unrecorded_scans"] >= 1
        assert "gate_health 2.0" in daemon.metrics.render().decode()
        _wait(lambda: runner.queue.empty())
        with runner.lock:
            runner.gate.journal.conn.execute(f"PRAGMA max_page_count = {pages * 100}")
        runner.submit(manual_scan(C["valid"], "north-in"))
        _wait(lambda: runner.gate.journal_error is None)
        assert "journal_unavailable" not in [r["code"] for r in daemon.report()["reasons"]]
    finally:
        for r in daemon.lanes.values():
            r.stop()
        daemon.close_stores()


# -- real faults on a tiny tmpfs (root only) ---------------------------------------------------------

def _mount_tmpfs(mnt: Path) -> subprocess.CompletedProcess[str]:
    # 2 MB: a fresh site (cache, journal and their migrations' WAL) takes about 0.5 MB
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True)


def _can_mount_tmpfs() -> bool:
    """The precondition, probed once: root with the right to mount (CI runs as root)."""
    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as probe:
        if _mount_tmpfs(Path(probe)).returncode != 0:
            return False
        subprocess.run(["umount", probe], check=False)
    return True


needs_tmpfs = pytest.mark.skipif(
    not _can_mount_tmpfs(), reason="cannot mount a tmpfs to fill up (needs root with mount "
    "rights); the PRAGMA stand-ins above cover the same paths")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = _mount_tmpfs(mnt)
    assert done.returncode == 0, done.stderr  # the probe could: this one must too
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill_disk(directory: Path) -> Path:
    """Write zeros until the file system says ENOSPC (unbuffered: no flush left to fail)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


@needs_tmpfs
def test_real_full_disk_refuses_loses_nothing_and_recovers(tmpfs: Path) -> None:
    site = make_site(tmpfs, datetime.now(UTC).replace(microsecond=0))
    with opened_gate(site.config) as gate:
        filler = _fill_disk(tmpfs)
        results = _scan_until_refused(gate, site)
        assert results[-1].uuid is None, "the disk never filled"
        assert results[-1].decision.detail == "journalUnavailable"
        valid = gate.scan(C["valid"], site.config.lane("north-in"), site.now)
        assert not valid.decision.admit and gate.journal_error
        filler.unlink()
        again = gate.scan(C["valid"], site.config.lane("north-in"), site.now)
        assert again.decision.admit and again.uuid and gate.journal_error is None
    stored = _journal_uuids(site)
    assert {r.uuid for r in results if r.uuid} | {again.uuid} <= stored


@needs_tmpfs
def test_read_only_store_dir_starts_refusing_with_an_alarm(tmpfs: Path) -> None:
    """The disk is remounted read-only (what ext4 does after I/O errors): the daemon must still
    start — refusing every scan, status saying why — instead of crashing while moving the
    unopenable cache aside (it did, before this test)."""
    site = make_site(tmpfs, datetime.now(UTC).replace(microsecond=0))
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    daemon = Daemon(site.config)
    try:
        assert daemon.open_stores() is False
        assert daemon.journal is None and daemon.journal_error
        # the cache is not damaged, only on a read-only disk: said so (cache_unreadable, with
        # the unit's ReadWritePaths=), never a rebuild, and not moved aside
        assert daemon.cache_in_memory and daemon.cache_degraded is None
        assert "read-only file system" in (daemon.cache_unreadable or "")
        daemon.start_lanes(site.config.lanes)
        runner = daemon.lanes["north-in"]
        runner.submit(manual_scan(C["valid"], "north-in"))
        _wait(lambda: runner.last_scan is not None)
        assert runner.last_scan["admit"] is False
        assert runner.last_scan["statusDetail"] in ("journalUnavailable", "unknownCode")
        report = daemon.report()
        codes = [r["code"] for r in report["reasons"]]
        assert report["health"] == "fail" and "journal_unavailable" in codes
        said = next(r["message"] for r in report["reasons"] if r["code"] == "journal_unavailable")
        assert "tried again every few seconds" in said  # and opened by itself once it can
    finally:
        for r in daemon.lanes.values():
            r.stop()
        daemon.close_stores()



@needs_tmpfs
def test_a_gate_on_an_in_memory_cache_takes_the_rebuilt_file_once_the_disk_is_back(
        tmpfs: Path, tmp_path: Path) -> None:
    """Damaged cache, store.dir read-only at start: the gate runs on an empty in-memory cache.
    Once the disk is writable the rebuild's swap puts a checked file in place, and the lanes
    must read it (they reopened ':memory:' before, and kept refusing every ticket)."""
    site = make_site(tmpfs, datetime.now(UTC).replace(microsecond=0))
    live = site.config.store_dir / "cache.db"
    good = tmp_path / "rebuilt.db"
    cache = TicketCache(live)
    cache.checkpoint()
    cache.close()
    good.write_bytes(live.read_bytes())  # what the full resync will have built
    live.write_bytes(b"garbage" * 1000)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    daemon = Daemon(site.config)
    lane = site.config.lane("north-in")
    try:
        daemon.open_stores()
        assert daemon.cache_in_memory
        daemon.start_lanes(site.config.lanes)
        gate = daemon.lanes["north-in"].gate
        assert gate.check(C["valid"], lane, site.now).detail == "cacheEmpty"
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
        new = live.with_name("cache.db.new")
        new.write_bytes(good.read_bytes())
        daemon._swap_cache(lambda: swap_in(new, live))  # the full resync's swap hook
        assert not daemon.cache_in_memory
        assert gate.check(C["valid"], lane, site.now).admit
        assert daemon.status_cache is not None and daemon.status_cache.path == live
    finally:
        for r in daemon.lanes.values():
            r.stop()
        daemon.close_stores()


@needs_tmpfs
def test_read_only_journal_file_at_start(tmpfs: Path) -> None:
    site = make_site(tmpfs, datetime.now(UTC).replace(microsecond=0))
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    with pytest.raises(JournalUnavailable, match="journal.db cannot be written: .* is on a "
                                                 "read-only file system"):
        Journal(site.config.store_dir / "journal.db")
    config: Config = site.config
    gate = Gate(TicketCache(":memory:"), None, config)
    result = gate.scan(C["valid"], config.lane("north-in"), site.now + timedelta(seconds=1))
    assert not result.decision.admit and result.uuid is None
    gate.close()
