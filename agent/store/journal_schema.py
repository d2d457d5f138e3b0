"""The scan journal's schema: its migrations, in order, each with why it is there.

Kept apart from agent.store.journal (the queries) because the comments above each migration
are the schema's history: which page each index costs a scan's commit, and why it stays.
"""

from __future__ import annotations

from agent.store.sqlite import Migration

# The scans table's columns since migration 0005 (it rebuilds the table, as 0007 does; only
# the uuid's UNIQUE differs between them).
_SCANS_COLUMNS = """
            seq INTEGER PRIMARY KEY,
            uuid TEXT NOT NULL{uuid_unique},
            code TEXT NOT NULL,
            kind TEXT NOT NULL,
            barcode TEXT,
            nfc_id TEXT,
            item_id INTEGER,
            event_id INTEGER,
            zone_id INTEGER,
            zone_is_default INTEGER NOT NULL DEFAULT 0,
            gate_id INTEGER,
            lane TEXT NOT NULL,
            direction TEXT NOT NULL,
            admit INTEGER NOT NULL,
            status TEXT NOT NULL,
            status_detail TEXT,
            message TEXT,
            scanned_on TEXT NOT NULL,
            upload_state TEXT NOT NULL DEFAULT 'pending',
            batch_uuid TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            reason TEXT,
            sent_at TEXT,
            venue TEXT,
            max_entries INTEGER,
            tracks_exits INTEGER"""

