"""The journal's reads of a ticket's state and of a zone's flow leave out an exit still
waiting for its passage (agent.store.journal `_NOT_AWAITED`), and the venue publisher's read
says it waits; one condition each, read through passages_state, never a scan of the table.
Real SQLite file; the lanes' side is tests/runtime/test_pending_exits.py."""

from __future__ import annotations

from pathlib import Path

from agent.store import journal as j
from agent.store.journal import Journal
from agent.store.passages import PassageLog, await_passage, now_iso
from tests.store.test_journal_schema import _row


def _exit_waiting(journal: Journal) -> None:
    """In (stands at once), then out on a lane whose exit waits for its passage."""
    journal.record(_row("in1", admit=True))
    with journal.scan_transaction():
        seq = journal.insert(_row("out1", admit=True, direction="out"))
        await_passage(journal, "out1", seq, "north", "out", 3, "valid", None, now_iso())


def test_a_waiting_exit_frees_neither_the_ticket_nor_a_place(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    try:
        _exit_waiting(journal)
        assert [s.uuid for s in journal.own_admits(501, 7)] == ["in1"]
        assert journal.unacknowledged_flow(3, None) == 1  # still inside: a place taken
        assert [r["passage_awaited"] for r in journal.after(0, 10)] == [0, 1]
        assert journal.exit_outcomes(["out1"]) == {}  # nothing to tell the venue yet
        assert PassageLog(journal).passed("out1", now_iso())
        assert [s.uuid for s in journal.own_admits(501, 7)] == ["in1", "out1"]
        assert journal.unacknowledged_flow(3, None) == 0
        assert [r["passage_awaited"] for r in journal.after(0, 10)] == [0, 0]
        stands, row = journal.exit_outcomes(["out1"])["out1"]
        assert stands and row["uuid"] == "out1"
    finally:
        journal.close()


def test_a_voided_exit_is_told_as_voided(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    try:
        _exit_waiting(journal)
        assert PassageLog(journal).void("out1", now_iso()) is not None
        stands, _row_ = journal.exit_outcomes(["out1"])["out1"]
        assert not stands
        assert [s.uuid for s in journal.own_admits(501, 7)] == ["in1"]
    finally:
        journal.close()


def test_the_condition_reads_the_waits_by_their_index(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    try:
        for sql, args in (
                ("SELECT uuid FROM scans WHERE item_id = ? AND event_id = ? AND admit = 1"
                 f" AND {j._NOT_AWAITED}", (7, 501)),
                (j._UNACKNOWLEDGED_FLOW, (3, ""))):
            plan = [r[-1] for r in journal.conn.execute(f"EXPLAIN QUERY PLAN {sql}", args)]
            assert not [p for p in plan if p.startswith(("SCAN scans", "SCAN passages"))], plan
            assert "SEARCH passages USING INDEX passages_state (state=?)" in plan
    finally:
        journal.close()
