"""The scan journal: every decided scan, admits and refusals, durable before the gate opens.

Its own SQLite file with `synchronous=FULL` in WAL mode: `record()` returns only after the
commit has been fsynced, so a power cut after the relay pulses cannot lose the scan. It is also
the outbox for uploads (`upload_state`: pending -> sent, or quarantined with the platform's
reason; `local` for scans that cannot be uploaded, e.g. codes the platform has never issued),
read by walking `seq` from a cursor rather than through an index (migration 0006).
Rows are never deleted except sent rows past the retention period.
"""

from __future__ import annotations

import logging
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agent.access import held_hint, no_room, sqlite_file_access, store_write_failure
from agent.core.scanstate import OwnScan
from agent.errors import JournalUnavailable, StoreError, UsageError
from agent.store.journal_schema import MIGRATIONS
from agent.store.passages import settle_stale_waits
from agent.store.sqlite import data_version, integrity_ok, migrate, open_database

log = logging.getLogger(__name__)


# The upload holds every pending row from the oldest admit still waiting for its passage on
# (agent.store.passages): an entry that may yet be voided is never sent, and rows keep their
# order. The wait is bounded by the lane (passage_timeout_ms) and, should the lane be gone, by
# PASSAGE_HOLD_LIMIT_S (above the longest passage_timeout_ms, 120 s), after which an entry
# stands ("interrupted") and an exit is voided (agent.store.passages, docs/turnstile.md).
PASSAGE_HOLD_LIMIT_S = 300.0
_NOT_HELD = ("seq < COALESCE((SELECT MIN(scan_seq) FROM passages WHERE state = 'waiting'),"
             " 9223372036854775807)")

# An exit waiting for its passage has not happened yet for the scan state: taken as made, the
# ticket read as outside at every lane while its holder may not have passed (the ticket handed
# back over the barrier). One condition of the scan-state read: the waits are a handful, read
# once per statement through passages_state (an entry's row is never looked at).
_NOT_AWAITED = ("(direction = 'in' OR seq NOT IN (SELECT scan_seq FROM passages"
                " WHERE state = 'waiting' AND direction = 'out' AND scan_seq IS NOT NULL))")

UPLOAD_STATES = ("pending", "sent", "quarantined", "local")

# A venue claim in flight (agent.venue.claims): the admit is journaled (fsynced) while the bus
# has not answered yet, `venue = 'claiming'`. Such a row counts as an admit here (a second
# scan of the ticket is refused meanwhile) but is never uploaded nor published until the
# answer settles it: granted -> 'claimed', no answer under the `local` policy -> 'offline',
# anything else -> voided (VOIDED_CLAIM). A row left 'claiming' by a crash is settled by the
# bus's sweep from what the venue stream holds.
_NOT_CLAIMING = "venue IS NOT 'claiming'"
VOIDED_CLAIM = "venueVoided"

# The outbox (migration 0006): pending rows are walked by rowid from the cursor, which no
# pending row lies below. _PARKED must appear word for word in a query for SQLite to use the
# partial index scans_parked (it does not infer it from `upload_state = 'local'`).
_OUTBOX = "seq >= (SELECT low_seq FROM outbox) AND upload_state = 'pending'"
# Pending rows that may leave the device now: neither behind a passage wait nor in flight
# (the uploader's `claim_batch` and the venue hand-over's `ready` alike).
_SENDABLE = f"{_OUTBOX} AND {_NOT_HELD} AND {_NOT_CLAIMING}"
_PARKED = "upload_state IN ('quarantined', 'local')"
# Move the cursor up to the first pending row at or after it (or past the newest row): the
# walk covers only rows settled since it last moved, so the work is bounded by the uploads.
_ADVANCE_OUTBOX = (
    "UPDATE outbox SET low_seq = COALESCE("
    "(SELECT seq FROM scans WHERE seq >= outbox.low_seq AND upload_state = 'pending'"
    " ORDER BY seq LIMIT 1), (SELECT COALESCE(MAX(seq), 0) + 1 FROM scans))")


def new_scan_uuid() -> str:
    """A new scan's uuid: a time-ordered UUID (RFC 9562 version 7) as text.

    Why not random (version 4): a UNIQUE index on `uuid` (every scan's until migration 0007,
    a venue claim's since: scans_claims) then takes each new entry on a random leaf, so
    leaves split anywhere (more WAL pages per commit) and a checkpoint writes back a page for
    nearly every scan since the last one. A time-ordered uuid lands at
    the index's right edge, like `seq` in the table (issue 18: a checkpoint then costs what the
    floor's does). Layout: Unix time in milliseconds (48 bits), the version nibble 7, 12
    random bits, the RFC variant, 62 random bits: 74 random bits keep two gates' scans of the
    same millisecond apart. A clock set back only costs locality. The platform takes a scan's
    uuid as an opaque idempotency key (shared/nu-api README); the time it shows is the
    scan's `scannedOn` anyway. Also the venue claim's id (agent.venue.claims)."""
    # One hex of the 6 time bytes and 10 random ones; the version nibble (h[12]) is replaced
    # by 7 and the variant nibble (h[16]) mapped onto 8-b (issue 18: half the instructions of
    # hexing the two apart and reading the variant's nibble with int()).
    ms = time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF  # 48 bits, whatever the clock says
    h = (ms.to_bytes(6, "big") + os.urandom(10)).hex()
    return f"{h[:8]}-{h[8:12]}-7{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


