"""A store file that is merely not this user's is said as such, never as a damaged cache.

SQLite says "unable to open database file" or "attempt to write a readonly database" when a
file, its -wal/-shm or their directory belongs to someone else (a technician's `sudo` left it
root-owned); the ticket cache used to turn that into "not a usable SQLite file ... run
`gate-agent sync --full` to rebuild it" — a rebuild that cannot help. Real processes as the
service uid (tests/runtime/daemon/test_service_user.py: CI runs as root, the service user is a
bare uid), real SQLite files; skipped, with the reason, where a process cannot be started as
another uid."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.store.cache import TicketCache
from agent.store.journal import Journal
from agent.store.venue import VenueStore
from tests.conftest import PROJECT_ROOT
from tests.runtime.daemon.test_service_user import (
    NEEDS_SERVICE_USER,
    SERVICE_PYTHON,
    SERVICE_UID,
    Install,
    install,  # noqa: F401 - the fixture
)

pytestmark = NEEDS_SERVICE_USER

OPEN = """
import sys
from agent.store.cache import TicketCache
from agent.store.journal import Journal
from agent.store.venue import VenueStore
kind, path = sys.argv[1:]
try:
    {"cache": TicketCache, "journal": Journal, "venue": VenueStore}[kind](path)
except Exception as exc:
    print(type(exc).__name__, exc)
else:
    print("opened")
"""
STORES = {"cache": ("cache.db", TicketCache), "journal": ("journal.db", Journal),
          "venue": ("venue.db", VenueStore)}


def open_as_service(kind: str, path: Path) -> str:
    assert SERVICE_PYTHON is not None
    python, env = SERVICE_PYTHON
    done = subprocess.run([python, "-c", OPEN, kind, str(path)], user=SERVICE_UID,
                          group=SERVICE_UID, extra_groups=[], cwd=PROJECT_ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def store() -> Iterator[Path]:
    """The service's store.dir (pytest's tmp_path is in a directory only root may enter)."""
    root = Path(tempfile.mkdtemp(prefix="ga-access-", dir="/tmp"))
    root.chmod(0o755)
    store = root / "state"
    store.mkdir(mode=0o700)
    os.chown(store, SERVICE_UID, SERVICE_UID)
    yield store
    shutil.rmtree(root, ignore_errors=True)


def _made_by_the_service(store: Path, kind: str) -> Path:
    name, _ = STORES[kind]
    path = store / name
    assert open_as_service(kind, path) == "opened"
    assert path.stat().st_uid == SERVICE_UID
    return path


def _root_owned(path: Path) -> None:
    path.write_bytes(b"")
    os.chown(path, 0, 0)
    path.chmod(0o600)


@pytest.mark.parametrize("kind", sorted(STORES))
@pytest.mark.parametrize("culprit", ["-wal", "-shm", "directory"])
def test_a_store_file_not_ours_names_the_file_its_owner_and_the_fix(
        store: Path, kind: str, culprit: str) -> None:
    path = _made_by_the_service(store, kind)
    if culprit == "directory":  # root took store.dir back (the files stay the service's)
        os.chown(store, 0, 0)
        store.chmod(0o755)
        named = str(store)
    else:  # a `sudo gate-agent ...` left the journal files of its open behind, root's
        _root_owned(Path(f"{path}{culprit}"))
        named = f"{path}{culprit}"
    said = open_as_service(kind, path)
    assert said != "opened"
    assert named in said and "chown" in said and "not damaged" in said, said
    assert f"uid {SERVICE_UID}" in said  # who this process is
    assert "sync --full" not in said and "rebuild" not in said, said
    if kind == "cache":
        assert said.startswith("CacheNotAccessible "), said
    if culprit != "directory":
        assert "uid 0" in said, said  # the owner


def test_a_damaged_cache_keeps_its_rebuild_message(store: Path) -> None:
    """Real damage, a file this user may use: still CacheCorrupt and `sync --full`."""
    path = _made_by_the_service(store, "cache")
    with path.open("r+b") as raw:
        raw.write(b"not a database at all" * 10)
    said = open_as_service("cache", path)
    assert said.startswith("CacheCorrupt ") and "sync --full" in said, said


def test_the_daemon_keeps_a_cache_whose_wal_is_not_its_own_and_says_which_file(
        install: Install) -> None:  # noqa: F811
    """The daemon, as the service uid, finds cache.db its own but cache.db-wal root's: it used
    to take the cache for damaged (the file's owner was all it looked at), move it aside and
    rebuild; now it keeps it and status names the -wal file, its owner and the `chown`."""
    cache = _made_by_the_service(install.store, "cache")
    _root_owned(Path(f"{cache}-wal"))
    daemon = install.daemon().start()
    try:
        daemon.wait_ready()
        report = daemon.status()
    finally:
        assert daemon.stop() == 0
    reasons = {r["code"]: r["message"] for r in report["reasons"]}
    said = reasons["cache_unreadable"]
    assert f"{cache}-wal" in said and "uid 0" in said and "chown" in said, said
    assert "cache_rebuilding" not in reasons and "cache_read_failed" not in reasons
    assert not [p.name for p in install.store.iterdir() if "corrupt" in p.name]
