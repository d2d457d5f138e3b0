"""What the journal still tells the venue bus about rows `prune_sent` deleted (sent rows past
retention): the outcome of an exit's passage (`exit_outcomes`, from `passages`, which prune
keeps) and which claims it can say were never admitted here (`unjournaled`, by the prune
horizon, migration 0009). Before, a pruned row read as "no such scan": an exit awaiting its
passage on the bus was never settled, and a restart's sweep voided every pruned claim.
Real SQLite files; the bus's side is tests/venue/test_pruned_exits.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from agent.store.journal import Journal
from agent.store.journal_schema import MIGRATIONS
from agent.store.passages import PassageLog, await_passage, now_iso
from agent.store.sqlite import migrate, open_database
from tests.store.test_journal_schema import _row

SENT_AT = "2026-12-06T10:00:00.000000Z"
LATER = "2026-12-07T10:00:00.000000Z"  # the prune's `older_than`: every row sent before it


def _claim(uuid: str, at: str, **changes: object) -> object:
    return replace(_row(uuid, admit=True, venue="claimed"), scanned_on=at, **changes)


def _sent(journal: Journal, *uuids: str) -> None:
    journal.mark_sent(list(uuids), SENT_AT)


def test_the_prune_horizon_keeps_a_pruned_claim_from_being_taken_as_never_admitted(
        tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    try:
        journal.record(_claim("c1", "2026-12-06T09:00:01.000000Z"))
        journal.record(replace(_row("n1", admit=True), scanned_on="2026-12-06T09:30:00.000000Z"))
        journal.record(_claim("c2", "2026-12-06T09:00:02.000000Z"))  # a clock stepped back
        journal.record(_claim("c3", "2026-12-06T11:00:00.000000Z"))  # the newest: kept
        claims = [{"uuid": u, "scanned_on": at} for u, at in (
            ("c1", "2026-12-06T09:00:01.000000Z"), ("c3", "2026-12-06T11:00:00.000000Z"),
            ("old", "2026-12-06T08:00:00.000000Z"), ("new", "2026-12-06T09:00:03.000000Z"))]
        claims.append({"uuid": "undated"})  # its time not known: an admit's row perhaps pruned
        # nothing pruned yet: every claim without its admit is judged never admitted
        assert journal.unjournaled(claims) == {"old", "new", "undated"}
        _sent(journal, "c1", "n1", "c2", "c3")
        assert journal.prune_sent(LATER) == 3
        # pruned: c1 (and "old", scanned before the newest venue row pruned, and "undated",
        # which may be as old) cannot be told from a claim never committed, so they stand;
        # "new" is after every pruned row. A row without a venue mark (n1, later) moves
        # nothing: no claim of it is on the bus.
        assert journal.unjournaled(claims) == {"new"}
        assert journal.conn.execute("SELECT scanned_through FROM prune_horizon").fetchall() \
            == [("2026-12-06T09:00:02.000000Z",)]
        journal.record(_claim("c4", "2026-12-06T12:00:00.000000Z"))
        _sent(journal, "c3", "c4")
        journal.prune_sent("2026-12-06T09:00:00.000000Z")  # nothing that old: no change
        assert journal.unjournaled(claims) == {"new"}
        assert journal.prune_sent(LATER) == 1  # c3; the horizon only moves up
        assert journal.unjournaled(claims) == set()
    finally:
        journal.close()


def test_a_claim_whose_row_says_it_was_no_admit_is_voided_whatever_the_horizon(
        tmp_path: Path) -> None:
    """A claim handed back by a void (`VenueBus.void_now`: a passage voided, a claim refused
    after its grant) whose row is still here as a refusal: never admitted, however old or
    undated; the row itself says its admit was not pruned."""
    journal = Journal(tmp_path / "journal.db")
    try:
        journal.record(_claim("c1", "2026-12-06T09:00:05.000000Z"))
        journal.record(_claim("v1", "2026-12-06T09:00:01.000000Z", admit=False,
                              status="denied", venue="void"))
        journal.record(_claim("a1", "2026-12-06T09:00:02.000000Z"))  # an admit: stands
        journal.record(_claim("last", "2026-12-06T11:00:00.000000Z"))
        _sent(journal, "c1", "a1", "last")
        assert journal.prune_sent(LATER) == 2
        assert journal.conn.execute("SELECT scanned_through FROM prune_horizon").fetchall() \
            == [("2026-12-06T09:00:05.000000Z",)]
        assert journal.unjournaled([
            {"uuid": "v1"}, {"uuid": "v1", "scanned_on": "2026-12-06T09:00:01.000000Z"},
            {"uuid": "a1"}, {"uuid": "c1", "scanned_on": "2026-12-06T09:00:05.000000Z"},
            {"uuid": "gone"}]) == {"v1"}
        # a passage voided on a shared scan (no venue mark: not in scans_claims), its void
        # handed back to the sweep: judged by the time the void carries, after the horizon
        with journal.scan_transaction():
            seq = journal.insert(replace(_row("p1", admit=True), scanned_on=LATER))
            await_passage(journal, "p1", seq, "north", "in", 3, "valid", None, now_iso())
        voided = PassageLog(journal).void("p1", now_iso())
        assert voided is not None and voided["scanned_on"] == LATER
        assert journal.unjournaled([voided]) == {"p1"}
    finally:
        journal.close()


def _exit(journal: Journal, uuid: str) -> None:
    with journal.scan_transaction():
        seq = journal.insert(_row(uuid, admit=True, direction="out", venue="claimed"))
        await_passage(journal, uuid, seq, "north", "out", 3, "valid", None, now_iso())


def test_an_exits_outcome_outlives_its_pruned_row(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    try:
        for uuid in ("passed", "voided", "waiting"):
            _exit(journal, uuid)
        journal.record(_row("newest", admit=False))
        log = PassageLog(journal)
        assert log.passed("passed", now_iso())
        assert log.void("voided", now_iso()) is not None
        before = journal.exit_outcomes(["passed", "voided", "waiting"])
        assert {u: (stands, row is not None) for u, (stands, row) in before.items()} \
            == {"passed": (True, True), "voided": (False, True)}
        # the waiting exit holds the upload from itself on: it can never be pruned
        assert [r["uuid"] for r in journal.ready(10)] == ["passed", "voided"]
        journal.mark_sent(["passed", "voided"], SENT_AT)
        assert journal.prune_sent(LATER) == 2
        assert journal.exit_outcomes(["passed", "voided", "waiting"]) \
            == {"passed": (True, None), "voided": (False, None)}
    finally:
        journal.close()


def _passage(journal: Journal, uuid: str, direction: str, venue: str | None) -> None:
    with journal.scan_transaction():
        seq = journal.insert(_row(uuid, admit=True, direction=direction, venue=venue))
        await_passage(journal, uuid, seq, "north", direction, 3, "valid", None, now_iso())


def _passages(journal: Journal) -> dict[str, str]:
    return dict(journal.conn.execute("SELECT uuid, state FROM passages"))


def test_passages_are_pruned_with_their_rows_but_a_venue_exit_until_the_bus_lets_it_go(
        tmp_path: Path) -> None:
    """`passages` grew by a row per admit on a passage lane all season: an entry's, and an
    exit's decided without a venue, go with their pruned row; a venue exit's stays until the
    bus says the venue no longer awaits it (`forget_exit_outcomes`); a wait never goes."""
    journal = Journal(tmp_path / "journal.db")
    try:
        for uuid, direction, venue in (("in-v", "in", "claimed"), ("in-0", "in", None),
                                       ("out-0", "out", None), ("out-v", "out", "claimed"),
                                       ("out-w", "out", "claimed"), ("in-kept", "in", None)):
            _passage(journal, uuid, direction, venue)
        journal.record(_row("newest", admit=False))
        log = PassageLog(journal)
        for uuid in ("in-v", "in-0", "out-0", "in-kept"):
            assert log.passed(uuid, now_iso())
        assert log.void("out-v", now_iso()) is not None
        _sent(journal, "in-v", "in-0", "out-0", "out-v")  # in-kept: not sent, not pruned
        with journal.conn:  # sent though its exit waits (as a hand-over could have)
            journal.conn.execute("UPDATE scans SET upload_state = 'sent', sent_at = ? WHERE"
                                 " uuid = 'out-w'", (SENT_AT,))
        assert journal.prune_sent(LATER) == 5
        assert _passages(journal) == {"out-v": "voided", "out-w": "waiting",
                                      "in-kept": "passed"}
        # the bus: out-v still awaits on the venue (its void not applied yet): kept
        assert journal.forget_exit_outcomes(["out-v"]) == 0
        assert journal.exit_outcomes(["out-v"]) == {"out-v": (False, None)}
        assert journal.forget_exit_outcomes([]) == 1  # no longer awaited: let go
        assert _passages(journal) == {"out-w": "waiting", "in-kept": "passed"}
    finally:
        journal.close()


def test_the_upgrade_deletes_the_passages_of_entries_pruned_before(tmp_path: Path) -> None:
    """A journal of before (migrations up to 0009) that pruned rows and kept their passages:
    the settled entries' go at the upgrade; exits' are the bus's to let go, waits stay."""
    path = tmp_path / "journal.db"
    db = open_database(path, synchronous="FULL")
    migrate(db, [m for m in MIGRATIONS if m[0] < "0010"])
    conn = db.conn
    for seq, (uuid, direction, state) in enumerate((
            ("in-1", "in", "passed"), ("in-2", "in", "interrupted"), ("out-1", "out", "passed"),
            ("in-w", "in", "waiting"), ("in-kept", "in", "passed")), start=1):
        conn.execute(
            "INSERT INTO scans (seq, uuid, code, kind, lane, direction, admit, status, message,"
            " scanned_on, venue) VALUES (?, ?, 'NU-1', 'barcode', 'north', ?, 1, 'valid', 'm',"
            " ?, 'claimed')", (seq, uuid, direction, SENT_AT))
        conn.execute(
            "INSERT INTO passages (uuid, scan_seq, lane, direction, state, admitted_status,"
            " waiting_since) VALUES (?, ?, 'north', ?, ?, 'valid', ?)",
            (uuid, seq, direction, state, SENT_AT))
    conn.execute("DELETE FROM scans WHERE uuid <> 'in-kept'")  # pruned as it did
    conn.commit()
    conn.close()
    journal = Journal(path)
    try:
        assert _passages(journal) == {"out-1": "passed", "in-w": "waiting", "in-kept": "passed"}
    finally:
        journal.close()


