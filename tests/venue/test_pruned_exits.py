"""An exit awaiting its passage on the bus, whose journal row was pruned before its
confirmation got out, is still settled; and a restart's sweep voids no claim only because
its row was pruned.

The journal deletes sent rows past retention (agent.store.journal `prune_sent`; hourly, and
`sent_retention_days` may be 0). The bus settles this gate's awaiting exits from the journal
(agent.venue.bus `_settle_exits`), and after a restart its sweep judges every claim of this
gate again by the journal. A row pruned while the bus was down (or before this gate's
venue.db had applied the claim) read as "not in the journal": the exit stayed awaiting for
every gate for ever (the holder, gone out, refused `alreadyIn` everywhere), and the restart's
sweep voided the gate's old claims as if their commits had never come, entries included (the
ticket inside read as outside: a pass-back admitted).

A real nats-server, real `Gate`s over real SQLite files (tests/venue/rig.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.core.codes import utc_iso
from agent.store.passages import PassageLog, now_iso
from agent.venue import bus as venue_bus
from agent.venue.node import NodeProcess
from tests.venue.rig import VenueDevice, venue_devices, wait_until
from tests.venue.test_pending_exits import applied, journal_of, out_waiting, scan

pytestmark = pytest.mark.e2e


def _sent_and_pruned(device: VenueDevice) -> list[str]:
    """Every pending row of `device`'s journal marked sent a day ago and pruned (as the
    upload and the prune job do with `sent_retention_days = 0`); the uuids pruned."""
    journal = journal_of(device)
    try:
        rows = journal.ready(1000)
        day_ago = utc_iso(datetime.now(UTC) - timedelta(days=1))
        journal.mark_sent([r["uuid"] for r in rows], day_ago)
        before = {r["uuid"] for r in journal.after(0, 1000)}
        journal.prune_sent(utc_iso(datetime.now(UTC)))
        return sorted(before - {r["uuid"] for r in journal.after(0, 1000)})
    finally:
        journal.close()


def test_an_exit_pruned_before_its_confirmation_is_confirmed_from_its_passage(
        tmp_path: Path, venue_node: NodeProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """And its `passages` row, kept by the prune for this, goes once the venue no longer
    awaits the exit (every round here; hourly in service), not before."""
    monkeypatch.setattr(venue_bus, "FORGET_EXITS_EVERY_S", 0.0)
    with venue_devices(tmp_path, [venue_node.url], 2, 1) as (a, b):
        exit_ = out_waiting(a, b)
        a.bus.stop()  # the bus down while the holder passes, the row is sent and pruned
        journal = journal_of(a)
        try:
            assert PassageLog(journal).passed(exit_, now_iso())
        finally:
            journal.close()
        assert scan(a, "floor-in")[:2] == (True, "valid")  # out, so in again (a new row)
        assert exit_ in _sent_and_pruned(a)
        a.restart_bus()
        wait_until(lambda: applied(b, exit_) == {"awaiting": 0, "voided": 0}, 20,
                   "a's confirmation at b")
        assert a.bus.counters["exits_confirmed"] == 1
        wait_until(lambda: passage_of(a, exit_) is None, 20, "a's exit's passage let go")
        assert a.bus.counters["exits_confirmed"] == 1


def passage_of(device: VenueDevice, uuid: str) -> str | None:
    journal = journal_of(device)
    try:
        return PassageLog(journal).state(uuid)
    finally:
        journal.close()


def test_an_exit_voided_and_pruned_before_its_void_got_out_is_voided(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    with venue_devices(tmp_path, [venue_node.url], 2, 1) as (a, b):
        exit_ = out_waiting(a, b)
        a.bus.stop()
        journal = journal_of(a)
        try:
            assert PassageLog(journal).void(exit_, now_iso()) is not None
        finally:
            journal.close()
        assert scan(a, "floor-in")[:2] == (False, "alreadyIn")  # a newer row: never pruned
        assert exit_ in _sent_and_pruned(a)
        a.restart_bus()
        wait_until(lambda: (applied(b, exit_) or {}).get("voided") == 1, 20,
                   "a's void at b")
        assert scan(b, "floor-in")[:2] == (False, "alreadyIn")


def test_a_restart_voids_no_claim_whose_row_was_pruned(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """The ticket inside on a's entry; a's journal prunes the row; a restarts. Its sweep
    must leave the entry standing: b still refuses the ticket handed back."""
    with venue_devices(tmp_path, [venue_node.url], 2, 1) as (a, b):
        for device in (a, b):
            device.calibrate()
        admit, _status, entry = scan(a, "floor-in")
        assert admit
        wait_until(lambda: applied(b, entry) is not None, 10, "b has a's entry")
        wait_until(lambda: a.journal_rows()[-1]["venue"] == "claimed", 10,
                   "a's row out of its claim's flight")
        assert scan(a, "floor-in")[:2] == (False, "alreadyIn")  # a newer row
        assert entry in _sent_and_pruned(a)
        a.restart_bus()
        wait_until(lambda: a.bus.connected and a.bus._caught_up, 20, "a's bus caught up")
        wait_until(lambda: a.bus._swept_seq > 0, 20, "a's sweep picked its claims up")
        a.bus.wake()
        # the sweep's round is over once the claims it picked up are judged
        wait_until(lambda: not a.bus._unchecked, 20, "a's sweep judged its claims")
        assert a.bus.counters["voids"] == 0
        assert applied(b, entry) == {"awaiting": 0, "voided": 0}
        assert scan(b, "floor-in")[:2] == (False, "alreadyIn")
