"""A lane whose reads of venue.db fail while it decides refuses the scan and journals the
refusal (agent.errors.VenueUnavailable), instead of ending the decision with an exception:
no relay, but nothing journaled either, which broke "a refusal is always recorded".

A real device (its bus unreachable, policy `local`: no NATS needed), real SQLite files. The
reads fail for real: another process (a technician's `sqlite3` shell, say) renames the table a
read needs, and renames it back. Two reads: the venue's admits of the ticket (every decision
with a venue) and the subject's last sequence a claim must expect (an admit's claim only).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import demo_data
from agent.venue.node import free_ports
from tests.venue.rig import VenueDevice, make_device, write_platform_files


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VenueDevice]:
    tmp_path = tmp_path_factory.mktemp("venue-unread")
    now = datetime.now(UTC).replace(microsecond=0)
    files = write_platform_files(tmp_path / "platform", now, 8)
    dead = f"nats://127.0.0.1:{free_ports(1)[0]}"
    dev = make_device(tmp_path, "solo", [dead], files, now, policy="local", timeout_ms=100)
    try:
        yield dev
    finally:
        dev.gate().close()
        dev.bus.stop()


def rename(db: Path, old: str, new: str) -> None:
    """Another process renames a table of venue.db."""
    subprocess.run([sys.executable, "-c", (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute(f'ALTER TABLE {sys.argv[2]} RENAME TO {sys.argv[3]}'); c.commit()"),
        str(db), old, new], check=True, timeout=30)


def rows_of(dev: VenueDevice, code: str) -> list[tuple[int, str, str | None]]:
    return [(row["admit"], row["status"], row["status_detail"]) for row in dev.journal_rows()
            if row["code"] == code]


@pytest.mark.parametrize(("table", "index"), [("venue_scans", 0), ("venue_subjects", 2)])
def test_a_venue_db_read_that_fails_refuses_the_scan_and_journals_it(
        device: VenueDevice, table: str, index: int, caplog: pytest.LogCaptureFixture) -> None:
    gate = device.gate()
    lane = gate.config.lane("north-in")
    code, later = demo_data.bulk_barcode(index), demo_data.bulk_barcode(index + 1)
    venue_db = device.bus.store_path
    rename(venue_db, table, f"{table}_away")
    try:
        with caplog.at_level(logging.ERROR):
            result = gate.scan(code, lane, datetime.now(UTC))
    finally:
        rename(venue_db, f"{table}_away", table)
    decision = result.decision
    assert (decision.admit, decision.status, decision.detail) == \
        (False, "denied", "storeUnavailable")
    assert result.uuid is not None  # journaled
    assert rows_of(device, code) == [(0, "denied", "storeUnavailable")]
    said = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any(str(venue_db) in text and table in text for text in said), said
    # the table back: the ticket (refused, never admitted) and the next one admit
    for again in (code, later):
        assert gate.scan(again, lane, datetime.now(UTC)).decision.admit
    assert rows_of(device, code)[-1][0] == 1