def _journal_of_before(path: Path, uuids: list[str], prune: list[str]) -> None:
    """A journal as session 10 left it (migrations up to 0008), its `prune` rows deleted as
    its own `prune_sent` did."""
    db = open_database(path, synchronous="FULL")
    migrate(db, [m for m in MIGRATIONS if m[0] < "0009"])
    conn = db.conn
    for i, uuid in enumerate(uuids):
        conn.execute(
            "INSERT INTO scans (uuid, code, kind, lane, direction, admit, status, message,"
            " scanned_on, upload_state, venue, sent_at) VALUES (?, 'NU-1', 'barcode', 'north',"
            " 'in', 1, 'valid', 'm', ?, 'sent', 'claimed', ?)", (uuid, f"2026-12-0{i + 1}"
            "T09:00:00.000000Z", SENT_AT))
    conn.executemany("DELETE FROM scans WHERE uuid = ?", [(u,) for u in prune])
    conn.commit()
    conn.close()


def test_a_journal_an_earlier_version_pruned_starts_with_its_newest_scan_as_horizon(
        tmp_path: Path) -> None:
    """Its upgrade's restart judges every claim again: those it had pruned must stand."""
    _journal_of_before(tmp_path / "pruned.db", ["c1", "c2", "c3"], ["c1"])
    _journal_of_before(tmp_path / "whole.db", ["c1", "c2", "c3"], [])
    claims = [{"uuid": "c1", "scanned_on": "2026-12-01T09:00:00.000000Z"},
              {"uuid": "never", "scanned_on": "2026-12-04T09:00:00.000000Z"}]
    for name, horizon, unjournaled in (
            ("pruned.db", [("2026-12-03T09:00:00.000000Z",)], {"never"}),
            ("whole.db", [], {"never"})):
        journal = Journal(tmp_path / name)
        try:
            assert journal.conn.execute("SELECT scanned_through FROM prune_horizon"
                                        ).fetchall() == horizon
            assert journal.unjournaled(claims) == unjournaled
        finally:
            journal.close()
    journal = Journal(tmp_path / "whole.db")
    try:  # a gap inside, not at the start: pruned too
        journal.conn.execute("DELETE FROM prune_horizon")
        journal.conn.execute("DELETE FROM migrations WHERE name = '0009_prune_horizon'")
        journal.conn.execute("DROP TABLE prune_horizon")
        journal.conn.execute("DELETE FROM scans WHERE uuid = 'c2'")
        journal.conn.commit()
    finally:
        journal.close()
    journal = Journal(tmp_path / "whole.db")
    try:
        assert journal.conn.execute("SELECT scanned_through FROM prune_horizon").fetchall() \
            == [("2026-12-03T09:00:00.000000Z",)]
    finally:
        journal.close()
