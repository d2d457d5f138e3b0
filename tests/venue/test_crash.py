"""`kill -9` of a gate between its claim on the bus and its journal commit: the claim must not
stand. The ticket is usable again once the gate restarts, and nothing of the attempt is in the
journal (so nothing is ever uploaded as an entry). Real child process, real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import demo_data
from agent.config import load_config
from agent.store.journal import Journal
from agent.store.venue import VenueStore
from agent.venue import bus as bus_module
from agent.venue import messages
from agent.venue.bus import VenueBus
from agent.venue.node import NodeProcess
from tests.conftest import PROJECT_ROOT
from tests.faults.conftest import site_factory  # noqa: F401 - fixture
from tests.faults.test_crash import storm
from tests.venue.rig import VenueDevice, venue_devices, wait_until

CODE = demo_data.bulk_barcode(2)


def _killed_child(device: VenueDevice, mode: str, code: str) -> str:
    """With the device's own bus stopped, run tests.venue.crash_child in MODE on its files and
    SIGKILL it where it stops (its line: CLAIMED or COMMITTED, and the scan's uuid); the uuid."""
    device.bus.stop()
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.venue.crash_child", str(device.config_path), code, mode],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert line.startswith("CLAIMED" if mode == "claimed" else "COMMITTED"), line
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(10)
        if child.stdout:
            child.stdout.close()
    return line.split()[1]


def _kill_child_at(device: VenueDevice, mode: str, code: str) -> str:
    """`_killed_child` after the admit's commit: its row is left durable as 'claiming'."""
    scan_uuid = _killed_child(device, mode, code)
    (row,) = [r for r in device.journal_rows() if r["uuid"] == scan_uuid]
    assert (row["venue"], row["admit"]) == ("claiming", 1)
    return scan_uuid


def test_kill_between_claim_and_commit_voids_the_claim_on_restart(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    with venue_devices(tmp_path, [venue_node.url], 2, 5) as (a, b):
        claim_uuid = _killed_child(a, "claimed", CODE)  # device a runs as a child now
        lane = b.gate().config.lane("north-in")
        # while the crashed gate is down its claim stands: the ticket is refused (fail closed)
        wait_until(lambda: b.bus.applied_seq >= 1, 5, "b sees the claim")
        assert b.gate().scan(CODE, lane, datetime.now(UTC)).decision.status == "alreadyIn"
        assert not [r for r in a.journal_rows() if r["uuid"] == claim_uuid]
        a.restart_bus()  # the crashed gate comes back: its sweep voids the orphan claim
        wait_until(lambda: a.bus.counters["voids"] == 1, 10, "a voids its claim")
        wait_until(lambda: b.venue_store().conn.execute(
            "SELECT voided FROM venue_scans WHERE uuid = ?", (claim_uuid,)).fetchone() == (1,),
            10, "b applies the void")
        result = b.gate().scan(CODE, lane, datetime.now(UTC))
        assert result.decision.admit  # usable again
        # the crashed attempt left nothing in a's journal: nothing to upload as an entry
        assert not [r for r in a.journal_rows() if r["uuid"] == claim_uuid]
        assert [r["code"] for r in a.journal_rows()] == []


def test_kill_after_the_commit_of_a_granted_claim_keeps_the_admit(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """Killed with the admit durable as 'claiming' and the claim granted on the bus: the gate
    may have opened, so after the restart the admit stands, everywhere, and is uploaded."""
    code = demo_data.bulk_barcode(3)
    with venue_devices(tmp_path, [venue_node.url], 2, 5) as (a, b):
        scan_uuid = _kill_child_at(a, "committed", code)
        lane = b.gate().config.lane("north-in")
        wait_until(lambda: b.bus.applied_seq >= 1, 5, "b sees the claim")
        a.restart_bus()  # its sweep settles the row from the stream
        wait_until(lambda: [r["venue"] for r in a.journal_rows()] == ["claimed"], 10,
                   "a settles its row")
        (row,) = a.journal_rows()
        assert (row["admit"], row["upload_state"]) == (1, "pending")
        assert a.bus.counters["voids"] == 0
        assert b.gate().scan(code, lane, datetime.now(UTC)).decision.status == "alreadyIn"
        journal = Journal(a.bus.store_path.with_name("journal.db"))
        try:  # no longer held from the upload
            assert [r["uuid"] for r in journal.claim_batch(10, "batch-1")] == [scan_uuid]
        finally:
            journal.close()


def test_kill_after_the_commit_of_a_claim_never_sent_voids_the_admit(
        tmp_path: Path, venue_node: NodeProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed with the admit durable as 'claiming' while its claim never left the process:
    it was never granted, so the gate never opened; after the restart the row is voided
    (kept, never uploaded) and the ticket is usable."""
    code = demo_data.bulk_barcode(4)
    with venue_devices(tmp_path, [venue_node.url], 2, 5) as (a, b):
        _kill_child_at(a, "unsent", code)
        # while nothing settles it, status says so (normally after 5 s)
        monkeypatch.setattr(bus_module, "UNANSWERED_AFTER_S", 0.0)
        journal = Journal(a.bus.store_path.with_name("journal.db"))
        try:
            assert a.bus.get_status(journal)["claims_unanswered"] == 1
        finally:
            journal.close()
        a.restart_bus()
        wait_until(lambda: [r["venue"] for r in a.journal_rows()] == ["void"], 10,
                   "a voids its row")
        (row,) = a.journal_rows()
        assert (row["admit"], row["upload_state"]) == (0, "local")
        assert "never reached the bus" in row["reason"]
        lane = b.gate().config.lane("north-in")
        assert b.gate().scan(code, lane, datetime.now(UTC)).decision.admit
        journal = Journal(a.bus.store_path.with_name("journal.db"))
        try:
            assert journal.claim_batch(10, "batch-1") == []  # nothing of it is uploaded
        finally:
            journal.close()


def test_sigkill_storm_with_a_venue(site_factory, venue_node: NodeProcess) -> None:  # noqa: F811
    """Round one's crash storm with [venue]: nothing lost or duplicated at the platform, never
    two admits per ticket, and after the last restart every claim standing on the bus has its
    admit in the journal (orphans of the kills were voided) and every admit journaled as
    granted ('claimed') still stands on the bus (a void of it would free the ticket at every
    other gate: a double admit in the venue)."""
    # 6,000 tickets: fresh ones for about 3 x 8 cycles of 250 scans and the last run's 600
    site = storm(site_factory, cycles=8, per_cycle=250, final=600, min_kills=6,
                 min_decisions=1500, figures="crash_venue", tickets=6000, extra=f"""
[venue]
name = "storm"
servers = ["{venue_node.url}"]
device = "fault"
claim_timeout_ms = 500
""")
    config = load_config(site.config)
    assert config.venue is not None
    # What the storm left on the bus, from the server itself. The checks below read venue.db,
    # which is the stream applied: they mean something only once it holds all of this. (The
    # bus's own `lag` reads 0 from the moment it connects, before its consumer has asked the
    # server where the stream ends: a check then reads venue.db as the last daemon left it,
    # where a claim not yet applied looks missing and a void not yet applied hides a voided
    # claim.)
    left = venue_node.stream_last_seq(messages.stream_name(config.venue["name"]))
    assert left is not None and left > 0
    bus = VenueBus(config.venue, config.store_dir, config.store_dir / "journal.db")
    bus.start()
    try:
        wait_until(lambda: bus.applied_seq >= left, 30, "the storm's stream applied")
        store = VenueStore(bus.store_path)
        journal = Journal(config.store_dir / "journal.db")
        try:
            def orphans() -> list[str]:
                claims = [c["uuid"] for c in store.standing_claims("fault", "9999")]
                return sorted(set(claims) - journal.admitted(claims))

            # this bus's sweep voids them; venue.db shows each void once it is applied
            wait_until(lambda: not orphans(), 10, "no claim without its admit")
            claimed = [r["uuid"] for r in site.journal_rows()
                       if r["venue"] == "claimed" and r["admit"]]
            standing = {c["uuid"] for c in store.standing_claims("fault", "9999")}
            not_standing = sorted(set(claimed) - standing)
            assert claimed and not not_standing, \
                f"claimed admits not among the standing claims: {not_standing[:5]}"
            voided = store.conn.execute(
                "SELECT COUNT(*) FROM venue_scans WHERE voided = 1").fetchone()[0]
            print(f"claims voided after kills: {voided}")
        finally:
            store.close()
            journal.close()
    finally:
        bus.stop()