MIGRATIONS: list[Migration] = [
    ("0001_initial", """
        CREATE TABLE scans (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            uuid TEXT NOT NULL UNIQUE,
            code TEXT NOT NULL,
            kind TEXT NOT NULL,
            barcode TEXT,
            nfc_id TEXT,
            item_id INTEGER,
            event_id INTEGER,
            zone_id INTEGER,
            zone_is_default INTEGER NOT NULL DEFAULT 0,
            gate_id INTEGER,
            lane TEXT NOT NULL,
            direction TEXT NOT NULL,
            admit INTEGER NOT NULL,
            status TEXT NOT NULL,
            status_detail TEXT,
            message TEXT,
            scanned_on TEXT NOT NULL,
            upload_state TEXT NOT NULL DEFAULT 'pending',
            batch_uuid TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            reason TEXT,
            sent_at TEXT);
        CREATE INDEX scans_item ON scans(item_id, event_id);
        CREATE INDEX scans_upload ON scans(upload_state, seq);
        CREATE INDEX scans_zone_time ON scans(zone_id, scanned_on)
    """),
    # Occupancy counts a zone's admits the platform has not acknowledged (unacknowledged_flow):
    # seeks by zone, admit and upload state, and a range of sent_at for the recently sent.
    ("0002_zone_flow", """
        CREATE INDEX scans_zone_flow ON scans(zone_id, admit, upload_state, sent_at)
    """),
    # How the venue bus took part (issue 14): NULL = no venue or no claim needed, 'claimed' =
    # the venue granted the admit first, 'offline' = decided without the bus (policy applied),
    # 'claiming' = committed while its claim is in flight, 'void' = a claim in flight that was
    # not granted (agent.store.journal, VOIDED_CLAIM);
    # and the limits the lane applied, so the venue can find admits beyond them afterwards.
    ("0003_venue", """
        ALTER TABLE scans ADD COLUMN venue TEXT;
        ALTER TABLE scans ADD COLUMN max_entries INTEGER;
        ALTER TABLE scans ADD COLUMN tracks_exits INTEGER
    """),
    # The turnstile's own signals (issue 17, agent.store.passages): one row per admit that
    # waits for its passage, with the admit as decided (the scans row is rewritten to a
    # refusal when the passage never came), and one row per lane event (alarms, releases).
    ("0004_passages", """
        CREATE TABLE passages (
            uuid TEXT PRIMARY KEY,
            lane TEXT NOT NULL,
            direction TEXT NOT NULL,
            zone_id INTEGER,
            state TEXT NOT NULL,
            admitted_status TEXT NOT NULL,
            admitted_detail TEXT,
            waiting_since TEXT NOT NULL,
            resolved_at TEXT,
            note TEXT);
        CREATE INDEX passages_state ON passages(state, waiting_since);
        CREATE TABLE lane_events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            lane TEXT,
            kind TEXT NOT NULL,
            by TEXT,
            detail TEXT)
    """),
    # A leaner row for the hot path (issue 18). Each index a scan's INSERT touches is one more
    # 4 KiB page in the WAL commit it fsyncs, and more pages per commit mean more checkpoints.
    # 0001-0003 wrote ~7 pages per scan: the row, uuid, four secondary indexes and the
    # AUTOINCREMENT counter in sqlite_sequence. Now: the row, uuid, the outbox index, and for
    # admits only (refusals never count) the two partial indexes the decision reads — 3 pages
    # for a refusal, 5 for an admit. scans_zone_time had no reader. `seq` stays an INTEGER
    # PRIMARY KEY that only grows without AUTOINCREMENT because `prune_sent` never deletes the
    # newest row (the venue publisher's cursor is a seq). The table is rebuilt (SQLite cannot
    # drop AUTOINCREMENT in place), keeping every row and column as they were.
    ("0005_lean_scans", """
        PRAGMA defer_foreign_keys = ON;
        CREATE TABLE scans_lean (""" + _SCANS_COLUMNS.format(uuid_unique=" UNIQUE") + """);
        INSERT INTO scans_lean SELECT seq, uuid, code, kind, barcode, nfc_id, item_id, event_id,
            zone_id, zone_is_default, gate_id, lane, direction, admit, status, status_detail,
            message, scanned_on, upload_state, batch_uuid, attempts, reason, sent_at, venue,
            max_entries, tracks_exits FROM scans ORDER BY seq;
        DROP TABLE scans;
        ALTER TABLE scans_lean RENAME TO scans;
        CREATE INDEX scans_upload ON scans(upload_state, seq);
        CREATE INDEX scans_admits ON scans(item_id, event_id) WHERE admit = 1;
        CREATE INDEX scans_zone_flow ON scans(zone_id, upload_state, sent_at) WHERE admit = 1
    """),
    # No index entry for a new pending scan (issue 18, part B). scans_upload and
    # scans_zone_flow put each new scan (each admit) in one more B-tree: one more WAL page per
    # commit. Pending rows are now found by walking the rowid from a cursor, `outbox.low_seq`:
    # no pending row has a smaller seq (kept in the same transactions that change
    # upload_state, see _ADVANCE_OUTBOX and `retry_quarantined`). Rows leave `pending` off the
    # hot path, into indexes of their own: scans_sent by sent_at (status counts, pruning, and
    # covering the recently sent part of unacknowledged_flow: no row read), scans_parked by
    # seq for the technician's queue (quarantined, and `local` — unknown codes, the one kind
    # of scan that writes an index entry besides uuid on the hot path). 2 pages for a refusal, 3 for an admit (the
    # floor's count) and for an unknown code.
    ("0006_outbox_cursor", """
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            low_seq INTEGER NOT NULL);
        INSERT INTO outbox (id, low_seq) VALUES (1, COALESCE(
            (SELECT MIN(seq) FROM scans WHERE upload_state = 'pending'),
            (SELECT COALESCE(MAX(seq), 0) + 1 FROM scans)));
        DROP INDEX scans_upload;
        DROP INDEX scans_zone_flow;
        CREATE INDEX scans_sent ON scans(sent_at, zone_id, admit, direction, upload_state)
            WHERE upload_state = 'sent';
        CREATE INDEX scans_parked ON scans(upload_state, seq)
            WHERE upload_state IN ('quarantined', 'local')
    """),
    # No uuid index on the hot path (issue 18, p99). A scan's uuid is made by this gate (agent.
    # store.journal.new_scan_uuid) and is never looked up by a lane: it only has to reach the
    # platform, which de-duplicates by it. The UNIQUE constraint cost every scan's commit one
    # WAL page (its index entry): 1 page for a refusal now, 2 for an admit, against the
    # floor's 2. Rows are found by uuid only where no seq is at hand, and each such reader
    # starts where its rows are: the outbox walk from its cursor (the uploader's answers,
    # `Journal._pending_seqs`), scans_parked (a technician's retry), and, for venue claims
    # (answered by the bus with the claim's uuid), scans_claims, UNIQUE as the column was:
    # only rows with a venue mark (`venue IS NOT NULL`, set at insert) enter it. A passage
    # wait keeps its scan's seq (`passages.scan_seq`), filled here from the old index.
    ("0007_no_uuid_index", """
        PRAGMA defer_foreign_keys = ON;
        CREATE TABLE scans_new (""" + _SCANS_COLUMNS.format(uuid_unique="") + """);
        INSERT INTO scans_new SELECT * FROM scans ORDER BY seq;
        ALTER TABLE passages ADD COLUMN scan_seq INTEGER;
        UPDATE passages SET scan_seq = (SELECT seq FROM scans WHERE scans.uuid = passages.uuid);
        DROP TABLE scans;
        ALTER TABLE scans_new RENAME TO scans;
        CREATE INDEX scans_admits ON scans(item_id, event_id) WHERE admit = 1;
        CREATE INDEX scans_sent ON scans(sent_at, zone_id, admit, direction, upload_state)
            WHERE upload_state = 'sent';
        CREATE INDEX scans_parked ON scans(upload_state, seq)
            WHERE upload_state IN ('quarantined', 'local');
        CREATE UNIQUE INDEX scans_claims ON scans(uuid) WHERE venue IS NOT NULL
    """),
    # The gate's clock minus the venue bus server's as this gate knew it when it decided the
    # scan (agent.venue.bus `VenueBus.clock_offset`; NULL: never measured, or no venue). The
    # venue publisher sends it with the scan however much later it publishes it: taken at
    # publish time, a restart before publishing (its clock stepped meanwhile, or not measured
    # yet) placed an offline scan by the clock as it was then. Rows of before keep NULL and go
    # out as "not measured" (agent.venue.messages `bus_time`: placed on the safe side).
    # Appended: no index, and the hot path without a venue leaves it out of its INSERT (NULL).
    ("0008_scan_clock_offset", """
        ALTER TABLE scans ADD COLUMN clock_offset_s REAL
    """),
    # The newest `scanned_on` among the venue rows `prune_sent` has deleted (one row, or none
    # before the first): a claim of this gate on the venue bus with no row here is either one
    # whose commit never came (the sweep voids it) or one pruned after its upload. Scanned
    # at or before this time, it cannot be told which, and it is not voided on a guess
    # (agent.store.journal `unjournaled`). A journal an earlier version pruned (seqs missing:
    # nothing else deletes rows) starts at its newest scan: what it pruned is not known, and
    # the restart of the upgrade itself would otherwise void every claim it pruned.
    ("0009_prune_horizon", """
        CREATE TABLE prune_horizon (
            one INTEGER PRIMARY KEY CHECK (one = 1),
            scanned_through TEXT NOT NULL);
        INSERT INTO prune_horizon (one, scanned_through)
            SELECT 1, MAX(scanned_on) FROM scans
            WHERE (SELECT MIN(seq) FROM scans) > 1
               OR (SELECT COUNT(*) FROM scans) < (SELECT MAX(seq) - MIN(seq) + 1 FROM scans)
            HAVING MAX(scanned_on) IS NOT NULL
    """),
    # `passages` rows of pruned scans (issue 17 kept every one: a row per admit on a lane with
    # a passage input, for the whole season). `prune_sent` now deletes an entry's with its
    # scan, and the venue bus a venue exit's once it no longer awaits (agent.store.journal
    # `forget_exit_outcomes`); this deletes what earlier versions left: the settled entries
    # whose scan was pruned (nobody asks an entry's outcome). Exits are left to the bus: an
    # exit's outcome may still be owed to the venue.
    ("0010_passages_pruned", """
        DELETE FROM passages WHERE state <> 'waiting' AND direction = 'in'
            AND NOT EXISTS (SELECT 1 FROM scans s WHERE s.seq = passages.scan_seq)
    """),
]
