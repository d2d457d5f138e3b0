"""Migration 0007 (issue 18): no index on a scan's uuid, so a scan's commit writes one WAL page
fewer. A journal written before it keeps every row, claim and passage hold; every reader that
finds rows by uuid still starts where its rows are (never a walk of the whole table); a venue
claim's uuid stays UNIQUE."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.errors import JournalUnavailable
from agent.store.journal import Journal, JournalRow, iter_all
from agent.store.journal_schema import MIGRATIONS
from agent.store.passages import PassageLog, await_passage, now_iso
from agent.store.sqlite import migrate, open_database
from tests.store.test_journal_schema import _dicts

BEFORE_0007 = [m for m in MIGRATIONS if m[0] < "0007"]
AT = "2026-12-06T10:00:00.000000Z"  # scan and upload times (a wait starts now: see now_iso)


def _row(uuid: str, *, admit: bool = True, venue: str | None = None,
         upload_state: str = "pending") -> JournalRow:
    return JournalRow(
        uuid=uuid, code=f"NU-{uuid}", kind="barcode", barcode=f"NU-{uuid}", nfc_id=None,
        item_id=7, event_id=501, zone_id=3, zone_is_default=True, gate_id=71, lane="north",
        direction="in", admit=admit, status="valid" if admit else "denied",
        status_detail=None if admit else "refunded", message="m", scanned_on=AT,
        upload_state=upload_state, venue=venue, max_entries=1 if venue else None,
        tracks_exits=True if venue else None)


def _old_journal(path: Path) -> list[dict[str, object]]:
    """A journal as migration 0006 left it: sent, pending, held by a passage wait, a claim
    in flight, quarantined and local rows."""
    db = open_database(path, synchronous="FULL")
    migrate(db, BEFORE_0007)
    conn = db.conn
    cols = [c for c in JournalRow.__dataclass_fields__ if c != "clock_offset_s"]  # 0008
    rows = [_row("s0"), _row("h1"), _row("p2", admit=False), _row("c3", venue="claiming"),
            _row("q4", admit=False), _row("l5", admit=False, upload_state="local")]
    for r in rows:
        conn.execute(f"INSERT INTO scans ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                     tuple(getattr(r, c) for c in cols))
    conn.execute("UPDATE scans SET upload_state = 'sent', sent_at = ? WHERE uuid = 's0'", (AT,))
    conn.execute("UPDATE scans SET upload_state = 'quarantined', reason = 'bad'"
                 " WHERE uuid = 'q4'")
    conn.execute("UPDATE outbox SET low_seq = 2")
    conn.execute("INSERT INTO passages (uuid, lane, direction, zone_id, state, admitted_status,"
                 " waiting_since) VALUES ('h1', 'north', 'in', 3, 'waiting', 'valid', ?)", (now_iso(),))
    before = _dicts(conn, "SELECT * FROM scans ORDER BY seq")
    conn.close()
    return before


def test_a_0006_journal_keeps_its_rows_claims_and_passage_holds(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    before = _old_journal(path)
    journal = Journal(path)
    try:
        assert list(iter_all(journal)) == [{**r, "clock_offset_s": None} for r in before]  # every column
        # of every row, seq included (and migration 0008's, not measured)
        conn = journal.conn
        assert "UNIQUE" not in conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'scans'").fetchone()[0]
        seq = {r["uuid"]: r["seq"] for r in before}
        assert conn.execute("SELECT scan_seq FROM passages WHERE uuid = 'h1'").fetchone()[0] \
            == seq["h1"]
        # the wait still holds its row and every row after it; the claim in flight is held too
        assert journal.claim_batch(10, "b1") == []
        assert PassageLog(journal).passed("h1", AT)
        assert [r["uuid"] for r in journal.claim_batch(10, "b1")] == ["h1", "p2"]
        journal.mark_sent(["h1", "p2"], AT)
        assert journal.settle_claim("c3", "claimed")
        assert journal.admitted(["c3", "h1", "nope"]) == {"c3"}  # claims only
        with pytest.raises(JournalUnavailable, match="UNIQUE"):
            journal.record(_row("c3", venue="offline"))  # a claim's uuid is still unique
        assert journal.retry_quarantined(["q4"]) == 1
        assert [r["uuid"] for r in journal.claim_batch(10, "b2")] == ["c3", "q4"]
        counts = journal.counts()
        assert (counts["sent"], counts["pending"], counts["local"]) == (3, 2, 1)
    finally:
        journal.close()
    Journal(path).close()  # a second open applies nothing and loses nothing
    assert len(list(iter_all(Journal(path)))) == len(before)


def test_every_lookup_by_uuid_starts_where_its_rows_are(tmp_path: Path) -> None:
    """With no index on uuid, a `WHERE uuid = ?` with no other way in reads every row of the
    journal (a season of scans) inside a write transaction. Each statement the uuid-finding
    operations run is checked with EXPLAIN QUERY PLAN: none may scan the scans table."""
    journal = Journal(tmp_path / "journal.db")
    statements: list[str] = []
    try:
        for i in range(6):
            journal.record(_row(f"s{i}", admit=i % 2 == 0))
        journal.record(_row("c1", venue="claiming"))
        journal.record(_row("c2", venue="claiming"))
        with journal.scan_transaction():
            seq = journal.insert(_row("w1"))
            await_passage(journal, "w1", seq, "north", "in", 3, "valid", None, now_iso())
        (s4,), = journal.conn.execute("SELECT seq FROM scans WHERE uuid = 's4'").fetchall()
        journal.conn.set_trace_callback(statements.append)
        batch = journal.claim_batch(3, "b1")
        assert [r["uuid"] for r in batch] == ["s0", "s1", "s2"]
        assert journal.regroup("b1", [("s0", "rejected")], [("b2", ["s1"]), ("b3", ["s2"])])
        journal.mark_sent(["s1", "s2"], AT)
        journal.quarantine("s3", "rejected")
        assert journal.retry_quarantined(["s0", "s3"]) == 2
        assert journal.settle_claim("c1", "claimed")
        assert journal.void_claim("c2", "conflicted")
        assert journal.admitted(["c1", "c2"]) == {"c1"}
        assert PassageLog(journal).void("w1", AT) is not None
        assert PassageLog(journal).void_unopened("s4", s4, AT, "relay failed") is not None
        journal.pending(10)
        journal.conn.set_trace_callback(None)
        plans = {}
        for sql in statements:
            if sql.split()[0].upper() in ("SELECT", "UPDATE", "DELETE"):
                plans[sql] = [r[-1] for r in journal.conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        assert any("uuid" in sql for sql in plans)  # the trace saw the lookups
        scans = {sql: plan for sql, plan in plans.items()
                 if any(p.startswith("SCAN scans") for p in plan)}
        assert scans == {}
    finally:
        journal.close()


def test_the_rows_a_void_rewrites_are_found_by_the_waits_seq(tmp_path: Path) -> None:
    """A passage that never came voids its own admit, not another row with the same uuid
    text (no uniqueness outside claims: the seq is the key)."""
    journal = Journal(tmp_path / "journal.db")
    try:
        journal.record(_row("dup"))  # an unrelated row that happens to share the uuid text
        with journal.scan_transaction():
            seq = journal.insert(_row("dup"))
            await_passage(journal, "dup", seq, "north", "in", 3, "valid", None, now_iso())
        assert PassageLog(journal).void("dup", AT) is not None
        admits = [(r["seq"], r["admit"]) for r in iter_all(journal)]
        assert admits == [(seq - 1, 1), (seq, 0)]
    finally:
        journal.close()


def test_an_admit_waiting_for_its_passage_holds_the_upload_by_its_seq(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    try:
        journal.record(_row("a0"))
        with journal.scan_transaction():
            seq = journal.insert(_row("a1"))
            await_passage(journal, "a1", seq, "north", "in", 3, "valid", None, now_iso())
        journal.record(dataclasses.replace(_row("a2"), admit=False))
        assert [r["uuid"] for r in journal.claim_batch(10, "b1")] == ["a0"]
        journal.mark_sent(["a0"], AT)
        assert PassageLog(journal).passed("a1", AT)
        assert [r["uuid"] for r in journal.claim_batch(10, "b2")] == ["a1", "a2"]
    finally:
        journal.close()
