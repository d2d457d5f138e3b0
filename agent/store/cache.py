"""The ticket cache: events, zones and entry items as the platform sent them, indexed for lookup.

Items are stored as the platform's JSON (minus personal data the gate does not need, unless
`store.keep_personal_data`) with the columns a lookup needs pulled out and indexed, and beside
it their parsed fields in a lean form (agent.store.lean) that a lookup reads instead of parsing
the JSON. The cache is disposable: a damaged file raises CacheCorrupt and is rebuilt by a full
sync; nothing here is the only copy of anything (scans live in the journal).

"Most recently updated" (for NFC ids paired to several items) is the order in which items reached
this cache: every write takes the next value of `seq`, so a later page of a later sync wins.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from agent.access import held_by_another, held_hint, no_room, sqlite_file_access
from agent.core.codes import parse_platform_time
from agent.core.model import (
    Event,
    Item,
    Zone,
    ZoneScan,
    item_platform_scans,
    parse_event,
    parse_item,
    parse_zone,
    strip_personal,
)
from agent.errors import CacheCorrupt, CacheNotAccessible, CacheUnavailable, StoreError
from agent.store import lean
from agent.store.sqlite import data_version, integrity_ok, migrate, open_database

log = logging.getLogger(__name__)

_SEQ_KEY = "items_seq"  # meta: the newest `seq` given to an item (migration 0008)

MIGRATIONS = [
    ("0001_initial", """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY, name TEXT, timezone TEXT, raw TEXT NOT NULL,
            synced_at TEXT);
        CREATE TABLE zones (
            id INTEGER PRIMARY KEY, event_id INTEGER NOT NULL, name TEXT,
            raw TEXT NOT NULL, synced_at TEXT);
        CREATE INDEX zones_event ON zones(event_id);
        CREATE TABLE items (
            event_id INTEGER NOT NULL, id INTEGER NOT NULL, barcode TEXT, nfc_id TEXT,
            item_type TEXT, status TEXT, seq INTEGER NOT NULL, raw TEXT NOT NULL,
            PRIMARY KEY (event_id, id));
        CREATE INDEX items_barcode ON items(barcode);
        CREATE INDEX items_nfc ON items(nfc_id) WHERE nfc_id IS NOT NULL;
        CREATE TABLE historic_barcodes (
            barcode TEXT NOT NULL, event_id INTEGER NOT NULL, item_id INTEGER NOT NULL,
            PRIMARY KEY (barcode, event_id, item_id));
        CREATE TABLE platform_scans (
            event_id INTEGER NOT NULL, item_id INTEGER NOT NULL, zone_id INTEGER,
            scan TEXT NOT NULL, scanned_on TEXT, uuid TEXT);
        CREATE INDEX platform_scans_item ON platform_scans(item_id);
        CREATE TABLE sync_state (
            event_id INTEGER PRIMARY KEY, cursor TEXT, last_sync TEXT, last_full TEXT,
            pending_cursor TEXT);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)
    """),
    ("0002_resumable_pass", """
        ALTER TABLE sync_state ADD COLUMN pending_end TEXT
    """),
    # put_items deletes an item's historic barcodes by (event_id, item_id); without this index
    # each delete scanned the whole table (1M items with 2,000 replaced barcodes: 26 s of 75 s).
    # items(seq): opening the cache read MAX(seq); without an index that scans every item
    # (dropped by 0008: the newest seq is kept in meta).
    ("0003_lookup_indexes", """
        CREATE INDEX historic_barcodes_item ON historic_barcodes(event_id, item_id);
        CREATE INDEX items_seq ON items(seq)
    """),
    # Venue mode: where this cache stands in the venue's catalog stream (the leader's sync
    # results), committed in the same transaction as the items it applied; and the newest
    # leader term seen there (older terms are fenced off).
    ("0005_venue_catalog", """
        CREATE TABLE venue_catalog (stream TEXT PRIMARY KEY, last_seq INTEGER NOT NULL,
                                    term INTEGER NOT NULL DEFAULT 0)
    """),
    # Issue 18: each item's parsed fields (agent.store.lean), so a hit skips the JSON parse.
    # Rows written before stay NULL and are parsed from their JSON until the next sync.
    ("0006_lean_items", """
        ALTER TABLE items ADD COLUMN lean BLOB
    """),
    # A leader term is (the lease bucket's creation time, revision) since a bucket made again
    # restarts its revisions at 1 (agent.venue.lease `Term`). A term stored before has no
    # epoch: 0, below every term of a leader since.
    ("0007_catalog_term_epoch", """
        ALTER TABLE venue_catalog ADD COLUMN term_epoch INTEGER NOT NULL DEFAULT 0
    """),
    # Issue 18: the newest `seq` is kept in `meta` (read and written once per transaction that
    # writes items) instead of read as MAX(seq) through items_seq, an index nothing else used,
    # which cost every written item ~3.5k instructions (~5% of a sync's apply) and its pages.
    ("0008_items_seq_in_meta", f"""
        INSERT OR REPLACE INTO meta (key, value)
            SELECT '{_SEQ_KEY}', COALESCE(MAX(seq), 0) FROM items;
        DROP INDEX items_seq
    """),
]

# Encoding every item of a 1000-item page is the largest share of applying it; orjson does it
# several times faster than the standard library. What orjson refuses (a lone surrogate, legal
# in JSON text; an integer beyond 64 bits) goes through the standard encoder with ASCII output,
# which keeps such values as escapes instead of failing SQLite's UTF-8 encoding.
_stdlib_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


# Python's sqlite3 sends every bound value but an int, float, str or bytearray through its
# adapter registry, whose failed lookup costs ~0.4 us a value here (None and bytes included):
# put_items binds a missing barcode, NFC id or lean form as the integer 0, which NULLIF makes
# NULL (those columns only ever get text or a blob, never an integer, so 0 means nothing else),
# and a lean form as a bytearray, stored as the same BLOB. Two values a row: ~0.7 us of ~13.
# The usual row (a barcode, a lean form, no NFC id) goes through a statement with the NFC id
# as a NULL literal and no NULLIF, each of which cost ~330 instructions a row.
_PUT_ITEM = ("INSERT OR REPLACE INTO items"
             " (event_id, id, barcode, nfc_id, item_type, status, seq, raw, lean)"
             " VALUES (?, ?, NULLIF(?, 0), NULLIF(?, 0), ?, ?, ?, ?, NULLIF(?, 0))")
_PUT_USUAL_ITEM = ("INSERT OR REPLACE INTO items"
                   " (event_id, id, barcode, nfc_id, item_type, status, seq, raw, lean)"
                   " VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?)")


def _decode(text: str) -> Any:
    """orjson on the lookup path (a third of a hit's cost with the standard library); the
    standard decoder for the escapes orjson rejects (lone surrogates)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _stored_forms(item: Item, raw: dict[str, Any]) -> tuple[str, bytes | None]:
    """The JSON to store for `raw` (the item's payload, stripped as configured) and the lean
    form to store beside it: a lookup must get from the lean form exactly the Item it would
    get by parsing that JSON. `item` is parse_item of the dict `raw` was taken from (every
    writer's Item is), so it is that Item unless the JSON round trip changes what parse_item
    reads: orjson's NaN/Infinity -> null (`lean.pack` tells), or the standard encoder's output
    (big integers, which orjson reads back as floats; lone surrogates). Then, rarely, the lean
    form is made from the JSON itself. One function for both: it runs for every written item."""
    try:
        text = orjson.dumps(raw).decode()
    except (orjson.JSONEncodeError, UnicodeDecodeError):
        text = _stdlib_encode(raw)
        return text, _lean_of_stored(text)
    blob = lean.pack(item, as_orjson_stores_it=True)
    if blob is None and lean.FORMAT is not None:
        blob = _lean_of_stored(text)
    return text, blob


def _lean_of_stored(text: str) -> bytes | None:
    """The lean form of stored JSON, parsed as a lookup of it would parse it."""
    return lean.pack(parse_item(_decode(text)))


_Read = TypeVar("_Read", bound=Callable[..., Any])


def _read(method: _Read) -> _Read:
    """A read of the open cache that SQLite cannot answer (the file damaged under a running
    gate — "database disk image is malformed" — or a failing disk) raises `CacheUnavailable`
    naming the file: the gate refuses the scan, the journal does not take it for its own
    failure. A closed connection (`ProgrammingError`, status asked mid-swap) is no damage
    and stays as it is."""
    @functools.wraps(method)
    def reading(self: TicketCache, *args: Any) -> Any:
        try:
            return method(self, *args)
        except sqlite3.ProgrammingError:
            raise
        except sqlite3.DatabaseError as exc:
            raise _unreadable(self, exc) from exc
    return reading  # type: ignore[return-value]


def _unreadable(cache: TicketCache, exc: sqlite3.DatabaseError) -> CacheUnavailable:
    return CacheUnavailable(f"ticket cache {cache.path} cannot be read ({exc})")


@dataclass(slots=True)
class CachedItem:
    """An item as found by a lookup: which event it belongs to, and its order of update.

    Made for every hit and changed by nobody: slotted, not frozen (a frozen dataclass sets
    each field through `object.__setattr__`; issue 18)."""

    event_id: int
    seq: int
    item: Item


class TicketCache:
    """Read and write access to one cache file (`<store.dir>/cache.db`)."""

    def __init__(self, path: Path | str, *, keep_personal_data: bool = False, check: bool = True):
        self.path = Path(path)
        self.keep_personal_data = keep_personal_data
        try:
            self.db = open_database(self.path, synchronous="NORMAL")
            if check:
                self.verify()
            migrate(self.db, MIGRATIONS)
            self.conn = self.db.conn
            self._catch_up_newest_seq()
        except (sqlite3.DatabaseError, StoreError, OSError) as exc:
            # A file (or its -wal/-shm, or their directory) this user may not use, or a full
            # disk, is not a damaged one: a rebuild would not help (CacheNotAccessible).
            access = None if self.path.name == ":memory:" else \
                sqlite_file_access(self.path) or no_room(self.path)
            if access is not None:
                raise CacheNotAccessible(f"ticket cache {access}") from exc
            if held_by_another(exc):  # not damaged: kept as it is, and tried again
                raise CacheNotAccessible(
                    f"ticket cache {self.path} cannot be opened: {exc}"
                    f"{held_hint(self.path, exc)}") from exc
            if isinstance(exc, CacheCorrupt):
                raise
            if isinstance(exc, OSError):
                raise  # not SQLite's, and not access: as it was
            if isinstance(exc, StoreError):
                raise CacheCorrupt(str(exc)) from exc
            raise CacheCorrupt(
                f"ticket cache {self.path} is not a usable SQLite file ({exc}); "
                "run `gate-agent sync --full` to rebuild it (scans are kept in the journal)"
            ) from exc
        self._events: dict[int, Event] = {}
        self._zones: dict[int, Zone] = {}
        # event id -> its default Entry zone (or None), found once per event and forgotten
        # whenever `_zones` changes: every lookup on a lane without a zone asks (issue 18).
        self._default_zones: dict[int, Zone | None] = {}
        # Hits whose lean form was missing, stale or damaged (parsed from the JSON instead).
        self.lean_misses = 0
        self._load_small_tables()

    def data_version(self) -> int:
        """Changes whenever another connection commits to this file (agent.store.sqlite)."""
        return data_version(self.conn)

    def close(self) -> None:
        self.conn.close()

    # -- transactions ---------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; everything inside commits together or not at all."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            self._load_small_tables()
            raise
        self.conn.execute("COMMIT")

    def _load_small_tables(self) -> None:
        """Events and zones are few: keep them in memory so a decision never queries for them."""
        self._events = {}
        for (raw,) in self.conn.execute("SELECT raw FROM events"):
            event = parse_event(_decode(raw))
            if event:
                self._events[event.id] = event
        self._zones = {}
        self._default_zones = {}
        for event_id, raw in self.conn.execute("SELECT event_id, raw FROM zones"):
            zone = parse_zone(_decode(raw), event_id)
            if zone:
                self._zones[zone.id] = zone

    # -- writes ---------------------------------------------------------------------------

    def put_events(self, events: Iterable[Event], synced_at: str) -> None:
        for event in events:
            self.conn.execute(
                "INSERT OR REPLACE INTO events (id, name, timezone, raw, synced_at) VALUES (?,?,?,?,?)",
                (event.id, event.name, event.timezone, json.dumps(event.raw), synced_at),
            )
            self._events[event.id] = event

    def put_zones(self, event_id: int, zones: Iterable[Zone], synced_at: str) -> None:
        """Replace the zones of one event (zones deleted on the platform disappear here too)."""
        zones = list(zones)
        self.conn.execute("DELETE FROM zones WHERE event_id = ?", (event_id,))
        self._default_zones = {}
        for zone_id in [z for z, zone in self._zones.items() if zone.event_id == event_id]:
            del self._zones[zone_id]
        for zone in zones:
            self.conn.execute(
                "INSERT OR REPLACE INTO zones (id, event_id, name, raw, synced_at) VALUES (?,?,?,?,?)",
                (zone.id, event_id, zone.name, json.dumps(zone.raw), synced_at),
            )
            self._zones[zone.id] = zone

    def put_items(self, event_id: int, items: Iterable[Item]) -> int:
        """Insert or replace items of one event, with their historic barcodes and platform scans.

        Call inside `transaction()` to apply a page atomically. Returns the number written.
        The old side rows (historic barcodes, platform scans) are deleted only for items
        already cached — one indexed query per page finds those — so a first fill, where no
        item exists yet, pays nothing for deletes.
        Each Item must be `parse_item` of its `raw` (every writer's is: sync pages, imports,
        the venue catalog): its lean form is taken from it (`_stored_forms`).
        """
        rows: list[tuple[Any, ...]] = []  # _PUT_ITEM's
        usual: list[tuple[Any, ...]] = []  # _PUT_USUAL_ITEM's
        historic: list[tuple[str, int, int]] = []
        scans: list[tuple[Any, ...]] = []
        ids: list[int] = []
        undated: list[int] = []
        keep_personal = self.keep_personal_data
        stored_forms, strip = _stored_forms, strip_personal
        seq = self._newest_seq()
        # An id twice in one call (a page repeating an item): the last copy wins, as it would
        # over two calls; otherwise both copies' platform scans would be kept and counted.
        for item in {item.id: item for item in items}.values():
            seq += 1
            item_id = item.id
            text, blob = stored_forms(item, item.raw if keep_personal else strip(item.raw))
            barcode, nfc_id = item.barcode, item.nfc_id
            if nfc_id is None and barcode is not None and blob is not None:
                usual.append((event_id, item_id, barcode, item.item_type, item.status, seq,
                              text, bytearray(blob)))
            else:
                rows.append((event_id, item_id, 0 if barcode is None else barcode,
                             0 if nfc_id is None else nfc_id, item.item_type, item.status,
                             seq, text, 0 if blob is None else bytearray(blob)))
            ids.append(item_id)
            if item.historic_barcodes:
                historic.extend((code, event_id, item_id) for code in item.historic_barcodes)
            for s in item_platform_scans(item):  # zoneData.scans, else the `variable` scan
                scans.append((event_id, item_id, s.zone_id, s.scan, s.scanned_on, s.uuid))
                if parse_platform_time(s.scanned_on) is None:
                    undated.append(item_id)
        if undated:
            log.warning("event %s: %d platform scan(s) without a usable scannedOn (items %s); "
                        "counted as made before now", event_id, len(undated),
                        ", ".join(str(i) for i in sorted(set(undated))[:5]))
        if not ids:
            return 0
        self._set_newest_seq(seq)
        cached = self._cached_ids(event_id, ids)
        if cached:
            pairs = [(event_id, item_id) for item_id in cached]
            self.conn.executemany(
                "DELETE FROM platform_scans WHERE event_id = ? AND item_id = ?", pairs)
            self.conn.executemany(
                "DELETE FROM historic_barcodes WHERE event_id = ? AND item_id = ?", pairs)
        if usual:
            self.conn.executemany(_PUT_USUAL_ITEM, usual)
        if rows:
            self.conn.executemany(_PUT_ITEM, rows)
        if historic:
            self.conn.executemany(
                "INSERT OR IGNORE INTO historic_barcodes (barcode, event_id, item_id)"
                " VALUES (?,?,?)", historic)
        if scans:
            self.conn.executemany(
                "INSERT INTO platform_scans (event_id, item_id, zone_id, scan, scanned_on, uuid)"
                " VALUES (?,?,?,?,?,?)", scans)
        return len(ids)

    def keep_only_items(self, event_id: int, listed: Iterable[int]) -> list[int]:
        """A full listing replaces the event's items: delete those it did not list, with
        their side rows. Call inside `transaction()` (with the pass's last writes). Returns
        the ids removed (the venue leader tells the gates)."""
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS listed_ids (id INTEGER PRIMARY KEY)")
        self.conn.execute("DELETE FROM listed_ids")
        self.conn.executemany("INSERT OR IGNORE INTO listed_ids (id) VALUES (?)",
                              ((int(i),) for i in listed))
        gone = [int(r[0]) for r in self.conn.execute(
            "SELECT id FROM items WHERE event_id = ? AND id NOT IN (SELECT id FROM listed_ids)",
            (event_id,))]
        self.conn.execute("DELETE FROM listed_ids")
        self.remove_items(event_id, gone)
        return gone

    def remove_items(self, event_id: int, ids: Iterable[int]) -> int:
        """Delete items of one event with their side rows (call inside `transaction()`).
        Returns how many existed."""
        pairs = [(event_id, int(i)) for i in ids]
        for table in ("platform_scans", "historic_barcodes"):
            self.conn.executemany(f"DELETE FROM {table} WHERE event_id = ? AND item_id = ?",
                                  pairs)
        before = self.conn.total_changes
        self.conn.executemany("DELETE FROM items WHERE event_id = ? AND id = ?", pairs)
        return int(self.conn.total_changes - before)

    def _cached_ids(self, event_id: int, ids: list[int]) -> list[int]:
        """Which of `ids` are already cached for the event (chunked: SQLite's variable limit).
        One probe of the ids' range first: on a first fill (pages of ascending ids, none of
        them cached yet) it finds nothing and the per-id lookups are skipped."""
        if not ids or self.conn.execute(
                "SELECT 1 FROM items WHERE event_id = ? AND id BETWEEN ? AND ? LIMIT 1",
                (event_id, min(ids), max(ids))).fetchone() is None:
            return []
        found: list[int] = []
        for start in range(0, len(ids), 900):
            chunk = ids[start:start + 900]
            marks = ",".join("?" * len(chunk))
            found.extend(r[0] for r in self.conn.execute(
                f"SELECT id FROM items WHERE event_id = ? AND id IN ({marks})",
                (event_id, *chunk)))
        return found

    def pair_nfc(self, event_id: int, item_id: int, nfc_id: str) -> list[int]:
        """Apply the platform's re-pairing rules locally; returns the items the tag moved from.

        The tag leaves every other item of the event (a tag is on one ticket per event) and
        replaces this item's old tag; this item takes the newest `seq` (most recent pairing
        wins). The stored JSON is updated with the columns, so a lookup's `Item.nfc_id` tells
        the same story as the index until the next sync brings the platform's own copy.
        Call inside `transaction()`.
        """
        moved = [row[0] for row in self.conn.execute(
            "SELECT id FROM items WHERE event_id = ? AND nfc_id = ? AND id != ?",
            (event_id, nfc_id, item_id))]
        for other in moved:
            self._set_raw_nfc(event_id, other, None)
        self.conn.execute(
            "UPDATE items SET nfc_id = NULL WHERE event_id = ? AND nfc_id = ? AND id != ?",
            (event_id, nfc_id, item_id))
        seq = self._newest_seq()
        self._set_newest_seq(seq + 1)
        self._set_raw_nfc(event_id, item_id, nfc_id)
        self.conn.execute(
            "UPDATE items SET nfc_id = ?, seq = ? WHERE event_id = ? AND id = ?",
            (nfc_id, seq + 1, event_id, item_id))
        return moved

    def _newest_seq(self) -> int:
        """The newest `seq` given to an item in this file, read inside the write transaction:
        another connection (the sync worker's, a gate's pairing) may have written since."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (_SEQ_KEY,)).fetchone()
        return 0 if row is None else int(row[0])

    def _catch_up_newest_seq(self) -> None:
        """An older build (before migration 0008) that wrote this file kept no newest `seq` in
        meta: it took MAX(seq) + 1, so its items may hold a `seq` above meta's, and items this
        build writes next would then count as older than them (a shared NFC id would find the
        wrong ticket). The last item inserted or replaced holds the largest rowid; when its
        `seq` is above meta's, meta takes MAX(seq), one scan of the items, only then. (An
        older build's NFC pairing alone, an UPDATE, keeps its row's rowid and is not seen.)"""
        row = self.conn.execute("SELECT seq FROM items ORDER BY rowid DESC LIMIT 1").fetchone()
        if row is None or int(row[0]) <= self._newest_seq():
            return
        with self.transaction():
            newest = int(self.conn.execute("SELECT MAX(seq) FROM items").fetchone()[0])
            if newest > self._newest_seq():
                log.warning("ticket cache %s: items written by an older gate-agent (newest "
                            "seq %d); later writes count on from it", self.path, newest)
                self._set_newest_seq(newest)

    def _set_newest_seq(self, seq: int) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                          (_SEQ_KEY, seq))

    def _set_raw_nfc(self, event_id: int, item_id: int, nfc_id: str | None) -> None:
        raw = self.payload(event_id, item_id)
        if raw is None:
            return
        # `variable` is `[]` for never-scanned items (the platform's quirk): make it an object.
        variable = raw.get("variable")
        if not isinstance(variable, dict):
            variable = {}
        if nfc_id is None:
            variable.pop("nfcId", None)
        else:
            variable["nfcId"] = nfc_id
        raw["variable"] = variable
        text = json.dumps(raw, separators=(",", ":"))
        self.conn.execute("UPDATE items SET raw = ?, lean = ? WHERE event_id = ? AND id = ?",
                          (text, _lean_of_stored(text), event_id, item_id))

    def set_cursor(self, event_id: int, cursor: str | None, synced_at: str,
                   full: bool = False) -> None:
        """A pass finished: store its cursor and forget where the pass stood."""
        self.conn.execute(
            "INSERT INTO sync_state (event_id, cursor, last_sync, last_full) VALUES (?,?,?,?)"
            " ON CONFLICT(event_id) DO UPDATE SET cursor = excluded.cursor,"
            " last_sync = excluded.last_sync, pending_cursor = NULL, pending_end = NULL,"
            " last_full = COALESCE(excluded.last_full, sync_state.last_full)",
            (event_id, cursor, synced_at, synced_at if full else None))

    def set_pending(self, event_id: int, next_url: str | None, end_time: str | None) -> None:
        """Where an unfinished pass stands (the next page), committed with the page it follows."""
        self.conn.execute(
            "INSERT INTO sync_state (event_id, pending_cursor, pending_end) VALUES (?,?,?)"
            " ON CONFLICT(event_id) DO UPDATE SET pending_cursor = excluded.pending_cursor,"
            " pending_end = excluded.pending_end", (event_id, next_url, end_time))

    def verify(self) -> None:
        """CacheCorrupt unless `PRAGMA quick_check` passes: run on a rebuilt file before it is
        swapped in, so the swap itself can reopen it without checking (no lane waits for a
        scan of every page while its lock is held)."""
        problem = integrity_ok(self.db)
        if problem:
            raise CacheCorrupt(f"ticket cache {self.path} is damaged: {problem}")

    def catalog_position(self, stream: str) -> tuple[int, int, int]:
        """(last applied sequence, newest leader term's epoch and revision) of the venue
        catalog `stream`."""
        row = self.conn.execute(
            "SELECT last_seq, term_epoch, term FROM venue_catalog WHERE stream = ?",
            (stream,)).fetchone()
        return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)

    def set_catalog_position(self, stream: str, seq: int, term: tuple[int, int]) -> None:
        """Call inside the transaction that applied the messages up to `seq`. `term`: (epoch,
        revision), kept only when newer than the stored one (compared in that order)."""
        newer = "(excluded.term_epoch, excluded.term) > (term_epoch, term)"
        self.conn.execute(
            "INSERT INTO venue_catalog (stream, last_seq, term_epoch, term) VALUES (?,?,?,?)"
            " ON CONFLICT(stream) DO UPDATE SET last_seq = MAX(last_seq, excluded.last_seq),"
            f" term_epoch = CASE WHEN {newer} THEN excluded.term_epoch ELSE term_epoch END,"
            f" term = CASE WHEN {newer} THEN excluded.term ELSE term END",
            (stream, seq, *term))

    def forget_catalog_position(self, stream: str) -> None:
        """The catalog stream was made again (agent.venue.stream_identity): its sequences and
        the leader terms start over, so the next follower starts at its first message."""
        with self.transaction():
            self.conn.execute("DELETE FROM venue_catalog WHERE stream = ?", (stream,))

    def checkpoint(self) -> None:
        """Fold the WAL into the main file (before the file is renamed into place)."""
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def reload(self) -> None:
        """Re-read events and zones written by another connection (the sync worker)."""
        self._load_small_tables()

    # -- reads ----------------------------------------------------------------------------

    def find_barcode(self, code: str) -> list[CachedItem]:
        return self._items("SELECT event_id, seq, lean, raw FROM items WHERE barcode = ?", code)

    def find_nfc(self, nfc_id: str) -> list[CachedItem]:
        """Items paired to a tag, newest pairing first (the platform: most recent wins)."""
        return self._items(
            "SELECT event_id, seq, lean, raw FROM items WHERE nfc_id = ? ORDER BY seq DESC",
            nfc_id)

    def payload(self, event_id: int, item_id: int) -> dict[str, Any] | None:
        """An item's stored JSON, decoded (a lookup's Item may carry no `raw`: agent.store.lean)."""
        row = self.conn.execute("SELECT raw FROM items WHERE event_id = ? AND id = ?",
                                (event_id, item_id)).fetchone()
        return None if row is None else _decode(row[0])

    def find_historic(self, code: str) -> list[int]:
        """Event ids where `code` is a replaced barcode of some item."""
        return [r[0] for r in self.conn.execute(
            "SELECT DISTINCT event_id FROM historic_barcodes WHERE barcode = ?", (code,))]

    @_read
    def miss(self, code: str) -> tuple[int | None, bool]:
        """What a barcode that matched no item needs next, in one statement: the event where
        it is a replaced barcode (the lowest, if several; None if none), and whether no item
        at all is cached (`is_empty`)."""
        row = self.conn.execute(
            "SELECT (SELECT MIN(event_id) FROM historic_barcodes WHERE barcode = ?1),"
            " NOT EXISTS (SELECT 1 FROM items)", (code,)).fetchone()
        return row[0], bool(row[1])

    def _items(self, sql: str, arg: str) -> list[CachedItem]:
        """The hits, each built from its lean form, or parsed from its JSON when that form is
        missing, stale or damaged. The JSON comes in the same row (one statement per lookup
        either way, and a cache written before the lean forms is no slower than before).
        A read SQLite cannot answer raises CacheUnavailable, as `_read` says (caught here
        rather than through `_read`'s wrapper: every lookup comes this way, issue 18)."""
        found = []
        unpack = lean.unpack
        try:
            for event_id, seq, blob, raw in self.conn.execute(sql, (arg,)):
                item = unpack(blob) if blob is not None else None
                if item is None:
                    self.lean_misses += 1
                    item = parse_item(_decode(raw))
                if item is not None:
                    found.append(CachedItem(event_id, seq, item))
        except sqlite3.ProgrammingError:
            raise
        except sqlite3.DatabaseError as exc:
            raise _unreadable(self, exc) from exc
        return found

    def platform_scans(self, event_id: int, item_id: int) -> list[ZoneScan]:
        return [ZoneScan(zone_id, scan, on, uuid) for zone_id, scan, on, uuid in self.conn.execute(
            "SELECT zone_id, scan, scanned_on, uuid FROM platform_scans"
            " WHERE item_id = ? AND event_id = ?", (item_id, event_id))]

    def event(self, event_id: int) -> Event | None:
        return self._events.get(event_id)

    def events(self) -> list[Event]:
        return list(self._events.values())

    def zone(self, zone_id: int) -> Zone | None:
        return self._zones.get(zone_id)

    def zones(self, event_id: int) -> list[Zone]:
        return [z for z in self._zones.values() if z.event_id == event_id]

    def default_zone(self, event_id: int) -> Zone | None:
        """The event's default "Entry" zone, when its zones have been synced."""
        known = self._default_zones
        if event_id in known:
            return known[event_id]
        found = known[event_id] = next(
            (z for z in self.zones(event_id) if z.is_default_entry), None)
        return found

    @_read
    def zone_synced_at(self, zone_id: int) -> str | None:
        row = self.conn.execute("SELECT synced_at FROM zones WHERE id = ?", (zone_id,)).fetchone()
        return row[0] if row else None

    def full_listings(self, event_ids: list[int]) -> tuple[int, int, str | None]:
        """Of `event_ids`: (those with a sync pass on record, how many of them had a full
        listing, the oldest full listing's time, UTC text): whether a nightly rebuild was
        missed. An event no longer served keeps its old row: it must not count."""
        marks = ",".join("?" * len(event_ids))
        passes, fulls, oldest = self.conn.execute(
            "SELECT COUNT(*), COUNT(last_full), MIN(last_full) FROM sync_state"
            f" WHERE event_id IN ({marks})", event_ids).fetchone()
        return int(passes), int(fulls), oldest

    def sync_state(self, event_id: int) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT cursor, last_sync, last_full, pending_cursor, pending_end FROM sync_state"
            " WHERE event_id = ?", (event_id,)).fetchone()
        if row is None:
            return None
        return {"cursor": row[0], "last_sync": row[1], "last_full": row[2],
                "pending_cursor": row[3], "pending_end": row[4]}

    @_read
    def is_empty(self) -> bool:
        """No item cached at all (nothing synced or imported yet); one indexed probe."""
        return self.conn.execute("SELECT 1 FROM items LIMIT 1").fetchone() is None

    def item_counts(self) -> dict[int, int]:
        return {e: n for e, n in self.conn.execute(
            "SELECT event_id, COUNT(*) FROM items GROUP BY event_id")}

    @_read
    def get_status(self) -> dict[str, Any]:
        counts = self.item_counts()
        events = []
        for event_id in sorted(set(counts) | set(self._events)):
            state = self.sync_state(event_id) or {}
            event = self._events.get(event_id)
            events.append({
                "id": event_id, "name": event.name if event else None,
                "items": counts.get(event_id, 0), "last_sync": state.get("last_sync"),
                "cursor": state.get("cursor"), "cursor_age_s": _age_s(state.get("cursor")),
                "last_full": state.get("last_full"),
            })
        return {"path": str(self.path), "events": events}


def _age_s(platform_time: str | None) -> float | None:
    """Seconds since a `listEndTime` (the platform gives no zone for it: taken as UTC)."""
    moment = parse_platform_time(platform_time)
    return None if moment is None else round((datetime.now(UTC) - moment).total_seconds(), 1)
