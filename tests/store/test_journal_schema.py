"""Migration 0005 (issue 18): a journal written by the old schema keeps every row and column,
loses AUTOINCREMENT and the indexes no reader needs, and `seq` still only grows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from agent.store.journal import Journal, JournalRow, iter_all
from agent.store.journal_schema import MIGRATIONS
from agent.store.sqlite import migrate, open_database

OLD = [m for m in MIGRATIONS if m[0] < "0004"]  # the schema of round one (0001-0003)


def _row(uuid: str, *, admit: bool, item_id: int | None = 7, zone_id: int | None = 3,
         direction: str = "in", venue: str | None = None) -> JournalRow:
    return JournalRow(
        uuid=uuid, code="NU-1", kind="barcode", barcode="NU-1", nfc_id=None, item_id=item_id,
        event_id=501 if item_id else None, zone_id=zone_id, zone_is_default=True, gate_id=71,
        lane="north", direction=direction, admit=admit, status="valid" if admit else "denied",
        status_detail=None if admit else "refunded", message="m",
        scanned_on=f"2026-12-06T09:00:0{len(uuid) % 10}.000000Z", venue=venue,
        max_entries=1 if venue else None, tracks_exits=True if venue else None)


def _old_journal(path: Path) -> list[dict[str, object]]:
    """A journal file as round one left it, with admits, refusals, sent and quarantined rows."""
    db = open_database(path, synchronous="FULL")
    migrate(db, OLD)
    conn = db.conn
    assert "AUTOINCREMENT" in conn.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'scans'").fetchone()[0]
    cols = [c for c in JournalRow.__dataclass_fields__
            if c not in ("upload_state", "reason", "clock_offset_s")]  # not in round one
    rows = [_row("a1", admit=True), _row("r1", admit=False), _row("a2", admit=True, venue="claimed"),
            _row("x1", admit=True, direction="out"), _row("u1", admit=False, item_id=None)]
    for r in rows:
        conn.execute(f"INSERT INTO scans ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                     tuple(getattr(r, c) for c in cols))
    conn.execute("UPDATE scans SET upload_state = 'sent', sent_at = '2026-12-06T09:10:00Z'"
                 " WHERE uuid = 'a1'")
    conn.execute("UPDATE scans SET upload_state = 'quarantined', reason = 'bad' WHERE uuid = 'r1'")
    conn.execute("UPDATE scans SET batch_uuid = 'b-1', attempts = 2 WHERE uuid = 'a2'")
    conn.execute("DELETE FROM scans WHERE uuid = 'u1'")  # the old AUTOINCREMENT counter is 5
    before = [dict(r) for r in _dicts(conn, "SELECT * FROM scans ORDER BY seq")]
    conn.close()
    return before


def _dicts(conn, sql: str):  # type: ignore[no-untyped-def]
    cur = conn.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur]


def test_an_old_journal_is_migrated_row_for_row(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    before = _old_journal(path)
    journal = Journal(path)
    try:
        # every column of every row, seq included (and 0008's, not measured)
        assert list(iter_all(journal)) == [{**r, "clock_offset_s": None} for r in before]
        conn = journal.conn
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'scans'").fetchone()[0]
        assert "AUTOINCREMENT" not in sql
        indexes = {n for (n,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'scans'"
            " AND sql IS NOT NULL")}
        assert indexes == {"scans_admits", "scans_sent", "scans_parked", "scans_claims"}
        assert "0005_lean_scans" in {n for (n,) in conn.execute("SELECT name FROM migrations")}
        # the readers still find what they found before
        assert [s.uuid for s in journal.own_admits(501, 7)] == ["a1", "a2", "x1"]
        assert journal.counts()["quarantined"] == 1
        assert [r["uuid"] for r in journal.batch("b-1")] == ["a2"]
        assert journal.unacknowledged_flow(3, None) == 1 + 1 - 1  # a1 + a2 - x1
        journal.record(_row("n1", admit=True))
        assert journal.conn.execute("SELECT seq FROM scans WHERE uuid = 'n1'").fetchone()[0] \
            == before[-1]["seq"] + 1
    finally:
        journal.close()
    Journal(path).close()  # a second open applies nothing and loses nothing
    assert len(list(iter_all(Journal(path)))) == len(before) + 1


def test_a_refusal_touches_no_admit_index(tmp_path: Path) -> None:
    """The partial index holds admits only: refusals are never read by the decision."""
    journal = Journal(tmp_path / "journal.db")
    try:
        journal.record(_row("r1", admit=False))
        journal.record(_row("a1", admit=True))
        for index in ("scans_admits",):
            n = journal.conn.execute(f"SELECT COUNT(*) FROM scans INDEXED BY {index}"
                                     " WHERE admit = 1").fetchone()[0]
            assert n == 1
        plan = " ".join(r[-1] for r in journal.conn.execute(
            "EXPLAIN QUERY PLAN SELECT uuid FROM scans WHERE item_id = 7 AND event_id = 501"
            " AND admit = 1 ORDER BY seq"))
        assert "scans_admits" in plan and "TEMP B-TREE" not in plan
    finally:
        journal.close()


def test_pruning_never_hands_a_seq_out_twice(tmp_path: Path) -> None:
    """Without AUTOINCREMENT a new row takes MAX(seq) + 1: were the newest row pruned, its seq
    would be given to the next scan, which the venue publisher (resuming after a seq) would
    never send. prune_sent keeps the newest row."""
    journal = Journal(tmp_path / "journal.db")
    try:
        for u in ("s1", "s2", "s3"):
            journal.record(_row(u, admit=True))
        journal.mark_sent(["s1", "s2", "s3"], "2026-01-01T00:00:00Z")
        last = journal.conn.execute("SELECT MAX(seq) FROM scans").fetchone()[0]
        assert journal.prune_sent("2027-01-01T00:00:00Z") == 2
        journal.record(_row("next", admit=True))
        seqs = dict(journal.conn.execute("SELECT uuid, seq FROM scans"))
        assert seqs == {"s3": last, "next": last + 1}
    finally:
        journal.close()


def test_a_journal_of_the_previous_schema_gets_the_scan_clock_offset(tmp_path: Path) -> None:
    """Migration 0008 on a file at 0007 (the schema before it): its rows kept as they were,
    their offset unknown (NULL: published as "not measured", never as 0); a row journaled
    since keeps the offset it was decided under, and a JournalRow without one stores NULL."""
    path = tmp_path / "journal.db"
    db = open_database(path, synchronous="FULL")
    migrate(db, [m for m in MIGRATIONS if m[0] < "0008"])
    cols = [c for c in JournalRow.__dataclass_fields__ if c != "clock_offset_s"]
    old = _row("o1", admit=True, venue="offline")
    db.conn.execute(f"INSERT INTO scans ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    tuple(getattr(old, c) for c in cols))
    before = _dicts(db.conn, "SELECT * FROM scans")
    assert "clock_offset_s" not in before[0]
    db.conn.close()
    journal = Journal(path)
    try:
        (kept,) = list(iter_all(journal))
        assert kept == {**before[0], "clock_offset_s": None}
        journal.record(replace(_row("n1", admit=True, venue="offline"), clock_offset_s=-180.25))
        journal.record(_row("n2", admit=False))
        assert {r["uuid"]: r["clock_offset_s"] for r in journal.after(0, 10)} == \
            {"o1": None, "n1": -180.25, "n2": None}
        assert "0008_scan_clock_offset" in {
            n for (n,) in journal.conn.execute("SELECT name FROM migrations")}
    finally:
        journal.close()
