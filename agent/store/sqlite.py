"""Opening SQLite files the same way everywhere, and ordered migrations recorded in a table.

Each migration runs inside one transaction together with its row in `migrations`, so a crash
mid-migration leaves the file at the previous version (SQLite DDL is transactional).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import sqlite_utils

from agent.access import held_by_another
from agent.errors import StoreError

Migration = tuple[str, str]  # (name, SQL script)

# How long a statement waits for another connection's lock before "database is locked". Long
# enough for any write of this product (a journal commit with its fsync on a worn SD card);
# a file held by another process (a `sqlite3` shell, a backup) costs each open or read this
# long, which is why such waits run off the daemon's loop. Read at each open: the tests that
# hold a file on purpose shorten it, so that they do not spend 5 s per try waiting it out.
BUSY_TIMEOUT_S = 5.0


def open_database(path: Path | str, *, synchronous: str = "NORMAL", create_mode: int = 0o600,
                  readonly: bool = False) -> sqlite_utils.Database:
    """Open (creating with `create_mode`) a SQLite file in WAL mode with a busy timeout.

    Files are created 0600: the cache can hold attendee names and the journal is an audit log.
    `isolation_level=None` lets us issue explicit BEGIN/COMMIT so that a commit's durability is
    exactly where we say it is.
    """
    path = Path(path)
    if path.name != ":memory:" and not readonly:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            _create_private(path, create_mode)
    target = f"file:{path}?mode=ro" if readonly else str(path)
    conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False,
                           uri=readonly, timeout=BUSY_TIMEOUT_S)
    conn.execute(f"PRAGMA busy_timeout = {round(BUSY_TIMEOUT_S * 1000)}")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")
    return sqlite_utils.Database(conn)


def _create_private(path: Path, mode: int) -> None:
    """An empty file at `path` with `mode` (SQLite would make it 0644), unless one appeared.

    Never by opening `path` itself and closing it again: when another thread or process made
    the file since `exists()` said no and SQLite already holds it, closing any descriptor of it
    would drop every POSIX lock this process has on it (agent.access `immutable`, the same
    hazard). So it is made under a name of its own, closed, and linked into place; the link
    fails when the file is there already, which is then used as it is."""
    spare = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
    try:
        fd = os.open(spare, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    except OSError as exc:  # said of the file asked for, not of the spare name
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
    os.close(fd)
    try:
        os.link(spare, path)
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: made in place, if still missing
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))
        except FileExistsError:
            pass
    finally:
        os.unlink(spare)


def data_version(conn: sqlite3.Connection) -> int:
    """SQLite's `PRAGMA data_version`: changes when another connection (thread or process)
    committed to the file since this connection last asked; its own commits do not change it.
    The hot path uses it to know that nothing it read before can have changed."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def migrate(db: sqlite_utils.Database, migrations: Sequence[Migration]) -> list[str]:
    """Apply the migrations not yet recorded, in order, one transaction each. Returns names applied."""
    conn = db.conn
    conn.execute(
        "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT name FROM migrations")}
    applied: list[str] = []
    for name, script in migrations:
        if name in done:
            continue
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO migrations (name, applied_at) VALUES (?, datetime('now'))", (name,)
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"migration {name} failed: {exc}") from exc
        applied.append(name)
    return applied


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (our scripts contain no `;` inside literals)."""
    return [s.strip() for s in script.split(";") if s.strip()]


def integrity_ok(db: sqlite_utils.Database) -> str | None:
    """None when `PRAGMA quick_check` passes, else SQLite's complaint. A file another process
    holds ("database is locked": usually met by the open's first statement already) is
    raised, not returned: it is not damaged (agent.access `held_by_another`)."""
    try:
        rows = db.conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        if held_by_another(exc):
            raise
        return str(exc)
    result = [r[0] for r in rows]
    return None if result == ["ok"] else "; ".join(map(str, result[:3]))
