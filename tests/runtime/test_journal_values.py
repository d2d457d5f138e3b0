"""Issue 18: a scan's journal row is built as a tuple straight from its Decision.

`_journal_values` must give exactly the values `_journal_row` (the JournalRow every other
writer and the venue path still use) puts in the table, column for column, with the same types
(compared by `repr`, so `True` and `1` differ; a missing value given as NO_VALUE, which
`Journal.insert_scan` stores as NULL): over generated decisions and lanes, and through a real
journal file, where both rows must read back alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import LaneConfig
from agent.core.codes import utc_iso
from agent.core.decide import Decision
from agent.runtime.gate import _journal_row, _journal_values
from agent.store.journal import _COLUMNS, NO_VALUE, SCAN_COLUMNS, Journal, _values

TEXT = st.text(max_size=12)
IDS = st.one_of(st.none(), st.integers(-(2 ** 40), 2 ** 40))
DECISIONS = st.builds(
    Decision, admit=st.booleans(), status=st.sampled_from(["valid", "denied", "alreadyIn"]),
    detail=st.one_of(st.none(), TEXT), direction=st.sampled_from(["in", "out"]), message=TEXT,
    code=TEXT, kind=st.sampled_from(["barcode", "nfc"]), record=st.booleans(),
    event_id=IDS, item_id=IDS, zone_id=IDS, zone_is_default=st.booleans(),
    barcode=st.one_of(st.none(), TEXT))
LANES = st.builds(LaneConfig, name=st.text(min_size=1, max_size=8), gate_id=IDS)
MOMENTS = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                       timezones=st.just(UTC))


def stored(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """What SQLite keeps of bound values: a bool is the integer 0 or 1."""
    return tuple(int(v) if isinstance(v, bool) else v for v in values)


def row_of(fast: tuple[Any, ...]) -> tuple[Any, ...]:
    """The row `insert_scan` writes from `_journal_values`: NO_VALUE as None, the columns
    after SCAN_COLUMNS None."""
    return tuple(None if v is NO_VALUE else v for v in fast) + \
        (None,) * (len(_COLUMNS) - len(SCAN_COLUMNS))


@settings(max_examples=400, deadline=None)
@given(DECISIONS, LANES, MOMENTS)
def test_values_are_the_journal_rows(decision: Decision, lane: LaneConfig, now: datetime) -> None:
    fast = _journal_values("u-1", decision, lane, utc_iso(now))
    assert len(fast) == len(SCAN_COLUMNS)
    # each value bound without sqlite3's adapters: exactly an int or a str, or NO_VALUE
    assert all(type(v) in (int, str) or v is NO_VALUE for v in fast), fast
    assert repr(row_of(fast)) == repr(stored(_values(_journal_row("u-1", decision, lane, now))))


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journal]:
    journal = Journal(tmp_path_factory.mktemp("values") / "journal.db")
    yield journal
    journal.close()


@settings(max_examples=150, deadline=None)
@given(DECISIONS, LANES, MOMENTS)
def test_a_row_of_values_reads_back_as_its_journal_row(journal: Journal, decision: Decision,
                                                       lane: LaneConfig, now: datetime) -> None:
    """Through a real file: `insert_scan` (a missing value given as NO_VALUE, made NULL by
    its statement) stores what `insert` of the JournalRow stores, for any decision."""
    with journal.scan_transaction():
        journal.insert(_journal_row("row", decision, lane, now))
        journal.insert_scan(_journal_values("tuple", decision, lane, utc_iso(now)))
    try:
        rows = journal.conn.execute(
            f"SELECT uuid, {', '.join(_COLUMNS[1:])} FROM scans WHERE uuid IN ('row', 'tuple')"
            " ORDER BY seq").fetchall()
    finally:
        journal.conn.execute("DELETE FROM scans")
    assert [r[0] for r in rows] == ["row", "tuple"]
    assert repr(rows[0][1:]) == repr(rows[1][1:])
    assert repr(rows[1][1:]) == repr(stored(_values(_journal_row("x", decision, lane, now)))[1:])


def test_both_rows_read_back_alike_from_a_journal_file(tmp_path: Path) -> None:
    """Every kind of row a scan leaves (an admit, a refusal of a ticket, an unknown barcode,
    an unknown tag), written each way into one journal, reads back the same but for seq/uuid."""
    journal = Journal(tmp_path / "journal.db")
    lane = LaneConfig(name="north", gate_id=7)
    now = datetime(2026, 12, 6, 12, 0, 5, tzinfo=UTC)
    admit = Decision(True, "valid", None, "in", "Welcome", "ABC123", "barcode", event_id=3,
                     item_id=41, zone_id=9, zone_is_default=True, barcode="ABC123")
    cases = [admit,
             replace(admit, admit=False, status="denied", detail="refunded", direction="out"),
             Decision(False, "denied", "unknownCode", "in", "Unknown", "ZZZ", "barcode"),
             Decision(False, "denied", "unknownCode", "in", "Unknown", "04A1B2C3", "nfc")]
    try:
        for n, decision in enumerate(cases):
            with journal.scan_transaction():
                journal.insert(_journal_row(f"row-{n}", decision, lane, now))
            with journal.scan_transaction():
                journal.insert_scan(_journal_values(f"tuple-{n}", decision, lane, utc_iso(now)))
        rows = journal.conn.execute(f"SELECT {', '.join(_COLUMNS[1:])} FROM scans ORDER BY seq"
                                    ).fetchall()
    finally:
        journal.close()
    assert len(rows) == 2 * len(cases)
    for n in range(len(cases)):
        assert rows[2 * n] == rows[2 * n + 1]
    assert [r[_COLUMNS.index("upload_state") - 1] for r in rows[::2]] == \
        ["pending", "pending", "local", "local"]
