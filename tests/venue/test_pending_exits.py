"""An exit not yet confirmed by its turnstile does not free the ticket at another gate.

Gate a's exit lane waits for its passage after the admit (agent.runtime.passage). Its claim
reached the bus at once, and every other gate took the exit as made: a ticket handed back
over the barrier by a holder who scanned out but did not pass was admitted at gate b
meanwhile, and when a's exit was then voided the venue had two people inside on one ticket.
Now the claim says the passage is awaited (`passageAwaited`), every gate keeps the ticket
inside until a confirms (the scan again, `<uuid>/passed`) or voids it — whoever settled the
wait, the upload's bound included, whose void used to reach the bus only after a restart.

A real nats-server (one node), real `Gate`s over real SQLite files (tests/venue/rig.py); the
passage itself is settled through the journal as the lane's worker, the upload's bound and
a restart do (agent.store.passages).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from agent import demo_data
from agent.core.codes import utc_iso
from agent.runtime.lane import manual_scan
from agent.store.journal import PASSAGE_HOLD_LIMIT_S, Journal
from agent.store.passages import PassageLog, now_iso
from agent.store.venue import Applied, BusScan, VenueStore
from agent.venue import messages
from agent.venue.node import NodeProcess
from drivers.inputs import sim_input_pulse
from drivers.sim import sim_reset
from tests.venue.rig import VenueDevice, venue_devices, venue_lane, wait_until

pytestmark = pytest.mark.e2e

CODE = demo_data.bulk_barcode(0)


def scan(device: VenueDevice, lane: str, awaits_exit: bool = False) -> tuple[bool, str, str]:
    """One scan on `lane`; `awaits_exit`: the lane's exits wait for a passage input (as a
    lane with `passage_out` does under its LaneRunner)."""
    gate = device.gate()
    config = gate.config.lane(lane)
    if awaits_exit:
        config = dataclasses.replace(config, passage_out="sim:pending-exit")
    gate.confirms_passage = awaits_exit
    result = gate.scan(CODE, config, device.now())
    return result.decision.admit, result.decision.status, result.uuid or ""


def applied(device: VenueDevice, uuid: str) -> dict[str, int] | None:
    """How `device`'s venue.db holds a scan: awaiting its passage, voided (None: not yet)."""
    store = device.venue_store()
    try:
        row = store.conn.execute("SELECT * FROM venue_scans WHERE uuid = ?",
                                 (uuid,)).fetchone()
        names = [d[0] for d in store.conn.execute("SELECT * FROM venue_scans").description]
    finally:
        store.close()
    return None if row is None else {k: v for k, v in zip(names, row, strict=True)
                                     if k in ("awaiting", "voided")}


def journal_of(device: VenueDevice) -> Journal:
    return Journal(device.bus.store_path.with_name("journal.db"))


def out_waiting(a: VenueDevice, b: VenueDevice) -> str:
    """The ticket in at a, then out at a's exit lane, its passage awaited; b has both."""
    for device in (a, b):
        device.calibrate()
    assert scan(a, "floor-in")[:2] == (True, "valid")
    admit, _status, exit_ = scan(a, "floor-out", awaits_exit=True)
    assert admit
    journal = journal_of(a)
    try:
        assert PassageLog(journal).state(exit_) == "waiting"
    finally:
        journal.close()
    wait_until(lambda: applied(b, exit_) is not None, 10, "b has a's exit")
    return exit_


