"""Asking why a store cannot be used (agent.access) must not drop this process's SQLite locks.

POSIX locks belong to the process and the file: closing any descriptor of a database, its -wal
or its -shm drops every lock the process holds on it, those of its open SQLite connections
included (sqlite.org/howtocorrupt.html, 2.2). The check for `chattr +i` used to open and close
each file. It runs after connections are open (each VenueStore's open; every write failure's
message), so another process then found the file unused: it could take the WAL index's
"dead man switch" lock and reset the index under the running gate's connections.

Real files, a real second process probing the locks exactly as SQLite's unix VFS takes them:
each connection holds a shared lock on byte 128 of the -shm file (UNIX_SHM_DMS); a process
that can write-lock it believes no one has the database open.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.access import immutable, sqlite_file_access, store_write_failure
from agent.store.journal import Journal
from agent.store.venue import VenueStore

_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, int(sys.argv[3]), int(sys.argv[2]))
except OSError:
    print("held")
else:
    print("free")
"""
DMS = (128, 1)  # the -shm's UNIX_SHM_DMS byte: every connection holds it shared
SHARED = (0x40000002, 510)  # the database file's SHARED range (PENDING_BYTE + 2, 510 bytes)


def dms_lock(db: Path) -> str:
    """Whether another process sees the database in use: 'held' or 'free'."""
    return probe(Path(f"{db}-shm"), *DMS)


def shared_lock(db: Path) -> str:
    """Whether another process sees a reader of the database file itself (a process that can
    lock it exclusively takes itself for the last user: it checkpoints and deletes the WAL)."""
    return probe(db, *SHARED)


def probe(path: Path, start: int = DMS[0], length: int = DMS[1]) -> str:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(path), str(start), str(length)],
                         capture_output=True, text=True, check=True, timeout=30)
    return out.stdout.strip()


def test_the_probe_sees_a_byte_nobody_locks_as_free(tmp_path: Path) -> None:
    """The probe below can answer 'free' (where the locks were dropped it did: breaking the
    fix, `immutable` opening the file again, makes every test here fail on 'free')."""
    unlocked = tmp_path / "unlocked-shm"
    unlocked.write_bytes(bytes(32 * 1024))
    assert probe(unlocked) == "free"


@pytest.mark.parametrize("ask", [
    lambda path: sqlite_file_access(path),
    lambda path: store_write_failure(path, "disk I/O error"),
    lambda path: VenueStore(path).close(),  # a lane's link opening beside the bus's connection
], ids=["sqlite_file_access", "store_write_failure", "another VenueStore"])
def test_asking_about_a_store_keeps_the_locks_of_its_open_connections(
        tmp_path: Path, ask: object) -> None:
    path = tmp_path / "venue.db"
    store = VenueStore(path)
    try:
        assert store.zone_scans(1, 1) == []  # a read: the -shm is mapped and locked
        assert (dms_lock(path), shared_lock(path)) == ("held", "held")
        ask(path)  # type: ignore[operator]
        assert (dms_lock(path), shared_lock(path)) == ("held", "held")
    finally:
        store.close()


def test_the_journal_keeps_its_locks_when_a_write_failure_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = Journal(path)
    try:
        assert journal.last_seq() == 0
        store_write_failure(path, "database or disk is full")
        assert dms_lock(path) == "held"
    finally:
        journal.close()


def test_an_immutable_file_is_still_told_apart(tmp_path: Path) -> None:
    """statx reports `chattr +i` / `+a` without opening the file (needs root and ext4 or the
    like, as the daemon's own store directory has on a gate)."""
    plain, frozen = tmp_path / "plain", tmp_path / "frozen"
    plain.write_text("x")
    frozen.write_text("x")
    marked = subprocess.run(["chattr", "+i", str(frozen)], capture_output=True, text=True)
    assert marked.returncode == 0, marked.stderr
    try:
        assert (immutable(plain), immutable(frozen)) == (False, True)
        assert "chattr -i -a" in (sqlite_file_access(frozen) or "")
    finally:
        subprocess.run(["chattr", "-i", str(frozen)], check=True)


def test_making_a_store_file_that_appeared_meanwhile_keeps_its_locks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`open_database` makes a missing file with the store's mode before SQLite opens it. If
    another thread made and opened it after `exists()` said no (the check is made to say no
    here: that interleaving cannot be timed for real), making it must not close a descriptor
    of it: the file that SQLite holds keeps its locks, and its data."""
    path = tmp_path / "venue.db"
    store = VenueStore(path)
    try:
        assert store.zone_scans(1, 1) == []
        assert dms_lock(path) == "held"
        real_exists = Path.exists
        monkeypatch.setattr(Path, "exists",
                            lambda self: False if self == path else real_exists(self))
        assert shared_lock(path) == "held"
        again = VenueStore(path)  # goes through the "missing file" branch
        monkeypatch.undo()
        again.close()
        assert shared_lock(path) == "held"
        assert sorted(p.name for p in tmp_path.iterdir()) == \
            ["venue.db", "venue.db-shm", "venue.db-wal"]  # no spare name left behind
    finally:
        store.close()
