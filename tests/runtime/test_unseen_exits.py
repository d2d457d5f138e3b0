"""An exit nobody saw never frees the ticket, whichever path ends its passage wait.

The lane's own deadline voided an unseen exit (tests/runtime/test_turnstile_signals.py), but
the other paths that end a wait let it stand: a reload stopping the lane, the upload's bound
(PASSAGE_HOLD_LIMIT_S) and a restart after a crash (the real kill -9 is in
tests/runtime/daemon/test_turnstile_e2e.py). Standing an exit takes the holder as outside —
the ticket free to come in again, handed back over the barrier — while they may be inside.
Entries keep standing there (voiding would free the ticket for a second person).

Real lane thread, SQLite journal and cache, `sim:` relays and passage inputs
(tests/runtime/lanerig.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from agent import demo_data
from agent.core.codes import utc_iso
from agent.runtime.gate import Gate
from agent.runtime.opening import open_cache, open_journal
from agent.store.journal import PASSAGE_HOLD_LIMIT_S, Journal
from agent.store.passages import PassageLog
from tests.conftest import DemoSite
from tests.rigs import wait_until
from tests.runtime.lanerig import LaneRig

C = demo_data.CODES


@pytest.fixture
def both(site: DemoSite) -> Iterator[tuple[LaneRig, str, str]]:
    """An in/out lane with an entry and an exit of two tickets, both waiting for their
    passage (nobody walks through)."""
    rig = LaneRig(site, "unseen", direction="auto", zone_id=demo_data.FLOOR_ZONE,
                  max_entries=0, relay_out="sim:unseen-out", passage_out="sim:unseen-outpass",
                  passage_timeout_ms=120000)
    try:
        wait_until(lambda: rig.runner.passage.inputs["out"].connected, 5, "exit input")
        entry = rig.scan(C["floor"]).result
        assert (entry.decision.direction, entry.decision.admit) == ("in", True)
        exit_ = rig.scan(C["floor"]).result
        assert (exit_.decision.direction, exit_.decision.admit) == ("out", True)
        assert rig.passage(entry.uuid) == rig.passage(exit_.uuid) == "waiting"
        assert entry.uuid and exit_.uuid
        yield rig, entry.uuid, exit_.uuid
    finally:
        rig.close()


def direction_now(site: DemoSite, rig: LaneRig) -> str:
    """Where the floor ticket's holder is, as a fresh gate decides it: `out` while inside."""
    gate = Gate(open_cache(site.config), open_journal(site.config), site.config)
    try:
        decision = gate._decide(C["floor"], rig.lane, datetime.now(UTC), None, "barcode", None)
    finally:
        gate.close()
    return decision.direction


def test_a_reload_stopping_the_lane_voids_an_unseen_exit(
        site: DemoSite, both: tuple[LaneRig, str, str]) -> None:
    rig, entry, exit_ = both
    rig.runner.stop()  # what a reload does to the lane
    assert rig.passage(exit_) == "voided"
    assert rig.scan_row(exit_) == (0, "denied", "notPassed")
    note = rig.db.execute("SELECT note FROM passages WHERE uuid = ?", (exit_,)).fetchone()[0]
    assert "the lane stopped" in note and "exit nobody saw" in note
    assert [c["uuid"] for c in rig.voided_claims] == [exit_]  # the venue is told
    assert rig.passage(entry) == "interrupted"  # the entry stands, as before
    assert rig.scan_row(entry) == (1, "valid", None)
    assert direction_now(site, rig) == "out"  # still inside: no re-entry on this ticket


def test_the_upload_bound_voids_an_unseen_exit(
        site: DemoSite, both: tuple[LaneRig, str, str]) -> None:
    """The lane is gone (its waits orphaned): the upload's bound settles them."""
    rig, entry, exit_ = both
    old = utc_iso(datetime.now(UTC) - timedelta(seconds=PASSAGE_HOLD_LIMIT_S + 5))
    with rig.db:
        rig.db.execute("UPDATE passages SET waiting_since = ?", (old,))
    uploader = Journal(site.config.store_dir / "journal.db")  # the uploader's connection
    try:
        claimed = {r["uuid"]: (r["admit"], r["status"], r["status_detail"])
                   for r in uploader.claim_batch(50, "batch-bound")}
    finally:
        uploader.close()
    assert claimed[exit_] == (0, "denied", "notPassed")  # sent as `failed`, never an exit
    assert claimed[entry] == (1, "valid", None)
    assert (rig.passage(exit_), rig.passage(entry)) == ("voided", "interrupted")
    assert direction_now(site, rig) == "out"


def test_a_restart_voids_an_unseen_exit_and_lets_an_entry_stand(
        site: DemoSite, both: tuple[LaneRig, str, str]) -> None:
    """What the daemon runs at start-up over the waits a crash left (the whole kill -9 is
    tests/runtime/daemon/test_turnstile_e2e.py)."""
    rig, entry, exit_ = both
    journal = Journal(site.config.store_dir / "journal.db")
    try:
        settled = PassageLog(journal).settle_interrupted()
    finally:
        journal.close()
    assert settled.stood == 1 and [s["uuid"] for s in settled.voided] == [exit_]
    assert rig.scan_row(exit_) == (0, "denied", "notPassed")
    assert rig.scan_row(entry) == (1, "valid", None)
    assert (rig.passage(exit_), rig.passage(entry)) == ("voided", "interrupted")
    assert direction_now(site, rig) == "out"
