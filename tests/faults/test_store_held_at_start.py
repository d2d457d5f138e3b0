"""A store file another process holds as the daemon starts: a technician's `sqlite3` shell left
in a transaction or in `PRAGMA locking_mode=EXCLUSIVE`, a backup tool, a second agent started
by hand.

SQLite then says "database is locked" once its busy timeout runs out — at the integrity check
the daemon runs on opening the cache and the journal. That check took the answer for damage:
the cache was moved aside under the other process and its -wal and -shm deleted (whatever that
process had committed in the WAL lost with them), and the gate started on an empty cache; the
journal was said to be damaged, with advice to copy it aside and start a new one. A held file is
neither damaged nor gone: it is kept as it is, status names the file and how to find its holder
(`fuser -v`), every scan is refused meanwhile (fail closed), and once the holder lets go the
file is opened by the daemon's retry job, with no restart and nothing rebuilt.

Real SQLite files, the holder a real process (tests/venue/test_venue_db_held.py's
HOLD_EXCLUSIVE), the daemon in-process on a loop (its jobs called as its scheduler would).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import demo_data
from agent.runtime import daemonjobs
from agent.runtime.daemon import Daemon
from tests.conftest import DemoSite, make_site
from tests.faults.test_store_faults_running import run_on_a_loop
from tests.venue.test_venue_db_held import HOLD_EXCLUSIVE

# each try the daemon makes while the file is held waits out the busy timeout
pytestmark = pytest.mark.usefixtures("short_busy_timeout")

C = demo_data.CODES


class Holder:
    """Another process holding `path` with an exclusive lock until `release()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD_EXCLUSIVE, str(path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(10)


@pytest.fixture
def site(tmp_path: Path) -> DemoSite:
    return make_site(tmp_path, datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def held(request: pytest.FixtureRequest, site: DemoSite) -> Iterator[Holder]:
    holder = Holder(site.config.store_dir / request.param)
    try:
        yield holder
    finally:
        holder.release()


def _files(store: Path, name: str) -> list[str]:
    return sorted(p.name for p in store.iterdir() if p.name.startswith(name))


def _reasons(daemon: Daemon) -> dict[str, str]:
    return {r["code"]: r["message"] for r in daemon.report()["reasons"]}


def _admit(daemon: Daemon, site: DemoSite, code: str) -> Any:
    return daemon.lanes["north-in"].gate.check(code, site.config.lane("north-in"), site.now)


@pytest.mark.parametrize("held", ["cache.db"], indirect=True)
def test_a_cache_held_at_start_is_kept_refuses_and_is_read_once_let_go(
        site: DemoSite, held: Holder) -> None:
    store = site.config.store_dir
    cache_path = store / "cache.db"
    files = _files(store, "cache.db")
    before = cache_path.read_bytes()

    async def go(daemon: Daemon) -> None:
        resync = daemon.open_stores()
        assert not resync  # nothing to rebuild: the file is not damaged
        assert _files(store, "cache.db") == files  # not moved aside, no -wal/-shm deleted
        assert cache_path.read_bytes() == before
        said = _reasons(daemon)
        assert "cache_rebuilding" not in said, said
        assert f"`fuser -v {cache_path}`" in said["cache_unreadable"], said
        assert "damaged" not in said["cache_unreadable"], said
        daemon.start_lanes(site.config.lanes)
        assert not _admit(daemon, site, C["valid"]).admit  # fail closed: no tickets to go by
        await daemonjobs.cache_access_job(daemon)  # still held: said again, nothing else
        assert daemon.cache_unreadable and "fuser -v" in daemon.cache_unreadable
        held.release()
        await daemonjobs.cache_access_job(daemon)
        assert daemon.cache_unreadable is None and "cache_unreadable" not in _reasons(daemon)
        assert _admit(daemon, site, C["valid"]).admit  # the kept file's tickets, no resync

    run_on_a_loop(Daemon(site.config), go)


@pytest.mark.parametrize("held", ["journal.db"], indirect=True)
def test_a_journal_held_at_start_is_not_called_damaged_and_opens_once_let_go(
        site: DemoSite, held: Holder) -> None:
    store = site.config.store_dir
    journal_path = store / "journal.db"
    files = _files(store, "journal.db")

    async def go(daemon: Daemon) -> None:
        daemon.open_stores()
        error = daemon.journal_error or ""
        assert f"`fuser -v {journal_path}`" in error, error
        assert "damaged" not in error and "new one" not in error, error
        said = _reasons(daemon)
        assert f"`fuser -v {journal_path}`" in said["journal_unavailable"], said
        assert _files(store, "journal.db") == files
        held.release()
        await daemonjobs.journal_access_job(daemon)
        assert daemon.journal is not None and daemon.journal_error is None

    run_on_a_loop(Daemon(site.config), go)
