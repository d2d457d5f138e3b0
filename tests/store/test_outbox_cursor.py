"""The outbox without an index on pending rows (migration 0006, issue 18 part B).

Pending rows are found by walking the rowid from `outbox.low_seq`; the guarantee is that no
pending row ever lies below it, whatever the uploader, a technician's retry or a restart did —
a row below the cursor would never be uploaded. And the point of it: a scan's commit writes
fewer WAL pages (2 for a refusal, 3 for an admit, as the floor's table): scans_upload and
scans_zone_flow are gone, and the zone flow is summed from the outbox and scans_sent."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from agent.store.journal import Journal, JournalRow, iter_all
from agent.store.journal_schema import MIGRATIONS
from agent.store.sqlite import migrate, open_database
from tests.store.test_journal_schema import _dicts, _row

BEFORE_0006 = [m for m in MIGRATIONS if m[0] < "0006"]


def _truly_pending(journal: Journal) -> list[str]:
    """Every pending row, found the slow way (whole table, no cursor, no index)."""
    return [r[0] for r in journal.conn.execute(
        "SELECT uuid FROM scans NOT INDEXED WHERE upload_state = 'pending' ORDER BY seq")]


def _truly_unacknowledged(journal: Journal, zone_id: int, since: str) -> int:
    """unacknowledged_flow the slow way: every row of the table looked at."""
    n = 0
    for admit, zone, state, sent_at, direction in journal.conn.execute(
            "SELECT admit, zone_id, upload_state, sent_at, direction FROM scans NOT INDEXED"):
        if admit and zone == zone_id and (state != "sent" or sent_at >= since):
            n += 1 if direction == "in" else -1
    return n


def _low(journal: Journal) -> int:
    return int(journal.conn.execute("SELECT low_seq FROM outbox").fetchone()[0])


def _seq(journal: Journal, uuid: str) -> int:
    return int(journal.conn.execute("SELECT seq FROM scans WHERE uuid = ?", (uuid,)).fetchone()[0])


def test_the_cursor_never_passes_a_pending_row(tmp_path: Path) -> None:
    """Random interleavings of scans, claims, sends, refusals by the platform, give-ups and
    retries, with the journal reopened now and then: the outbox seen through the cursor is
    always exactly the pending rows a full scan finds, and the counts agree."""
    rng = random.Random(6)
    path = tmp_path / "journal.db"
    journal = Journal(path)
    n = 0
    try:
        for step in range(400):
            op = rng.random()
            if op < 0.45:
                n += 1
                unknown = rng.random() < 0.1
                journal.record(_row(f"s{n}", admit=not unknown and rng.random() < 0.6,
                                    item_id=None if unknown else 7,
                                    zone_id=None if unknown else rng.choice((3, 4)),
                                    direction=rng.choice(("in", "in", "out"))))
            elif op < 0.65:
                batch = journal.claim_batch(rng.randint(1, 4), f"b{step}")
                if batch:
                    journal.mark_sent([r["uuid"] for r in batch], f"2026-12-06T10:{step:04d}Z")
            elif op < 0.75:
                batch = journal.claim_batch(3, f"b{step}")
                if len(batch) > 1:
                    head, rest = batch[0]["uuid"], [r["uuid"] for r in batch[1:]]
                    assert journal.regroup(batch[0]["batch_uuid"], [(rest[0], "refused")],
                                           [(f"p{step}", [head, *rest[1:]])])
            elif op < 0.82:
                pending = _truly_pending(journal)
                if pending:
                    journal.quarantine(rng.choice(pending), "gave up")
            elif op < 0.88:
                batch = journal.claim_batch(2, f"b{step}")
                if batch:
                    journal.note_undelivered(batch[0]["batch_uuid"], "timeout", 1)
            elif op < 0.95:
                quarantined = [r["uuid"] for r in journal.rows(("quarantined",))]
                if quarantined:
                    journal.retry_quarantined(rng.sample(quarantined, 1)
                                              if rng.random() < 0.5 else None)
            else:
                journal.close()
                journal = Journal(path)
            expected = _truly_pending(journal)
            assert [r["uuid"] for r in journal.pending(10_000)] == expected, step
            assert journal.pending_count() == len(expected)
            assert journal.counts()["pending"] == len(expected)
            assert journal.pending_count(at_most=3) == min(3, len(expected))
            if expected:
                assert _low(journal) <= _seq(journal, expected[0])
            since = f"2026-12-06T10:{rng.randrange(step + 1):04d}Z"
            for zone in (3, 4):
                assert journal.unacknowledged_flow(zone, since) == \
                    _truly_unacknowledged(journal, zone, since), step
                assert journal.unacknowledged_flow(zone, None) == \
                    _truly_unacknowledged(journal, zone, ""), step
    finally:
        journal.close()


def test_the_cursor_walks_only_what_was_settled_since(tmp_path: Path) -> None:
    """Once everything before them is sent, the cursor sits on the first pending row (or past
    the newest): the outbox queries start there, not at the start of the journal."""
    journal = Journal(tmp_path / "journal.db")
    try:
        for i in range(6):
            journal.record(_row(f"s{i}", admit=True))
        journal.mark_sent(["s0", "s1", "s2"], "2026-12-06T10:00:00Z")
        assert _low(journal) == _seq(journal, "s3")
        journal.mark_sent(["s3", "s4", "s5"], "2026-12-06T10:00:00Z")
        assert _low(journal) == _seq(journal, "s5") + 1
        journal.record(_row("s6", admit=False))
        assert [r["uuid"] for r in journal.pending(10)] == ["s6"]
        plan = " ".join(r[-1] for r in journal.conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM scans WHERE seq >= (SELECT low_seq FROM outbox)"
            " AND upload_state = 'pending' ORDER BY seq LIMIT 5"))
        assert "INTEGER PRIMARY KEY (rowid>?)" in plan
    finally:
        journal.close()


def test_a_retried_row_below_the_cursor_is_uploaded_again(tmp_path: Path) -> None:
    """`queue retry` puts an old quarantined row back: the cursor moves down to it, so the
    next claim sends it first (scan order), and it survives a restart."""
    path = tmp_path / "journal.db"
    journal = Journal(path)
    try:
        for i in range(4):
            journal.record(_row(f"s{i}", admit=True))
        journal.quarantine("s0", "rejected")
        journal.mark_sent(["s1", "s2", "s3"], "2026-12-06T10:00:00Z")
        assert journal.pending(10) == []
        assert journal.retry_quarantined(["s0"]) == 1
    finally:
        journal.close()
    journal = Journal(path)
    try:
        assert [r["uuid"] for r in journal.claim_batch(10, "again")] == ["s0"]
        assert journal.retry_quarantined() == 0  # nothing quarantined: the cursor stays
        assert _low(journal) == _seq(journal, "s0")
    finally:
        journal.close()


def _wal_frames(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return (wal.stat().st_size - 32) // (4096 + 24) if wal.exists() else 0


def test_a_scan_commit_writes_one_page_plus_one_for_an_admit(tmp_path: Path) -> None:
    """Counted from the WAL itself (automatic checkpoints off): a refusal writes its row only
    (no uuid index since migration 0007), an admit also its scans_admits entry; no outbox or
    zone flow entry. An unknown code (`local`, never uploaded) writes its scans_parked entry,
    a venue claim's admit its scans_claims entry (the bus answers it by uuid)."""
    path = tmp_path / "journal.db"
    journal = Journal(path)
    try:
        journal.conn.execute("PRAGMA wal_autocheckpoint = 0")
        assert int(journal.conn.execute("PRAGMA page_size").fetchone()[0]) == 4096
        frames = {}
        for kind, row in (("refusal", _row("r1", admit=False)), ("admit", _row("a1", admit=True)),
                          ("unknown", dataclasses.replace(_row("u1", admit=False, item_id=None),
                                                          upload_state="local")),
                          ("claim", dataclasses.replace(_row("c1", admit=True),
                                                        venue="claiming"))):
            before = _wal_frames(path)
            journal.record(row)
            frames[kind] = _wal_frames(path) - before
        assert frames == {"refusal": 1, "admit": 2, "unknown": 2, "claim": 3}
    finally:
        journal.close()


