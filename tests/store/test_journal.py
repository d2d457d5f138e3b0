"""The journal: durable before the decision returns, and separate from the cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from agent.errors import JournalUnavailable
from agent.store.journal import Journal, JournalRow, iter_all, new_scan_uuid
from tests.conftest import PROJECT_ROOT, DemoSite

WRITER = textwrap.dedent("""
    import sys, time
    from datetime import UTC, datetime
    from agent.config import load_config
    from agent.runtime.opening import opened_gate
    config = load_config(sys.argv[1])
    lane = config.lane("floor")
    with opened_gate(config) as gate:
        i = 0
        while True:
            result = gate.scan("NU-FLOOR-0003", lane, datetime.now(UTC))
            print(result.uuid, result.decision.direction, flush=True)
            i += 1
""")


def test_every_returned_decision_survives_sigkill(site: DemoSite) -> None:
    """A real subprocess scans in a loop and prints each uuid after `scan()` returns; we kill
    it with SIGKILL mid-stream. Every printed uuid must be in the journal afterwards."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(site.config_path)],
                            stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while len(seen) < 200 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            seen.append(line.split()[0])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert len(seen) >= 200
    journal = Journal(site.config.store_dir / "journal.db")
    stored = [row["uuid"] for row in iter_all(journal)]
    assert set(seen) <= set(stored)
    # the journal's own order is the scan order: alternating in/out on an unlimited lane
    directions = [row["direction"] for row in iter_all(journal)]
    assert all(a != b for a, b in zip(directions, directions[1:], strict=False))
    # and the uuids' time order (to the millisecond): new rows join the uuid index at its end
    stamps = [scan_uuid[:13] for scan_uuid in stored]
    assert stamps == sorted(stamps) and len(set(stamps)) > 1
    journal.close()