def test_another_gate_keeps_the_ticket_inside_until_the_exit_is_confirmed(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    with venue_devices(tmp_path, [venue_node.url], 2, 1) as (a, b):
        exit_ = out_waiting(a, b)
        assert scan(b, "floor-in")[:2] == (False, "alreadyIn")  # the ticket handed back
        assert applied(b, exit_) == {"awaiting": 1, "voided": 0}
        journal = journal_of(a)
        try:
            assert PassageLog(journal).passed(exit_, now_iso())  # the holder walks out
        finally:
            journal.close()
        a.bus.wake()  # as the lane does when a wait stands
        wait_until(lambda: applied(b, exit_) == {"awaiting": 0, "voided": 0}, 10,
                   "a's confirmation at b")
        assert a.bus.counters["exits_confirmed"] == 1
        assert scan(b, "floor-in")[:2] == (True, "valid")  # out, so in again


def _venue_db_copy(device: VenueDevice, to: Path) -> Path:
    """`device`'s venue.db as it is now (SQLite's backup: a consistent copy)."""
    source, copy = device.venue_store(), sqlite3.connect(to)
    try:
        source.conn.backup(copy)
    finally:
        copy.close()
        source.close()
    return to


@pytest.mark.parametrize("outcome", ["passed", "voided"])
def test_a_confirmation_or_void_sent_again_is_counted_once(
        tmp_path: Path, venue_node: NodeProcess, outcome: str) -> None:
    """The bus settles exits from what venue.db holds: one round before venue.db applied its
    own confirmation (or after a restart or reconnect in between) sends it again, same msg
    id, and JetStream answers `duplicate` without storing it. Counted, status said two exits
    confirmed (or two voids) for one. Here the second round reads a venue.db copied while
    the exit still awaited (as one that had not applied the first yet)."""
    with venue_devices(tmp_path, [venue_node.url], 2, 1) as (a, b):
        exit_ = out_waiting(a, b)
        wait_until(lambda: applied(a, exit_) is not None, 10, "a has its own exit")
        stale = _venue_db_copy(a, tmp_path / "stale-venue.db")
        counter = "exits_confirmed" if outcome == "passed" else "voids"
        journal = journal_of(a)
        try:
            log = PassageLog(journal)
            assert log.passed(exit_, now_iso()) if outcome == "passed" \
                else log.void(exit_, now_iso()) is not None
        finally:
            journal.close()
        a.bus.wake()
        def settled_at_b() -> bool:
            held = applied(b, exit_) or {}
            return held.get("voided") == 1 if outcome == "voided" else held.get("awaiting") == 0
        wait_until(settled_at_b, 10, f"a's {outcome} exit at b")
        assert a.bus.counters[counter] == 1

        async def round_on_stale() -> None:
            store, journal = VenueStore(stale), journal_of(a)
            try:
                assert [e["uuid"] for e in store.awaiting_exits(a.name)] == [exit_]
                await a.bus._settle_exits(store, journal)
            finally:
                store.close()
                journal.close()

        assert a.bus._loop is not None
        asyncio.run_coroutine_threadsafe(round_on_stale(), a.bus._loop).result(10)
        assert a.bus.counters[counter] == 1
        assert settled_at_b()


def test_the_lane_confirms_its_exit_to_the_venue_as_the_holder_passes(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """The real lane thread and passage input: the pulse settles the wait and wakes the bus,
    which confirms the exit; b then lets the ticket in again."""
    sim_reset()
    with venue_devices(tmp_path, [venue_node.url], 2, 1) as (a, b):
        for device in (a, b):
            device.calibrate()
        assert scan(a, "floor-in")[:2] == (True, "valid")
        runner, events = venue_lane(a, "floor-out", passage_out="sim:venue-outpass",
                                    passage_timeout_ms=60000)
        lane = runner.lane
        try:
            runner.submit(manual_scan(CODE, lane.name))
            out = events.get(timeout=10).result
            assert out.decision.admit and out.decision.direction == "out" and out.uuid
            wait_until(lambda: applied(b, out.uuid or "") is not None, 10, "b has the exit")
            assert scan(b, "floor-in")[:2] == (False, "alreadyIn")
            sim_input_pulse("venue-outpass")
            wait_until(lambda: applied(b, out.uuid or "") == {"awaiting": 0, "voided": 0}, 10,
                       "the confirmation at b")
            assert runner.passage.totals["passed"] == 1
        finally:
            runner.stop()
            sim_reset()
        assert scan(b, "floor-in")[:2] == (True, "valid")


def test_an_exit_decided_offline_goes_out_awaiting_and_is_confirmed_later(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """Cut off from the bus (policy local), a lets the ticket out; its journal publisher sends
    the exit when the bus is back, still awaiting its passage (not as a made exit), and the
    confirmation follows the passage."""
    with venue_devices(tmp_path, [venue_node.url], 2, 1) as (a, b):
        for device in (a, b):
            device.calibrate()
        assert scan(a, "floor-in")[:2] == (True, "valid")
        wait_until(lambda: b.bus.applied_seq >= a.venue_link_seq(), 10, "b has the entry")
        a.bus.stop()
        admit, _status, exit_ = scan(a, "floor-out", awaits_exit=True)
        assert admit and a.journal_rows()[-1]["venue"] == "offline"
        a.bus.start()
        wait_until(lambda: applied(b, exit_) is not None, 20, "b has a's offline exit")
        assert scan(b, "floor-in")[:2] == (False, "alreadyIn")
        assert applied(b, exit_) == {"awaiting": 1, "voided": 0}
        journal = journal_of(a)
        try:
            assert PassageLog(journal).passed(exit_, now_iso())
        finally:
            journal.close()
        wait_until(lambda: applied(b, exit_) == {"awaiting": 0, "voided": 0}, 10,
                   "a's confirmation at b")
        assert scan(b, "floor-in")[:2] == (True, "valid")


def test_an_exit_voided_by_the_upload_bound_is_voided_on_the_bus_at_once(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """The lane never settled the wait (its worker lost the write); the daemon runs on and the
    member's hand-over (`Journal.ready`) voids the exit at PASSAGE_HOLD_LIMIT_S. Its void
    reaches the bus while the daemon runs, not at the next restart's sweep."""
    with venue_devices(tmp_path, [venue_node.url], 2, 1) as (a, b):
        exit_ = out_waiting(a, b)
        assert scan(b, "floor-in")[:2] == (False, "alreadyIn")
        journal = journal_of(a)
        try:
            old = utc_iso(datetime.now(UTC) - timedelta(seconds=PASSAGE_HOLD_LIMIT_S + 5))
            with journal.conn:
                journal.conn.execute("UPDATE passages SET waiting_since = ?", (old,))
            journal.ready(100)  # what the member's hand-over runs every round
            assert PassageLog(journal).state(exit_) == "voided"
        finally:
            journal.close()
        wait_until(lambda: (applied(b, exit_) or {}).get("voided") == 1, 10,
                   "the bound's void at b")
        assert scan(b, "floor-in")[:2] == (False, "alreadyIn")
        assert scan(a, "floor-in")[:2] == (False, "alreadyIn")


def _scan(uuid: str, device: str, direction: str, awaiting: bool) -> BusScan:
    return BusScan(uuid=uuid, device=device, lane="floor-out", event_id=501, item_id=7,
                   zone_id=3, zone_is_default=False, direction=direction, admit=True,
                   status="valid", scanned_on="2026-12-06T12:00:00.000000Z",
                   tracks_exits=True, awaiting=awaiting)


def test_only_the_exits_own_gate_confirms_it_and_only_an_exit_awaits(tmp_path: Path) -> None:
    """venue.db's rules, no bus: a copy of the scan from another device does not confirm it;
    a later copy from its own gate that still awaits does nothing; an entry flagged as
    awaiting is an entry (taken as not made, it would free the ticket)."""
    entry = messages.encode_scan(_scan("in-1", "g2", "in", True))
    assert orjson.loads(entry)["passageAwaited"] is True
    assert not messages.decode(1, "s", entry).scan.awaiting
    store = VenueStore(tmp_path / "venue.db")
    try:
        at = "2026-12-06T12:00:00.000000Z"
        store.apply("S", [Applied(1, "s", scan=_scan("in-1", "g2", "in", False), bus_time=at),
                          Applied(2, "s", scan=_scan("out-1", "g2", "out", True),
                                  bus_time="2026-12-06T12:00:05.000000Z")], at)
        assert [s.scan for s in store.zone_scans(501, 7)] == ["in"]
        assert [(e["uuid"], e["event_id"], e["item_id"]) for e in store.awaiting_exits("g2")] \
            == [("out-1", 501, 7)]
        store.apply("S", [Applied(3, "s", scan=_scan("out-1", "g9", "out", False)),
                          Applied(4, "s", scan=_scan("out-1", "g2", "out", True))], at)
        assert [s.scan for s in store.zone_scans(501, 7)] == ["in"]
        assert [o["inside"] for o in store.occupancy()] == [1]
        store.apply("S", [Applied(5, "s", scan=_scan("out-1", "g2", "out", False))], at)
        assert [s.scan for s in store.zone_scans(501, 7)] == ["in", "out"]
        assert store.awaiting_exits("g2") == []
        assert [o["inside"] for o in store.occupancy()] == [0]
    finally:
        store.close()
