"""Another process started on a running daemon's store does not touch its SQLite files.

A daemon at start deletes an unfinished rebuild (`cache.db.new`), moves a damaged cache aside
and unlinks its -wal/-shm (agent.runtime.storestart): done by a second process under a running
daemon, that would replace files whose connections it holds (sqlite.org/howtocorrupt.html
2.4). It takes `daemon.lock` before it opens anything (agent.runtime.storeaccess), so a
second one exits 2 naming the first and changes nothing; a real subprocess of each here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT
from tests.runtime.daemon.conftest import Site, wait_synced


def test_a_second_daemon_leaves_the_running_one_s_cache_files_alone(site: Site) -> None:
    first = site.daemon().start()
    try:
        first.wait_ready()
        wait_synced(first)
        assert first.proc is not None
        cache = site.store / "cache.db"
        files = {p.name: (p.stat().st_ino, p.stat().st_size)
                 for p in (cache, Path(f"{cache}-wal"), Path(f"{cache}-shm"))}
        unfinished = site.store / "cache.db.new"  # what a start deletes, then rebuilds
        unfinished.write_bytes(b"a rebuild under way")
        second = subprocess.run(
            [sys.executable, "-m", "agent", "run", "--config", str(site.config)],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr
        assert f"another gate-agent daemon (PID {first.proc.pid})" in second.stderr
        assert unfinished.read_bytes() == b"a rebuild under way"
        for name, (inode, _) in files.items():
            assert (site.store / name).stat().st_ino == inode, name  # none replaced
        assert first.status()["cache"]["events"]  # the first still reads its cache
    finally:
        first.stop()
