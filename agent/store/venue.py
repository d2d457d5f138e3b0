"""What this gate knows of the venue: other gates' scans from the bus, and where it stands.

Its own SQLite file (`<store.dir>/venue.db`), separate from the journal: it is derived from the
venue's stream and can be rebuilt from it, so it needs no fsync per message. Every batch of
messages is applied in one transaction together with the stream position it reaches, so a
restart (or a power cut that loses the last batches) resumes from a position whose effects are
exactly what the file holds: nothing missed, nothing counted twice (rows are also unique by scan
uuid, so a message re-published after the bus's de-duplication window is still counted once).

Conflicts — a ticket admitted beyond its limit by gates that could not see each other — are
found here, when a scan is applied, by folding the ticket's admits in the zone in time order.

Time order is `bus_time`: when the scan happened on the bus server's clock (agent.venue.
messages `bus_time`), never the sending gate's own `scanned_on`. Gates on a venue LAN often
have no NTP and no real-time clock, so their clocks are minutes or hours apart; ordered by
them, a gate 3 minutes fast makes its exit read as later than an entry made after it, and a
pass-back is admitted. `scanned_on` is kept as the gate stamped it (the record, and what the
leader uploads).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.access import held_hint, no_room, sqlite_file_access
from agent.core.codes import parse_platform_time, shift_utc_iso
from agent.core.model import ZoneScan
from agent.errors import StoreError, VenueUnavailable
from agent.store.sqlite import data_version, migrate, open_database

VENUE_FILE = "venue.db"

MIGRATIONS = [
    ("0001_venue", """
        CREATE TABLE venue_scans (
            stream_seq INTEGER PRIMARY KEY,
            uuid TEXT NOT NULL UNIQUE,
            device TEXT NOT NULL,
            lane TEXT,
            event_id INTEGER,
            item_id INTEGER,
            zone_id INTEGER,
            zone_is_default INTEGER NOT NULL DEFAULT 0,
            direction TEXT NOT NULL,
            admit INTEGER NOT NULL,
            status TEXT,
            scanned_on TEXT NOT NULL,
            offline INTEGER NOT NULL DEFAULT 0,
            max_entries INTEGER NOT NULL DEFAULT 0,
            tracks_exits INTEGER NOT NULL DEFAULT 0,
            voided INTEGER NOT NULL DEFAULT 0);
        CREATE INDEX venue_scans_item ON venue_scans(item_id, event_id);
        CREATE INDEX venue_scans_device ON venue_scans(device, admit, voided);
        CREATE TABLE venue_subjects (subject TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
        CREATE TABLE venue_position (stream TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
        CREATE TABLE venue_cursor (name TEXT PRIMARY KEY, journal_seq INTEGER NOT NULL);
        CREATE TABLE venue_conflicts (
            uuid TEXT PRIMARY KEY,
            event_id INTEGER, item_id INTEGER, zone_id INTEGER,
            device TEXT, lane TEXT, scanned_on TEXT, offline INTEGER,
            detail TEXT NOT NULL, detected_at TEXT NOT NULL)
    """),
    # which incarnation of the stream the position counts in: its creation time (a stream
    # deleted and made again restarts its sequences at 1; agent.venue.stream_identity)
    ("0004_stream_identity", """
        CREATE TABLE venue_stream_identity (stream TEXT PRIMARY KEY, created TEXT NOT NULL)
    """),
    # the scan's time on the bus server's clock (utc_iso; NULL: unknown, before every dated
    # scan). Rows applied before it have only the sender's clock: they keep that, as before.
    ("0005_bus_time", """
        ALTER TABLE venue_scans ADD COLUMN bus_time TEXT;
        UPDATE venue_scans SET bus_time = scanned_on
    """),
    # an exit whose turnstile passage its gate still waits for (`passageAwaited` on the bus):
    # not yet happened for every reader (the ticket stays inside) until its gate confirms it
    # (a later message of the same scan without the flag) or voids it. The partial index is
    # the sending gate's list of its own exits still to confirm or void (agent.venue.bus).
    ("0006_passage_awaited", """
        ALTER TABLE venue_scans ADD COLUMN awaiting INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX venue_scans_awaiting ON venue_scans(device) WHERE awaiting = 1
    """),
]


@dataclass(frozen=True)
class BusScan:
    """One scan as the bus carries it (a decoded message of the venue's stream)."""

    uuid: str
    device: str
    lane: str | None
    event_id: int | None
    item_id: int | None
    zone_id: int | None
    zone_is_default: bool
    direction: str
    admit: bool
    status: str | None
    scanned_on: str  # UTC ISO, on the sending gate's clock
    offline: bool = False
    max_entries: int = 0
    tracks_exits: bool = False
    # the sender's clock minus the bus server's (GateBoard.offset_s) when it sent the scan;
    # None: not measured yet. Carried on the bus, not stored: it makes `Applied.bus_time`.
    clock_offset_s: float | None = None
    # the sender said it had never measured its clock when it decided the scan
    # (`clockOffsetS: null`; a sender of before left the key out and is taken by its clock)
    clock_unmeasured: bool = False
    # sent as a claim, as it was decided (not by the journal publisher, after the commit or
    # later): its server timestamp is its time. Carried on the bus, not stored.
    claim: bool = False
    # an exit its gate's turnstile has not confirmed yet (`passageAwaited`): every reader
    # takes it as not yet happened, the ticket still inside, until a later message of the
    # same scan says otherwise (confirmed) or a void ends it (docs/venue.md)
    awaiting: bool = False


@dataclass(frozen=True)
class Applied:
    """One message of the stream, at its position: a scan, or the void of an earlier claim."""

    seq: int
    subject: str
    scan: BusScan | None = None
    void_uuid: str | None = None
    bus_time: str | None = None  # a scan's: when it happened, on the bus server's clock


def scan_as_held(row: dict[str, Any], *, awaiting: bool) -> BusScan:
    """A `venue_scans` row (every `_SCAN_COLS` and its `bus_time`) as a scan message again,
    `awaiting` its passage or not: what its gate confirms an exit from when its own journal
    row is gone (pruned after its upload, before the confirmation got out: agent.venue.bus
    `_settle_exits`). Its offset is
    the one that places it at its bus time again (agent.venue.messages `bus_time`: scannedOn
    minus the offset), so a reader that never had the claim puts it where the others do;
    undated (None) stays undated (an offset said to be unmeasured)."""
    at, on = parse_platform_time(row["bus_time"]), parse_platform_time(row["scanned_on"])
    offset = None if at is None or on is None else round((on - at).total_seconds(), 6)
    return BusScan(
        uuid=row["uuid"], device=row["device"], lane=row["lane"], event_id=row["event_id"],
        item_id=row["item_id"], zone_id=row["zone_id"],
        zone_is_default=bool(row["zone_is_default"]), direction=row["direction"],
        admit=bool(row["admit"]), status=row["status"], scanned_on=row["scanned_on"],
        offline=bool(row["offline"]), max_entries=row["max_entries"],
        tracks_exits=bool(row["tracks_exits"]), clock_offset_s=offset,
        clock_unmeasured=offset is None, awaiting=awaiting)


# `venue_scans.voided`: 0 the scan stands; 1 voided (a void message); REFUSED_AFTER_CLAIM its
# gate granted a claim, then its journal transaction refused after all (another lane admitted
# the ticket first) and it published that refusal under the claim's uuid (agent.venue.messages
# `scan_msg_id`): every reader of admits (`voided = 0`) drops the claim at once, and the
# sweep (`claims_after`) still voids it on the stream for gates of before, which ignore the
# refusal (a row per uuid) and wait for the void.
REFUSED_AFTER_CLAIM = 2
_REFUSE_CLAIM = ("UPDATE venue_scans SET voided = ? WHERE uuid = ? AND device = ? AND admit = 1"
                 " AND voided = 0 RETURNING event_id, item_id")
# (a claim its gate refused after the grant, REFUSED_AFTER_CLAIM, is voided all the same: the
# sweep's `claims_after` then stops publishing its void)
_VOID = ("UPDATE venue_scans SET voided = 1 WHERE uuid = ? AND voided <> 1"
         " RETURNING event_id, item_id")

# venue_cursor rows: 'journal' (published through), 'republish' (claims sent again through)
_SET_CURSOR = ("INSERT INTO venue_cursor (name, journal_seq) VALUES (?, ?)"
               " ON CONFLICT(name) DO UPDATE SET journal_seq = MAX(journal_seq,"
               " excluded.journal_seq)")

_SET_CREATED = ("INSERT INTO venue_stream_identity (stream, created) VALUES (?, ?)"
                " ON CONFLICT(stream) DO UPDATE SET created = excluded.created")

_SCAN_COLS = ("uuid", "device", "lane", "event_id", "item_id", "zone_id", "zone_is_default",
              "direction", "admit", "status", "scanned_on", "offline", "max_entries",
              "tracks_exits", "awaiting")
# its gate confirmed an exit's passage: a later copy of the scan, admitted and not awaited
# (only from the gate that sent it; a copy never puts the wait back)
_CONFIRM_EXIT = ("UPDATE venue_scans SET awaiting = 0 WHERE uuid = ? AND device = ?"
                 " AND awaiting = 1")


class VenueStore:
    """One connection to venue.db (the bus thread writes; each lane reads its own)."""

    def __init__(self, path: Path | str, *, readonly: bool = False):
        """`readonly`: for the CLI (often root), which must not create the daemon's file."""
        self.path = Path(path)
        try:
            self.db = open_database(self.path, synchronous="NORMAL", readonly=readonly)
            if not readonly:
                migrate(self.db, MIGRATIONS)
        except (sqlite3.Error, StoreError) as exc:
            # not this user's file, a read-only or full disk is said as such, never as damage
            access = sqlite_file_access(self.path, write=not readonly) or \
                (None if readonly else no_room(self.path))
            raise StoreError(f"venue state {access}" if access is not None else
                             f"venue state {self.path} cannot be opened: {exc}"
                             f"{held_hint(self.path, exc)}") from exc
        self.conn = self.db.conn
        # SQLite opens a file it may not write (marked immutable, say) read-only without a
        # word when its migrations are done: the failure would come at the first write, after
        # the daemon had started deciding with it. Said here, as an open that failed.
        frozen = None if readonly else sqlite_file_access(self.path)
        if frozen is not None:
            self.conn.close()
            raise StoreError(f"venue state {frozen}")

    def _failed(self, exc: sqlite3.Error, kind: type[StoreError] = StoreError) -> StoreError:
        """A statement venue.db refused, naming the file; "database is locked" (another
        connection held its write lock past the 5 s busy timeout) says who to look for: the
        agent's own connections hold it for milliseconds, so it is another process (a CLI,
        `sqlite3` left in a transaction), never damage or the disk. `kind`: VenueUnavailable
        for a lane's read for a decision (the scan is refused and journaled: agent.runtime.gate
        `facts`, agent.venue.claims)."""
        return kind(f"venue state {self.path}: {exc}{held_hint(self.path, exc)}")

    @contextmanager
    def _named(self) -> Iterator[None]:
        """A statement venue.db refuses inside, raised as `_failed` (naming the file)."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    def data_version(self) -> int:
        """Changes whenever another connection commits to this file (agent.store.sqlite)."""
        return data_version(self.conn)

    def close(self) -> None:
        self.conn.close()

    # -- applying the stream ------------------------------------------------------------------

    def apply(self, stream: str, messages: Iterable[Applied], detected_at: str) -> list[str]:
        """Apply messages (in stream order) and the position they reach, in one transaction.
        Messages at or below the stored position are skipped (a redelivery). Returns the uuids
        of scans newly found to be conflicts."""
        conflicts: list[str] = []
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            position = self._position(stream)
            touched: set[tuple[int, int]] = set()
            for msg in messages:
                if msg.seq <= position:
                    continue
                position = msg.seq
                self.conn.execute(
                    "INSERT INTO venue_subjects (subject, last_seq) VALUES (?, ?)"
                    " ON CONFLICT(subject) DO UPDATE SET last_seq = excluded.last_seq",
                    (msg.subject, msg.seq))
                if msg.scan is not None:
                    s = msg.scan
                    cur = self.conn.execute(
                        f"INSERT OR IGNORE INTO venue_scans (stream_seq, bus_time,"
                        f" {', '.join(_SCAN_COLS)}) VALUES (?, ?, {', '.join('?' for _ in _SCAN_COLS)})",
                        (msg.seq, msg.bus_time, *(getattr(s, c) for c in _SCAN_COLS)))
                    if cur.rowcount and s.admit and s.item_id is not None \
                            and s.event_id is not None:
                        touched.add((s.event_id, s.item_id))
                    elif not cur.rowcount and not s.admit:
                        # its gate's refusal under a claim's uuid: the claim no longer stands
                        touched.update(self._ended(_REFUSE_CLAIM,
                                                   (REFUSED_AFTER_CLAIM, s.uuid, s.device)))
                    elif not cur.rowcount and not s.awaiting:
                        self.conn.execute(_CONFIRM_EXIT, (s.uuid, s.device))
                elif msg.void_uuid is not None:
                    touched.update(self._ended(_VOID, (msg.void_uuid,)))
            self.conn.execute(
                "INSERT INTO venue_position (stream, last_seq) VALUES (?, ?)"
                " ON CONFLICT(stream) DO UPDATE SET last_seq = excluded.last_seq",
                (stream, position))
            for event_id, item_id in sorted(touched):
                conflicts += self._find_conflicts(event_id, item_id, detected_at)
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise self._failed(exc) from exc
        return conflicts

    def _ended(self, sql: str, args: tuple[Any, ...]) -> list[tuple[int, int]]:
        """Inside `apply`: end a standing admit (a void, or its gate's refusal after the
        claim); its ticket, to fold again. An admit ended after the fact changes what came
        after it: an entry another gate made after an exit that is then voided (an exit not
        passed, one awaiting its passage among them) was made while the ticket was inside.
        Folded only as scans arrived, that conflict was never found."""
        return [(e, i) for e, i in self.conn.execute(sql, args).fetchall()
                if e is not None and i is not None]

    def _find_conflicts(self, event_id: int, item_id: int, detected_at: str) -> list[str]:
        """Fold the ticket's standing admits per zone in time order (bus time: the module
        docstring); record every admit made beyond the deciding lane's limit (entries, or an
        entry while already inside). Folded again whenever one of them is ended (`_ended`).
        An exit still awaiting its passage counts as made here: a conflict is a record of
        what did happen, and whether the exit did is not known yet. Counted as not made, an
        entry after it would be recorded at once and stay a conflict once the exit was
        confirmed; as made, its void folds the ticket again and the entry is found then."""
        rows = self.conn.execute(
            "SELECT uuid, zone_id, direction, max_entries, tracks_exits, device, lane,"
            " scanned_on, offline FROM venue_scans WHERE event_id = ? AND item_id = ?"
            " AND admit = 1 AND voided = 0 ORDER BY bus_time, stream_seq",
            (event_id, item_id)).fetchall()
        state: dict[int | None, tuple[int, bool]] = {}
        found: list[str] = []
        for uuid, zone_id, direction, max_entries, tracks_exits, device, lane, on, off in rows:
            entries, inside = state.get(zone_id, (0, False))
            if direction == "out":
                state[zone_id] = (entries, False)
                continue
            detail = None
            if tracks_exits and inside:
                detail = "admitted while already inside"
            elif max_entries and entries >= max_entries:
                detail = f"entry {entries + 1} of at most {max_entries}"
            state[zone_id] = (entries + 1, True)
            if detail is None:
                continue
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO venue_conflicts (uuid, event_id, item_id, zone_id, device,"
                " lane, scanned_on, offline, detail, detected_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (uuid, event_id, item_id, zone_id, device, lane, on, off, detail, detected_at))
            if cur.rowcount:
                found.append(uuid)
        return found

    def _position(self, stream: str) -> int:
        row = self.conn.execute("SELECT last_seq FROM venue_position WHERE stream = ?",
                                (stream,)).fetchone()
        return int(row[0]) if row else 0

    def position(self, stream: str) -> int:
        """The last stream sequence applied here (0: nothing yet); a refused read names the
        file (`_failed`)."""
        with self._named():
            return self._position(stream)

    def stream_created(self, stream: str) -> str | None:
        """The creation time of the stream the position counts in (None: not recorded yet)."""
        row = self.conn.execute("SELECT created FROM venue_stream_identity WHERE stream = ?",
                                (stream,)).fetchone()
        return str(row[0]) if row else None

    def set_stream_created(self, stream: str, created: str) -> None:
        with self._named():
            self.conn.execute(_SET_CREATED, (stream, created))

    def restart_stream(self, stream: str, created: str, republish_through: int = 0) -> None:
        """The stream was deleted and made again (`created` is the new one's), in one
        transaction: drop what counts in the old one's sequences (subject sequences, position)
        and the publishing cursor (this gate's journal goes out again, so the new stream learns
        its admits), but keep the scans, renumbered below every sequence of the new stream.

        Deleting them opened a double-admit window: until every other gate had republished its
        journal, this gate had forgotten their admits, and the new stream grants a claim on an
        empty subject. Kept, they still count for decisions, occupancy and conflicts; a
        republished copy is the same uuid (stored once, the kept row stays); a void of an old
        scan on the new stream finds it by uuid. Renumbering keeps their order: every old
        sequence moves down by the same amount, below both the new stream (positive) and any
        earlier renumbering (negative), so the rows never collide, not even mid-update.
        Conflicts found are kept: they are a record of what happened. `republish_through`:
        this gate's journal seq up to which its granted claims go out again too
        (`set_republish_through`), in the same transaction as the reset."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            low, high = self.conn.execute(
                "SELECT MIN(stream_seq), MAX(stream_seq) FROM venue_scans").fetchone()
            if high is not None and high > 0:  # else none, or all renumbered already
                self.conn.execute("UPDATE venue_scans SET stream_seq = stream_seq - ?",
                                  (high - min(low, 0) + 1,))
            for sql in ("DELETE FROM venue_subjects", "DELETE FROM venue_cursor"):
                self.conn.execute(sql)
            if republish_through:
                self.conn.execute(_SET_CURSOR, ("republish", republish_through))
            self.conn.execute("DELETE FROM venue_position WHERE stream = ?", (stream,))
            self.conn.execute(_SET_CREATED, (stream, created))
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise self._failed(exc) from exc

    # -- reading ------------------------------------------------------------------------------

    def subject_seq(self, subject: str) -> int:
        """The last sequence of `subject` applied here: what a claim expects to still be last."""
        try:
            row = self.conn.execute("SELECT last_seq FROM venue_subjects WHERE subject = ?",
                                    (subject,)).fetchone()
        except sqlite3.Error as exc:
            raise self._failed(exc, VenueUnavailable) from exc
        return int(row[0]) if row else 0

    def zone_scans(self, event_id: int, item_id: int, offset_s: float = 0.0) -> list[ZoneScan]:
        """The venue's standing admits of one item (every zone), as derived state takes them
        (an exit still awaiting its passage is not one yet: the ticket stays inside):
        in bus-time order, each `scanned_on` its bus time read on this gate's clock, which is
        `offset_s` ahead of the bus server's (GateBoard.offset_s). So they fold on one clock
        with this gate's own scans and the decision's `now`."""
        try:
            return [ZoneScan(zone_id, direction, shift_utc_iso(at, offset_s), uuid)
                    for zone_id, direction, at, uuid in self.conn.execute(
                        "SELECT zone_id, direction, bus_time, uuid FROM venue_scans"
                        " WHERE event_id = ? AND item_id = ? AND admit = 1 AND voided = 0"
                        " AND awaiting = 0 ORDER BY bus_time, stream_seq", (event_id, item_id))]
        except sqlite3.Error as exc:
            raise self._failed(exc, VenueUnavailable) from exc

    def awaiting_exits(self, device: str) -> list[dict[str, Any]]:
        """`device`'s exits on the bus still awaiting their passage, not voided: what that gate
        still owes the venue, a confirmation or a void (agent.venue.bus `_settle_exits`).
        Each as the stream holds it (what a message carries, and its `bus_time`): the
        confirmation of one whose journal row was pruned is made from it."""
        cur = self.conn.execute(
            f"SELECT {', '.join(_SCAN_COLS)}, bus_time FROM venue_scans WHERE device = ?"
            " AND awaiting = 1 AND admit = 1 AND voided = 0 ORDER BY stream_seq", (device,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def standing_claims(self, device: str, before: str) -> list[dict[str, Any]]:
        """This device's admits on the bus, not voided, scanned before `before` (UTC ISO)."""
        cur = self.conn.execute(
            "SELECT uuid, event_id, item_id, zone_id, direction, scanned_on FROM venue_scans"
            " WHERE device = ? AND admit = 1 AND voided = 0 AND offline = 0"
            " AND scanned_on < ? ORDER BY stream_seq", (device, before))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def standing(self, uuids: list[str]) -> set[str]:
        """Which of these scan uuids are on the stream as admits, not voided."""
        out: set[str] = set()
        for start in range(0, len(uuids), 500):
            part = uuids[start:start + 500]
            out.update(r[0] for r in self.conn.execute(
                "SELECT uuid FROM venue_scans WHERE admit = 1 AND voided = 0"
                f" AND uuid IN ({','.join('?' * len(part))})", part))
        return out

    def claims_after(self, device: str, seq: int) -> list[dict[str, Any]]:
        """This device's admits applied after stream position `seq` that no void ended: the
        standing ones, and those its own refusal ended (`REFUSED_AFTER_CLAIM`), whose void
        gates of before still wait for (the sweep publishes it: no admit in the journal)."""
        cur = self.conn.execute(
            "SELECT stream_seq, uuid, event_id, item_id, scanned_on FROM venue_scans"
            " WHERE device = ? AND admit = 1 AND voided IN (0, ?) AND offline = 0"
            " AND stream_seq > ? ORDER BY stream_seq", (device, REFUSED_AFTER_CLAIM, seq))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def conflicts(self, limit: int = 1000) -> list[dict[str, Any]]:
        cur = self.conn.execute(
            "SELECT * FROM venue_conflicts ORDER BY detected_at, scanned_on LIMIT ?", (limit,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def occupancy(self) -> list[dict[str, Any]]:
        """Per (event, zone): tickets whose latest standing admit there is an entry (inside),
        and tickets ever admitted there. Zones without exit scanning only ever count up.
        Latest by bus time, not stream position: a scan decided offline reaches the stream
        late, after scans made after it."""
        with self._named():
            rows = self.conn.execute(
                "SELECT event_id, zone_id, MAX(zone_is_default), SUM(direction = 'in'),"
                " COUNT(*) FROM (SELECT event_id, zone_id, zone_is_default, direction,"
                " ROW_NUMBER() OVER (PARTITION BY event_id, item_id, zone_id"
                " ORDER BY bus_time DESC, stream_seq DESC) AS latest"
                " FROM venue_scans WHERE admit = 1 AND voided = 0 AND awaiting = 0"
                " AND item_id IS NOT NULL)"
                " WHERE latest = 1 GROUP BY event_id, zone_id ORDER BY event_id, zone_id"
            ).fetchall()
        return [{"event_id": e, "zone_id": z, "zone_is_default": bool(d), "inside": int(i),
                 "admitted": int(n)} for e, z, d, i, n in rows]

    def conflict_count(self) -> int:
        with self._named():
            return int(self.conn.execute("SELECT COUNT(*) FROM venue_conflicts").fetchone()[0])

    # -- publishing cursor -----------------------------------------------------------------

    def published_through(self) -> int:
        """The journal seq up to which this gate's scans have been acknowledged by the bus."""
        return self.cursors()[0]

    def cursors(self) -> tuple[int, int]:
        """(`published_through`, `republish_through`) in one read (the publisher's round)."""
        found = dict(self.conn.execute("SELECT name, journal_seq FROM venue_cursor"
                                       " WHERE name IN ('journal', 'republish')").fetchall())
        return int(found.get("journal", 0)), int(found.get("republish", 0))

    def set_published_through(self, journal_seq: int) -> None:
        self._set_cursor("journal", journal_seq)

    def set_republish_through(self, journal_seq: int) -> None:
        """This gate's granted claims up to journal seq `journal_seq` go out again (the
        publisher skips them otherwise: the claim is the scan on the bus), because the stream
        may not hold them (made again; or venue.db has no record of it: agent.venue.bus
        `_adopt_stream`). Kept in venue.db, not in memory: a restart before they are all out
        would otherwise find the stream's creation time recorded and skip the rest."""
        self._set_cursor("republish", journal_seq)

    def _set_cursor(self, name: str, journal_seq: int) -> None:
        with self._named():
            self.conn.execute(_SET_CURSOR, (name, journal_seq))