def test_scan_uuids_are_time_ordered_version_7_uuids() -> None:
    before = time.time_ns() // 1_000_000
    made = [new_scan_uuid() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert before <= int(text[:8] + text[9:13], 16) <= after  # Unix time in ms
    stamps = [text[:13] for text in made]
    assert stamps == sorted(stamps)
    # every random hex digit varies (a fixed or dropped digit would show here)
    for position in (15, 16, 17, 20, 21, 22, *range(24, 36)):
        assert len({text[position] for text in made}) == 16, position
    assert {text[19] for text in made} == set("89ab")


def test_journal_rows_carry_what_the_upload_needs(gate, site: DemoSite) -> None:
    from agent import demo_data
    result = gate.scan(demo_data.CODES["valid"], gate.config.lane("north-in"), site.now)
    row = next(iter_all(gate.journal))
    assert row["uuid"] == result.uuid
    assert row["barcode"] == demo_data.CODES["valid"] and row["event_id"] == demo_data.EVENT_ID
    assert row["zone_id"] == demo_data.ENTRY_ZONE and row["zone_is_default"] == 1
    assert row["gate_id"] == demo_data.GATE_NORTH and row["lane"] == "north-in"
    assert row["scanned_on"].endswith("Z") and row["upload_state"] == "pending"


def test_unwritable_journal_fails_closed(site: DemoSite, gate) -> None:
    from agent import demo_data
    gate.journal.conn.execute("PRAGMA query_only = ON")  # stands in for a read-only disk
    result = gate.scan(demo_data.CODES["valid"], gate.config.lane("north-in"), site.now)
    assert not result.decision.admit and result.decision.detail == "journalUnavailable"
    assert result.uuid is None


def test_damaged_journal_is_kept_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    path.write_bytes(b"not a database at all" * 50)
    with pytest.raises(JournalUnavailable, match="journal.db"):
        Journal(path)
    assert path.read_bytes().startswith(b"not a database")


def test_a_claimed_batch_is_never_claimed_again_nor_regrouped_by_a_stale_claimer(
        tmp_path: Path) -> None:
    """Two connections on one journal file: the second claimer gets the first one's batch as
    it was fixed; a split planned from an outdated view of a batch changes nothing."""
    from datetime import UTC, datetime

    from tests.platform.sync.conftest import backlog, fill_journal

    a, b = Journal(tmp_path / "journal.db"), Journal(tmp_path / "journal.db")
    try:
        rows = backlog(10, datetime(2026, 1, 1, 12, tzinfo=UTC))
        fill_journal(a, rows)
        first = a.claim_batch(4, "batch-a")
        again = b.claim_batch(6, "batch-b")
        assert [r["uuid"] for r in first] == [r.uuid for r in rows[:4]]
        assert [r["uuid"] for r in again] == [r["uuid"] for r in first]
        assert {r["batch_uuid"] for r in again} == {"batch-a"}
        assert a.regroup("batch-a", [], [("part-1", [rows[0].uuid, rows[1].uuid]),
                                         ("part-2", [rows[2].uuid, rows[3].uuid])])
        # b still believes the rows are in batch-a: its split must not move them again
        assert not b.regroup("batch-a", [(rows[0].uuid, "bad")],
                             [("part-9", [rows[1].uuid])])
        state = {r["uuid"]: (r["upload_state"], r["batch_uuid"]) for r in iter_all(a)}
    finally:
        a.close()
        b.close()
    assert [state[r.uuid] for r in rows[:4]] == [("pending", "part-1")] * 2 + \
        [("pending", "part-2")] * 2
    assert {state[r.uuid] for r in rows[4:]} == {("pending", None)}


def _row(scan_uuid: str) -> JournalRow:
    return JournalRow(uuid=scan_uuid, code="C", kind="barcode", barcode="C", nfc_id=None,
                      item_id=1, event_id=2, zone_id=None, zone_is_default=True, gate_id=None,
                      lane="l", direction="in", admit=True, status="valid", status_detail=None,
                      message="m", scanned_on="2026-07-01T10:00:00.000000Z")


def test_scan_transaction_rolls_back_and_frees_the_writer_on_every_way_out(
        tmp_path: Path) -> None:
    """Commit on a normal exit (a `return` inside too); roll back on any error, an SQLite
    one raised as JournalUnavailable, anything else as it is; the writer lock is free after
    each, so the next scan is not stuck behind a failed one."""
    journal, other = Journal(tmp_path / "journal.db"), Journal(tmp_path / "journal.db")

    def returns_inside() -> str:
        with journal.scan_transaction():
            journal.insert(_row("kept-1"))
            return "returned"

    try:
        assert returns_inside() == "returned"
        with pytest.raises(KeyError):
            with journal.scan_transaction():
                journal.insert(_row("gone-1"))
                raise KeyError("not SQLite")
        with pytest.raises(JournalUnavailable, match="not writable.*NOT NULL"):
            with journal.scan_transaction():
                journal.insert(_row("gone-2"))
                journal.insert(replace(_row("gone-3"), code=None))  # type: ignore[arg-type]
        other.conn.execute("PRAGMA query_only = ON")  # a read-only file: BEGIN fails
        with pytest.raises(JournalUnavailable):
            with other.scan_transaction():
                other.insert(_row("gone-3"))
        other.conn.execute("PRAGMA query_only = OFF")
        assert not journal.conn.in_transaction and not other.conn.in_transaction
        writer = other._lock  # the in-process writer lock both share: released every time
        assert writer.acquire(timeout=10), "a failed transaction kept the writer lock"
        writer.release()
        journal.record(_row("kept-2"))
        assert [r["uuid"] for r in iter_all(journal)] == ["kept-1", "kept-2"]
    finally:
        journal.close()
        other.close()


def test_a_row_in_flight_is_an_admit_here_but_never_uploaded_until_settled(
        tmp_path: Path) -> None:
    """A venue claim in flight (agent.venue.claims): counted as this device's admit (a second
    scan is refused meanwhile), held from the upload, then settled or voided."""
    journal = Journal(tmp_path / "journal.db")
    try:
        rows = [replace(_row(u), item_id=7, event_id=1, venue="claiming", admit=True)
                for u in ("kept", "gone")]
        for row in rows:
            journal.record(row)
        journal.record(_row("plain"))
        assert [s.uuid for s in journal.own_admits(1, 7)] == ["kept", "gone"]
        assert [r["uuid"] for r in journal.claiming_rows(0, "9999")] == ["kept", "gone"]
        # by seq alone, whatever their time: the rows journaled up to it
        assert [r["uuid"] for r in journal.claiming_rows(journal.last_seq())] == \
            ["kept", "gone"]
        assert journal.claiming_rows(0) == []
        assert [r["uuid"] for r in journal.claim_batch(10, "b1")] == ["plain"]
        journal.mark_sent(["plain"], "2026-01-01T00:00:00.000000Z")
        assert journal.settle_claim("kept", "claimed")
        assert not journal.settle_claim("kept", "offline")  # settled once
        assert journal.void_claim("gone", "conflicted")
        assert not journal.void_claim("gone", "again")
        assert [s.uuid for s in journal.own_admits(1, 7)] == ["kept"]
        assert journal.claiming_rows(journal.last_seq(), "9999") == []
        assert [r["uuid"] for r in journal.claim_batch(10, "b2")] == ["kept"]
        counts = journal.counts()  # the voided attempt is not a local-only code
        assert (counts["local"], counts["voided"], counts["pending"]) == (0, 1, 1)
        (gone,) = [r for r in iter_all(journal) if r["uuid"] == "gone"]
        assert (gone["admit"], gone["upload_state"], gone["venue"], gone["reason"]) == \
            (0, "local", "void", "conflicted")
    finally:
        journal.close()