def test_a_0005_journal_keeps_its_rows_and_outbox(tmp_path: Path) -> None:
    """A journal written by the 0005 schema (scans_upload) with rows in every state and a
    claimed batch: after 0006 every row is as it was, the cursor sits on the oldest pending
    row, and the uploader, status and queue listing find what they found before."""
    path = tmp_path / "journal.db"
    db = open_database(path, synchronous="FULL")
    migrate(db, BEFORE_0006)
    conn = db.conn
    cols = [c for c in JournalRow.__dataclass_fields__ if c != "clock_offset_s"]  # 0008
    rows = [_row(f"s{i}", admit=i % 2 == 0) for i in range(8)]
    rows.append(dataclasses.replace(_row("u1", admit=False, item_id=None),
                                    upload_state="local"))
    for r in rows:
        conn.execute(f"INSERT INTO scans ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                     tuple(getattr(r, c) for c in cols))
    conn.execute("UPDATE scans SET upload_state = 'sent', sent_at = '2026-12-06T10:00:00Z'"
                 " WHERE uuid IN ('s0', 's1', 's3')")
    conn.execute("UPDATE scans SET upload_state = 'quarantined', reason = 'bad'"
                 " WHERE uuid = 's4'")
    conn.execute("UPDATE scans SET batch_uuid = 'b-1' WHERE uuid IN ('s2', 's5')")
    before = _dicts(conn, "SELECT * FROM scans ORDER BY seq")
    counts_before = dict(conn.execute(
        "SELECT upload_state, COUNT(*) FROM scans GROUP BY upload_state").fetchall())
    conn.close()

    journal = Journal(path)
    try:
        assert list(iter_all(journal)) == [{**r, "clock_offset_s": None} for r in before]
        assert "0006_outbox_cursor" in {n for (n,) in journal.conn.execute(
            "SELECT name FROM migrations")}
        assert _low(journal) == _seq(journal, "s2")
        counts = journal.counts()
        assert {k: counts[k] for k in counts_before} == counts_before
        assert [r["uuid"] for r in journal.rows()] == ["s2", "s4", "s5", "s6", "s7", "u1"]
        assert [r["uuid"] for r in journal.claim_batch(10, "new")] == ["s2", "s5"]  # b-1 as fixed
        journal.mark_sent(["s2", "s5"], "2026-12-06T11:00:00Z")
        assert [r["uuid"] for r in journal.claim_batch(10, "new")] == ["s6", "s7"]
    finally:
        journal.close()


def test_a_pending_row_below_the_cursor_is_found_at_open(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """Only a hand edit (or a bug) can put a pending row below the cursor; opening the journal
    looks, as it runs its integrity check, and moves the cursor down so the row is sent."""
    path = tmp_path / "journal.db"
    journal = Journal(path)
    try:
        for i in range(3):
            journal.record(_row(f"s{i}", admit=True))
        journal.mark_sent(["s0", "s1", "s2"], "2026-12-06T10:00:00Z")
        journal.conn.execute("UPDATE scans SET upload_state = 'pending' WHERE uuid = 's1'")
        assert journal.pending(10) == []  # invisible to the cursor
    finally:
        journal.close()
    journal = Journal(path)
    try:
        assert [r["uuid"] for r in journal.pending(10)] == ["s1"]
        assert "below the outbox cursor" in caplog.text
    finally:
        journal.close()


def test_outbox_and_flow_queries_never_read_the_whole_table(tmp_path: Path) -> None:
    """Without scans_upload and scans_zone_flow, each reader must still start where its rows
    are: the cursor (rowid range), scans_parked or scans_sent — never a scan of every row."""
    from agent.store import journal as j

    journal = Journal(tmp_path / "journal.db")
    try:
        queries = {
            "flow": (j._UNACKNOWLEDGED_FLOW, (3, "2026-12-06T10:00:00Z")),
            "outbox": (f"SELECT * FROM scans WHERE {j._OUTBOX} ORDER BY seq LIMIT 5", ()),
            "parked": (f"SELECT upload_state, COUNT(*) FROM scans WHERE {j._PARKED}"
                       " GROUP BY upload_state", ()),
            "prune": ("DELETE FROM scans WHERE upload_state = 'sent' AND sent_at < ?"
                      " AND seq < (SELECT MAX(seq) FROM scans)", ("2026-01-01",)),
        }
        for name, (sql, args) in queries.items():
            plan = [r[-1] for r in journal.conn.execute(f"EXPLAIN QUERY PLAN {sql}", args)]
            assert not [p for p in plan if p.startswith("SCAN scans")], (name, plan)
        flow = [r[-1] for r in journal.conn.execute(
            f"EXPLAIN QUERY PLAN {j._UNACKNOWLEDGED_FLOW}", (3, ""))]
        assert "SEARCH scans USING COVERING INDEX scans_sent (sent_at>?)" in flow
    finally:
        journal.close()