# The top two bits of the clock_seq / rand_b octet are 10 (the RFC variant): a random nibble's
# low two bits pick one of 8, 9, a, b.
_VARIANT = {n: "89ab"[int(n, 16) & 3] for n in "0123456789abcdef"}


# One writer lock per journal file in this process. The daemon holds a connection per lane plus
# the uploader's; when two of them write at once, SQLite's busy handler makes the loser sleep in
# growing steps (1, 2, 5, 10 ms ...) instead of waking it when the lock is free. The fault tests
# saw those steps as 5-20 ms in the decision p99. Queueing on a Python lock first hands the
# file over at once; SQLite's own locking still guards writers in other processes (the CLI).
_WRITE_LOCKS: dict[Path, threading.Lock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _write_lock(path: Path) -> threading.Lock:
    key = path.resolve()
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(key, threading.Lock())


@dataclass(slots=True)
class JournalRow:
    """What a decided scan leaves behind; the upload job turns it into a platform ticket row.

    Not frozen, though nothing changes a row once built (a venue claim copies it with
    `dataclasses.replace`): a frozen dataclass of 22 fields sets each through
    `object.__setattr__`, 2-3 µs of every scan (issue 18); with slots it is a fifth of that."""

    uuid: str
    code: str
    kind: str
    barcode: str | None
    nfc_id: str | None
    item_id: int | None
    event_id: int | None
    zone_id: int | None
    zone_is_default: bool
    gate_id: int | None
    lane: str
    direction: str
    admit: bool
    status: str
    status_detail: str | None
    message: str
    scanned_on: str  # UTC ISO (agent.core.codes.utc_iso)
    upload_state: str = "pending"
    reason: str | None = None
    venue: str | None = None  # None | claimed | offline | claiming | void (migration 0003_venue)
    max_entries: int | None = None  # the lane's limit, recorded when a venue is configured
    tracks_exits: bool | None = None
    # this clock minus the venue bus server's when the scan was decided (None: not measured,
    # or no venue; journal migration 0008): published with the scan, however late
    clock_offset_s: float | None = None


_COLUMNS = ("uuid", "code", "kind", "barcode", "nfc_id", "item_id", "event_id", "zone_id",
            "zone_is_default", "gate_id", "lane", "direction", "admit", "status",
            "status_detail", "message", "scanned_on", "upload_state", "reason", "venue",
            "max_entries", "tracks_exits", "clock_offset_s")
_values = operator.attrgetter(*_COLUMNS)  # a JournalRow's values in column order, in C
_INSERT = (f"INSERT INTO scans ({', '.join(_COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in _COLUMNS)})")

# Python's sqlite3 binds int, float and str straight away, but hands every other value (None,
# True) to its adapter registry first, where a failed attribute lookup builds and drops an
# exception: about 300 ns per value, 2-3 µs for a scan's row. So a row goes in through one
# fixed statement whose columns that may be missing take NO_VALUE, a float, bound as it is and
# made NULL by NULLIF: no such column ever holds a float (ids and flags are integers, the rest
# text), so no value it should keep can be taken for it. `clock_offset_s`, the one float
# column, is bound as it is. The gate's usual scan (no venue: the last four columns stay NULL)
# uses the statement's first 19 columns (`insert_scan`, issue 18): its values are built
# straight from the decision, with no loop over them in Python.
NO_VALUE = 0.5
SCAN_COLUMNS = _COLUMNS[:19]
_MAY_BE_MISSING = frozenset(["barcode", "nfc_id", "item_id", "event_id", "zone_id", "gate_id",
                             "status_detail", "reason", "venue", "max_entries",
                             "tracks_exits"])
_MISSING_AT = tuple(column in _MAY_BE_MISSING for column in _COLUMNS)


def _insert_of(columns: tuple[str, ...]) -> str:
    return (f"INSERT INTO scans ({', '.join(columns)}) VALUES ("
            + ", ".join(f"NULLIF(?, {NO_VALUE})" if column in _MAY_BE_MISSING else "?"
                        for column in columns) + ")")


_INSERT_ROW = _insert_of(_COLUMNS)
_INSERT_SCAN = _insert_of(SCAN_COLUMNS)


# `+admit`/`+zone_id`: filters, not index choices (scans_admits would otherwise tempt the
# planner into a whole-index scan). `local` rows are unknown codes: no item, no zone, never an
# admit, so they cannot count and are not read.
# An exit waiting for its passage frees no place in the zone yet (_NOT_AWAITED), as it frees
# no ticket: counted, a full zone admitted one more while the holder may not have left.
_FLOW = ("SELECT COALESCE(SUM(CASE direction WHEN 'in' THEN 1 ELSE -1 END), 0) FROM scans"
         f" WHERE +zone_id = ?1 AND +admit = 1 AND {_NOT_AWAITED} AND")
_UNACKNOWLEDGED_FLOW = (
    f"SELECT ({_FLOW} {_OUTBOX})"
    f" + ({_FLOW} upload_state = 'quarantined' AND {_PARKED})"
    f" + ({_FLOW} upload_state = 'sent' AND sent_at >= ?2)")


class _ScanTransaction:
    """`Journal.scan_transaction()` as a plain context manager: one per journal, reused by
    every scan (a generator-based one costs a generator, a wrapper object and two frames per
    scan). It holds no state of its own between enter and exit; the writer lock makes the
    uses of one journal take turns, as before."""

    __slots__ = ("journal",)

    def __init__(self, journal: Journal):
        self.journal = journal

    def __enter__(self) -> None:
        journal = self.journal
        journal._lock.acquire()  # in-process writers queue here (see _WRITE_LOCKS)
        try:
            journal._cursor.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            journal._lock.release()
            raise journal.write_failed(exc) from exc
        except BaseException:
            journal._lock.release()
            raise

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> Literal[False]:
        journal = self.journal
        try:
            if kind is None:
                try:
                    journal._cursor.execute("COMMIT")
                    return False
                except sqlite3.Error as error:
                    exc = error
                except BaseException:
                    journal._rollback()
                    raise
            journal._rollback()
            if isinstance(exc, sqlite3.Error):
                raise journal.write_failed(exc) from exc
            return False  # anything else goes on as it was raised
        finally:
            journal._lock.release()


class Journal:
    """The journal file (`<store.dir>/journal.db`). Never deleted, never rebuilt."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            self.db = open_database(self.path, synchronous="FULL")
            problem = integrity_ok(self.db)
            if problem:
                raise JournalUnavailable(
                    f"scan journal {self.path} is damaged ({problem}); it is kept as it is — "
                    "copy it aside for recovery before starting with a new one")
            migrate(self.db, MIGRATIONS)
        except (sqlite3.Error, StoreError) as exc:
            # not this user's file (or a read-only or full disk) is said as such, never as damage
            access = None if self.path.name == ":memory:" else \
                sqlite_file_access(self.path) or no_room(self.path)
            if access is not None:
                raise JournalUnavailable(f"scan journal {access}") from exc
            if isinstance(exc, JournalUnavailable):
                raise
            if isinstance(exc, StoreError):
                raise JournalUnavailable(str(exc)) from exc
            raise JournalUnavailable(f"scan journal {self.path} cannot be opened: {exc}"
                                     f"{held_hint(self.path, exc)}") from exc
        self.conn = self.db.conn
        self._lock = _write_lock(self.path)
        # The scan transaction's own cursor, used only while `_lock` is held (its BEGIN, the
        # scan's INSERT, its COMMIT), so never by two threads at once: `conn.execute` makes
        # and frees a cursor per statement, ~1.3k instructions each (issue 18).
        self._cursor = self.conn.cursor()
        self._transaction = _ScanTransaction(self)
        self._check_outbox()

    def _check_outbox(self) -> None:
        """At open, like the integrity check: a pending row below the outbox cursor would never
        be uploaded. None can be there unless the file was edited by hand (or by a bug); then
        the cursor moves down to it, and the upload sends it (a rowid walk of the rows below
        the cursor, already read by the quick_check just before)."""
        try:
            lost = self.conn.execute(
                "SELECT MIN(seq) FROM scans WHERE seq < (SELECT low_seq FROM outbox)"
                " AND upload_state = 'pending'").fetchone()[0]
            if lost is not None:
                log.warning("scan journal %s: pending rows from seq %d were below the outbox"
                            " cursor; they will be uploaded", self.path, lost)
                with self._write():
                    self.conn.execute("UPDATE outbox SET low_seq = MIN(low_seq, ?)", (lost,))
        except sqlite3.Error as exc:
            self.conn.close()
            raise self.read_failed(exc) from exc

    def data_version(self) -> int:
        """Changes whenever another connection commits to this file (agent.store.sqlite)."""
        return data_version(self.conn)

    def read_failed(self, exc: sqlite3.Error) -> JournalUnavailable:
        """A read refused, naming the file and, when another process holds it, how to find it."""
        return JournalUnavailable(
            f"scan journal {self.path} cannot be read: {exc}{held_hint(self.path, exc)}")

    def write_failed(self, exc: sqlite3.Error) -> JournalUnavailable:
        """A write refused while running — the disk full, the file (or its -wal, -shm or
        directory) no longer this user's or marked immutable, the file system read-only —
        named with what to type (agent.access.store_write_failure): the lanes report it and
        status says it. Nothing is retried here: the next write tries again, so the gate
        journals again by itself once the cause is gone."""
        return JournalUnavailable(
            f"scan journal {self.path} is not writable: {store_write_failure(self.path, exc)}")

    def close(self) -> None:
        self.conn.close()

    def scan_transaction(self) -> _ScanTransaction:
        """The write transaction a scan is decided in: from reading the ticket's scan state to
        committing its row (fsync). Two lanes, or the daemon and a technician's `gate-agent
        scan`, deciding one ticket at the same instant take turns, so the second sees the
        first's admit — a copied single-access ticket shown at two gates gets in once.
        Any SQLite failure (locked past the busy timeout, disk full, read-only) is rolled back
        and raised as JournalUnavailable: the caller must not admit on it."""
        return self._transaction

    def insert(self, row: JournalRow) -> int:
        """Add one scan inside `scan_transaction()` (see _INSERT_ROW: a missing value as
        NO_VALUE, flags as 0/1, which is what SQLite stores for a bool). Returns its seq: the
        way back to it (no index on uuid, migration 0007)."""
        return self._cursor.execute(_INSERT_ROW, [
            NO_VALUE if value is None and missing else
            int(value) if value.__class__ is bool else value
            for value, missing in zip(_values(row), _MISSING_AT, strict=True)]).lastrowid or 0

    def insert_scan(self, values: tuple[Any, ...]) -> int:
        """Add the gate's usual scan (no venue) inside `scan_transaction()` from its values in
        `SCAN_COLUMNS` order, each exactly an int or a str, a missing one given as NO_VALUE
        (see _INSERT_SCAN; `agent.runtime.gate._journal_values` builds them). Returns its seq."""
        return self._cursor.execute(_INSERT_SCAN, values).lastrowid or 0

    def record(self, row: JournalRow) -> int:
        """Insert and commit (fsync) one scan on its own. Returns its seq."""
        with self.scan_transaction():
            return self.insert(row)

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    # -- scan state -------------------------------------------------------------------------

    def own_admits(self, event_id: int, item_id: int) -> list[OwnScan]:
        """This device's admitted scans of one item (all zones), oldest first. An exit still
        waiting for its passage is not one yet (_NOT_AWAITED): the ticket stays inside for
        every lane until the turnstile confirms it, or it is voided (agent.store.passages)."""
        return [OwnScan(*r) for r in self.conn.execute(
            "SELECT uuid, zone_id, direction, scanned_on FROM scans"
            f" WHERE item_id = ? AND event_id = ? AND admit = 1 AND {_NOT_AWAITED}"
            " ORDER BY seq", (item_id, event_id))]

    def unacknowledged_flow(self, zone_id: int, acknowledged_before: str | None) -> int:
        """Admits in minus admits out of a zone made here that the platform has not yet
        acknowledged: every row not uploaded (pending, quarantined, local) plus those marked
        sent at or after `acknowledged_before` (UTC ISO; None: no upload is acknowledged).
        Bounded by what is not acknowledged: the outbox walked from its cursor, the quarantined
        rows and the rows sent since `acknowledged_before` (index scans_sent)."""
        row = self.conn.execute(_UNACKNOWLEDGED_FLOW, (zone_id, acknowledged_before or "")
                                ).fetchone()
        return int(row[0])

    # -- venue --------------------------------------------------------------------------------

    def after(self, seq: int, limit: int) -> list[dict[str, Any]]:
        """Rows journaled after `seq`, in order: what the venue publisher sends next; an
        exit still waiting for its passage has `passage_awaited` (it goes out so)."""
        return _rows(self.conn.execute(
            "SELECT *, direction = 'out' AND admit = 1 AND EXISTS (SELECT 1 FROM passages p"
            " WHERE p.uuid = scans.uuid AND p.state = 'waiting') AS passage_awaited"
            " FROM scans WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)))

    def exit_outcomes(self, uuids: list[str]
                      ) -> dict[str, tuple[bool, dict[str, Any] | None]]:
        """For exits this gate published as awaiting their passage: uuid -> (stands, its
        row) once settled — True: passed, or stands (input not watched); False: voided (the
        row a refusal now). Left out: still waiting, or not in the journal (a claim whose
        commit never came: the venue sweep's). Found through `passages` (its uuid key) and,
        for a claim that never waited, scans_claims. The row is None when it was pruned (sent
        past retention while the bus was down, or before venue.db had applied the claim):
        `passages` keeps the outcome, and the caller has the scan as the stream holds it."""
        out: dict[str, tuple[bool, dict[str, Any] | None]] = {}
        for start in range(0, len(uuids), 500):
            part = uuids[start:start + 500]
            marks = ','.join('?' * len(part))
            for row in _rows(self.conn.execute(
                    "SELECT s.*, p.uuid AS awaited, p.state AS passage FROM passages p"
                    " LEFT JOIN scans s ON s.seq = p.scan_seq AND s.uuid = p.uuid"
                    f" WHERE p.uuid IN ({marks}) AND p.state <> 'waiting'", part)):
                kept = row if row["seq"] is not None else None
                out[row["awaited"]] = (row["passage"] != "voided"
                                       and (kept is None or bool(kept["admit"])), kept)
            rest = [u for u in part if u not in out]
            if rest:
                for row in _rows(self.conn.execute(
                        "SELECT *, NULL AS passage FROM scans WHERE venue IS NOT NULL AND uuid IN"
                        f" ({','.join('?' * len(rest))}) AND NOT EXISTS (SELECT 1 FROM passages p"
                        " WHERE p.uuid = scans.uuid)", rest)):
                    out[row["uuid"]] = (bool(row["admit"]), row)
        return out

    def admitted(self, uuids: list[str]) -> set[str]:
        """Which of these claim uuids are journaled as admits (a claim without one must go)."""
        return {uuid for uuid, admit in self._claim_rows(uuids).items() if admit}

    def _claim_rows(self, uuids: list[str]) -> dict[str, bool]:
        """uuid -> admit of the rows journaled with these claim uuids. A claim's row always
        carries its venue mark (agent.venue.claims `Claim.mark`; a voided one 'void'), so
        scans_claims finds it."""
        out: dict[str, bool] = {}
        for start in range(0, len(uuids), 500):
            part = uuids[start:start + 500]
            out.update((r[0], bool(r[1])) for r in self.conn.execute(
                "SELECT uuid, admit FROM scans WHERE venue IS NOT NULL"
                f" AND uuid IN ({','.join('?' * len(part))})",
                part))
        return out

    def venue_counts(self) -> dict[str, int]:
        """Scans decided with the venue's grant and without the bus (policy applied)."""
        out = {"claimed": 0, "offline": 0}
        for mark, n in self.conn.execute(
                "SELECT venue, COUNT(*) FROM scans WHERE venue IS NOT NULL GROUP BY venue"):
            out[mark] = n
        return out

    def settle_claim(self, uuid: str, venue: str) -> bool:
        """A claim in flight was answered and its admit stands: the row leaves 'claiming'
        (`venue`: claimed | offline) and may be uploaded and published. Not fsynced: the
        admit itself is; if this change is lost, the sweep settles the row the same way
        from the venue stream (`claiming_rows`). False: the row was not 'claiming'."""
        return self.settle_claims([(uuid, venue)]) == 1

    def settle_claims(self, answered: list[tuple[str, str]]) -> int:
        """`settle_claim` for several rows in one transaction; how many were 'claiming'."""
        if not answered:
            return 0
        with self._unsynced_write():
            return sum(self.conn.execute(
                "UPDATE scans SET venue = ? WHERE uuid = ? AND venue = 'claiming'",
                (venue, uuid)).rowcount for uuid, venue in answered)

    def void_claim(self, uuid: str, reason: str) -> bool:
        """A claim in flight was not granted: its admit did not happen (the gate never
        opened), so the row becomes a refusal kept only here (`local`, never uploaded or
        published, no longer an admit) with the reason. Not fsynced, like `settle_claim`.
        False: the row was not 'claiming'."""
        with self._unsynced_write():
            return self.conn.execute(
                "UPDATE scans SET admit = 0, status = 'denied', status_detail = ?, message = ?,"
                " venue = 'void', upload_state = 'local', reason = ?, batch_uuid = NULL"
                " WHERE uuid = ? AND venue = 'claiming' AND upload_state = 'pending'",
                (VOIDED_CLAIM, "Venue claim not granted; decided again", reason[:1000],
                 uuid)).rowcount == 1

    def claiming_rows(self, through_seq: int, scanned_before: str = "") -> list[dict[str, Any]]:
        """Rows still waiting for their claim's answer (a walk of the outbox): those journaled
        at or before `through_seq` (after a restart: the journal's last seq when this process
        began, so the rows an earlier process left behind), and those scanned before
        `scanned_before` (UTC ISO; "" for none). Which process wrote a row is told by its
        seq, never by its time: a clock stepped back at boot stamps this process's rows
        before the last one's."""
        return _rows(self.conn.execute(
            f"SELECT uuid, event_id, item_id, scanned_on FROM scans WHERE {_OUTBOX}"
            " AND venue = 'claiming' AND (seq <= ? OR scanned_on < ?) ORDER BY seq",
            (through_seq, scanned_before)))

    def last_seq(self) -> int:
        """The seq of the newest row (0 when empty): rows up to it were journaled before now."""
        return int(self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM scans").fetchone()[0])

    # -- outbox ---------------------------------------------------------------------------

    def pending(self, limit: int) -> list[dict[str, Any]]:
        """The oldest pending scans, in scan order."""
        cur = self.conn.execute(
            f"SELECT * FROM scans WHERE {_OUTBOX} ORDER BY seq LIMIT ?", (limit,))
        return _rows(cur)

    def ready(self, limit: int) -> list[dict[str, Any]]:
        """The oldest pending scans that may leave this device now, in scan order: not held
        by an admit waiting for its passage, nor waiting for a venue claim's answer (what a
        gate in venue mode hands to the venue's uploader; `claim_batch` applies the same
        holds). Waits past PASSAGE_HOLD_LIMIT_S are settled first, as there."""
        with self._write():
            settle_stale_waits(self.conn, PASSAGE_HOLD_LIMIT_S)
        return _rows(self.conn.execute(
            f"SELECT * FROM scans WHERE {_SENDABLE} ORDER BY seq LIMIT ?", (limit,)))

    def batch(self, batch_uuid: str) -> list[dict[str, Any]]:
        """The pending rows of a batch whose request uuid was already fixed, in scan order."""
        cur = self.conn.execute(
            f"SELECT * FROM scans WHERE {_OUTBOX} AND batch_uuid = ? ORDER BY seq",
            (batch_uuid,))
        return _rows(cur)

    def rows(self, states: tuple[str, ...] = ("pending", "quarantined", "local"),
             limit: int = 1000) -> list[dict[str, Any]]:
        """The oldest rows in these upload states, in scan order (the technician's queue
        listing): pending ones from the outbox cursor, the others from their indexes."""
        found = self.pending(limit) if "pending" in states else []
        for state in {s for s in states if s != "pending"}:  # each in index order, no sort
            parked = f" AND {_PARKED}" if state != "sent" else ""  # sent: a walk, rarely asked
            found += _rows(self.conn.execute(
                f"SELECT * FROM scans WHERE upload_state = ?{parked} ORDER BY seq LIMIT ?",
                (state, limit)))
        return sorted(found, key=operator.itemgetter("seq"))[:limit]

    def claim_batch(self, limit: int, new_uuid: str) -> list[dict[str, Any]]:
        """The next batch to send, claimed in one write transaction: the oldest pending row's
        batch as it was fixed, else up to `limit` unclaimed pending rows under `new_uuid`.

        The claim is a guarded update (`... AND batch_uuid IS NULL`) inside BEGIN IMMEDIATE, so
        two uploaders (the daemon and a technician's `gate-agent upload`, each with its own
        connection) never give the same rows two request uuids: the second one to claim sees
        the first one's uuid and sends that very batch (which the platform deduplicates)."""
        with self._write():
            settle_stale_waits(self.conn, PASSAGE_HOLD_LIMIT_S)
            head = self.conn.execute(
                f"SELECT batch_uuid FROM scans WHERE {_SENDABLE} ORDER BY seq LIMIT 1"
            ).fetchone()
            if head is None:
                return []
            if head[0] is None:
                free = [r[0] for r in self.conn.execute(
                    f"SELECT seq FROM scans WHERE {_SENDABLE} AND batch_uuid IS NULL"
                    " ORDER BY seq LIMIT ?", (limit,))]
                self.conn.executemany(
                    "UPDATE scans SET batch_uuid = ?, attempts = 0 WHERE seq = ?"
                    " AND upload_state = 'pending' AND batch_uuid IS NULL",
                    [(new_uuid, seq) for seq in free])
            return self.batch(head[0] or new_uuid)

    def regroup(self, old_batch: str, quarantined: list[tuple[str, str]],
                batches: list[tuple[str, list[str]]]) -> bool:
        """Settle a refused batch in one transaction: quarantine `(uuid, reason)` rows and give
        each remaining part its own new request uuid — all before anything is resent, so no
        request uuid ever names two different sets of rows, even across a crash.

        Guarded: every row must still be pending in `old_batch`. If another uploader settled
        or split it first, nothing changes and False is returned (send nothing then)."""
        try:
            with self._write():
                self._regroup(old_batch, quarantined, batches)
        except _Taken:
            return False
        return True

    def _regroup(self, old_batch: str, quarantined: list[tuple[str, str]],
                 batches: list[tuple[str, list[str]]]) -> None:
        changed = 0
        seq_of = self._pending_seqs([u for u, _ in quarantined]
                                    + [u for _, uuids in batches for u in uuids])
        for u, why in quarantined:
            changed += self.conn.execute(
                "UPDATE scans SET upload_state = 'quarantined', reason = ?, batch_uuid = NULL"
                " WHERE seq = ? AND batch_uuid = ? AND upload_state = 'pending'",
                (why[:1000], seq_of.get(u), old_batch)).rowcount
        for batch_uuid, uuids in batches:
            for u in uuids:
                changed += self.conn.execute(
                    "UPDATE scans SET batch_uuid = ?, attempts = 0 WHERE seq = ?"
                    " AND batch_uuid = ? AND upload_state = 'pending'",
                    (batch_uuid, seq_of.get(u), old_batch)).rowcount
        if changed != len(quarantined) + sum(len(u) for _, u in batches):
            raise _Taken  # rolled back by `_write`
        self.conn.execute(_ADVANCE_OUTBOX)

    def note_undelivered(self, batch_uuid: str, reason: str, max_tries: int) -> int:
        """A try of the batch that the platform answered without confirming it: count it and
        keep the reason beside the rows (still pending, same request uuid). After `max_tries`
        such answers the rows are quarantined with the reason. Returns rows quarantined."""
        with self._write():
            self.conn.execute(
                "UPDATE scans SET attempts = attempts + 1, reason = ? WHERE batch_uuid = ?"
                f" AND {_OUTBOX}", (reason[:1000], batch_uuid))
            cur = self.conn.execute(
                "UPDATE scans SET upload_state = 'quarantined', batch_uuid = NULL,"
                " reason = 'after ' || attempts || ' tries: ' || reason"
                f" WHERE batch_uuid = ? AND {_OUTBOX} AND attempts >= ?",
                (batch_uuid, max_tries))
            self.conn.execute(_ADVANCE_OUTBOX)
            return cur.rowcount

    def mark_sent(self, uuids: list[str], sent_at: str) -> int:
        """The platform (or the venue's uploader) has these pending rows. Returns how many
        were still pending and are now sent (fewer when another uploader marked some first)."""
        with self._write():
            marked = self.conn.executemany(
                "UPDATE scans SET upload_state = 'sent', sent_at = ?, reason = NULL WHERE seq = ?",
                [(sent_at, seq) for seq in self._pending_seqs(uuids).values()]).rowcount
            self.conn.execute(_ADVANCE_OUTBOX)
        return max(marked, 0)

    def quarantine(self, uuid: str, reason: str) -> None:
        """Park a pending row with the platform's reason (a technician may retry it)."""
        with self._write():
            self.conn.executemany(
                "UPDATE scans SET upload_state = 'quarantined', reason = ?, batch_uuid = NULL"
                " WHERE seq = ?", [(reason[:1000], s) for s in self._pending_seqs([uuid]).values()])
            self.conn.execute(_ADVANCE_OUTBOX)

    def _pending_seqs(self, uuids: list[str]) -> dict[str, int]:
        """uuid -> seq of the pending rows with these uuids (the one way the upload's answers
        find their rows). No index on uuid (migration 0007): the outbox is walked from its
        cursor, and the walk stops at the last one found; a batch is the oldest sendable
        rows, so it is found near the start of the walk."""
        seqs: dict[str, int] = {}
        for start in range(0, len(uuids), 500):
            part = uuids[start:start + 500]
            seqs.update(self.conn.execute(
                f"SELECT uuid, seq FROM scans WHERE {_OUTBOX}"
                f" AND uuid IN ({','.join('?' * len(part))}) ORDER BY seq LIMIT ?",
                (*part, len(part))))
        return seqs

    def retry_quarantined(self, uuids: list[str] | None = None) -> int:
        """Put quarantined rows back in the outbox (a technician's `queue retry`); the outbox
        cursor moves down to the oldest of them in the same transaction. A uuid given that is
        not a quarantined scan is a UsageError naming it, and nothing is put back (a typo
        must not read as "0 put back")."""
        with self._write():
            if uuids:
                found = {u: [r[0] for r in self.conn.execute(
                    "SELECT seq FROM scans WHERE uuid = ? AND upload_state = 'quarantined'"
                    f" AND {_PARKED}", (u,))] for u in dict.fromkeys(uuids)}
                unknown = [u for u, rows in found.items() if not rows]
                if unknown:
                    raise UsageError(
                        f"not a quarantined scan in this journal: {', '.join(unknown)} "
                        "(`gate-agent queue --json` lists them with their uuids); nothing "
                        "was put back")
                seqs = [seq for rows in found.values() for seq in rows]
            else:
                seqs = [r[0] for r in self.conn.execute(
                    f"SELECT MIN(seq) FROM scans WHERE upload_state = 'quarantined'"
                    f" AND {_PARKED}") if r[0] is not None]
            if not seqs:
                return 0
            self.conn.execute("UPDATE outbox SET low_seq = MIN(low_seq, ?)", (min(seqs),))
            if uuids:
                cur = self.conn.executemany(
                    "UPDATE scans SET upload_state = 'pending', batch_uuid = NULL"
                    " WHERE seq = ? AND upload_state = 'quarantined'", [(s,) for s in seqs])
            else:
                cur = self.conn.execute(
                    "UPDATE scans SET upload_state = 'pending', batch_uuid = NULL"
                    f" WHERE upload_state = 'quarantined' AND {_PARKED}")
            return cur.rowcount

    def hand_over_again(self, since: str, before: str | None = None) -> int:
        """Rows marked sent at or after `since` (UTC ISO; and before `before`, if given) back
        to the outbox, the cursor moved down to the oldest of them in the same transaction: the
        venue's upload stream they were handed to was lost before the leader uploaded them all
        (agent.venue.uplink `adopt_upload_stream`). Which of them the platform has, this gate
        cannot know; those go again harmlessly (the platform keeps a scan uuid once). Returns
        how many."""
        where = "upload_state = 'sent' AND sent_at >= ?" + \
            ("" if before is None else " AND sent_at < ?")
        bounds = (since,) if before is None else (since, before)
        with self._write():
            low = self.conn.execute(f"SELECT MIN(seq) FROM scans WHERE {where}",
                                    bounds).fetchone()[0]
            if low is None:
                return 0
            self.conn.execute("UPDATE outbox SET low_seq = MIN(low_seq, ?)", (low,))
            cur = self.conn.execute(
                "UPDATE scans SET upload_state = 'pending', sent_at = NULL, batch_uuid = NULL"
                f" WHERE {where}", bounds)
            return cur.rowcount

    def prune_sent(self, older_than: str) -> int:
        """Delete sent rows past retention — never the newest row: without AUTOINCREMENT
        (migration 0005) SQLite gives a new row MAX(seq) + 1, so keeping the newest row keeps
        every seq ever handed out unique and growing (the venue publisher resumes by seq).
        The newest scan time of the venue rows deleted moves the prune horizon up in the same
        transaction (`unjournaled`). Their settled `passages` rows go with them — an entry's
        (no one asks an entry's outcome) and an exit's decided without a venue (never on a
        bus) — except a venue exit's: its outcome is what its gate still owes the venue if
        the bus never had its confirmation (`exit_outcomes`); the bus lets it go once it no
        longer awaits (`forget_exit_outcomes`)."""
        where = ("upload_state = 'sent' AND sent_at < ?1"
                 " AND seq < (SELECT MAX(seq) FROM scans)")
        with self._write():
            self.conn.execute(
                "INSERT INTO prune_horizon (one, scanned_through) SELECT 1, MAX(scanned_on)"
                f" FROM scans WHERE {where} AND venue IS NOT NULL"
                " HAVING MAX(scanned_on) IS NOT NULL"
                " ON CONFLICT (one) DO UPDATE SET scanned_through ="
                " MAX(scanned_through, excluded.scanned_through)", (older_than,))
            self.conn.execute(
                "DELETE FROM passages WHERE state <> 'waiting' AND uuid IN (SELECT uuid FROM"
                f" scans WHERE {where} AND (direction = 'in' OR tracks_exits IS NULL))",
                (older_than,))
            return self.conn.execute(f"DELETE FROM scans WHERE {where}", (older_than,)).rowcount

    def forget_exit_outcomes(self, awaiting: list[str]) -> int:
        """Delete the settled `passages` rows of exits whose scan row was pruned, except those
        in `awaiting`: the exits the venue bus still holds as awaiting their passage, as a
        venue.db that has applied the whole stream says (the caller's: agent.venue.bus). Any
        other such exit's outcome is asked by no one again — its confirmation or void is on
        the stream, or it never went out awaiting, and a pruned row is never published. Kept
        by `prune_sent` until then; without this they grew all season. Returns how many."""
        kept = set(awaiting)
        with self._write():
            gone = [u for (u,) in self.conn.execute(
                "SELECT uuid FROM passages p WHERE state <> 'waiting' AND direction = 'out'"
                " AND NOT EXISTS (SELECT 1 FROM scans s WHERE s.seq = p.scan_seq)")
                    if u not in kept]
            self.conn.executemany("DELETE FROM passages WHERE uuid = ?", [(u,) for u in gone])
        return len(gone)

    def unjournaled(self, claims: list[dict[str, Any]]) -> set[str]:
        """Which of this gate's claims on the venue bus (`uuid`, and `scanned_on` as the
        stream holds it, or as the lane stamped it for a void handed back) the journal can say
        were never admitted here. What the venue sweep voids. Its row here and not an admit
        (refused after the claim, a passage voided): never admitted, whenever scanned. No row:
        never admitted only when scanned after the prune horizon (migration 0009); one
        scanned at or before it, or whose time is not known, may be an admit whose row was
        pruned after its upload: voided, an entry days old would free its ticket at every
        gate (a restart's sweep judges every claim again); it stands instead, the side that
        never admits twice."""
        horizon = self.conn.execute("SELECT scanned_through FROM prune_horizon").fetchone()
        journaled = self._claim_rows([c["uuid"] for c in claims])
        return {c["uuid"] for c in claims if not journaled.get(c["uuid"], False) and (
            c["uuid"] in journaled or horizon is None
            or (c.get("scanned_on") is not None and c["scanned_on"] > horizon[0]))}

    def pending_count(self, at_most: int | None = None) -> int:
        """How many rows the outbox holds, counting no further than `at_most` (the "full batch
        waiting" check after each scan needs no more): a rowid walk from the outbox cursor."""
        return int(self.conn.execute(
            f"SELECT COUNT(*) FROM (SELECT 1 FROM scans WHERE {_OUTBOX} LIMIT ?)",
            (-1 if at_most is None else at_most,)).fetchone()[0])

    def counts(self) -> dict[str, Any]:
        """Rows per upload state (`local` without the rows of voided venue claims, counted as
        `voided`); JournalUnavailable (not a bare sqlite3 error, which would
        take the status endpoint down with it) when the file cannot be read."""
        out: dict[str, Any] = {state: 0 for state in UPLOAD_STATES}
        out["voided"] = 0  # venue claims in flight not granted: kept locally, not local-only codes
        try:
            for state, voided, n in self.conn.execute(
                    f"SELECT upload_state, venue IS 'void', COUNT(*) FROM scans WHERE {_PARKED}"
                    " GROUP BY upload_state, venue IS 'void'"):
                out["voided" if voided else state] += n
            out["sent"] = self.conn.execute(
                "SELECT COUNT(*) FROM scans WHERE upload_state = 'sent'").fetchone()[0]
            row = self.conn.execute(
                f"SELECT COUNT(*), MIN(scanned_on) FROM scans WHERE {_OUTBOX}").fetchone()
        except sqlite3.Error as exc:
            raise self.read_failed(exc) from exc
        out["pending"], out["oldest_pending"] = row
        return out

    @contextmanager
    def _unsynced_write(self) -> Iterator[None]:
        """A write transaction whose commit is not fsynced (synchronous=NORMAL in WAL mode: the
        next fsynced commit, or a checkpoint, makes it durable). Only for changes a crash may
        lose because something else restores them."""
        with self._write(unsynced=True):
            yield

    @contextmanager
    def _write(self, unsynced: bool = False) -> Iterator[None]:
        """A write transaction; any SQLite failure becomes JournalUnavailable. `unsynced`
        switches this connection to synchronous=NORMAL for it, and back, under the writer
        lock. Switched before taking it, while another thread was inside a scan's transaction
        on this connection (one Journal shared by threads: the bus's), SQLite refused the
        switch ("Safety level may not be changed inside a transaction") and the settle or void
        of a claim failed with a bare sqlite3 error (tests/store/test_unsynced_write.py)."""
        with self._lock:
            if unsynced:
                self.conn.execute("PRAGMA synchronous = NORMAL")
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                yield
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise self.write_failed(exc) from exc
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            finally:
                if unsynced:
                    self.conn.execute("PRAGMA synchronous = FULL")


class _Taken(Exception):
    """Another uploader changed the batch first (see `Journal.regroup`)."""


def _rows(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def iter_all(journal: Journal) -> Iterator[dict[str, Any]]:
    cur = journal.conn.execute("SELECT * FROM scans ORDER BY seq")
    names = [d[0] for d in cur.description]
    for r in cur:
        yield dict(zip(names, r, strict=True))
