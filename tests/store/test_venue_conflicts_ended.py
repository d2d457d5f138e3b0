"""Conflicts are folded again when an admit is ended after the fact (agent.store.venue
`_ended`): an exit voided (one that awaited its passage among them) or refused by its gate
after the grant. Before, a ticket was folded only as scans arrived, so an entry another
gate made after an exit that was then voided — the holder never left — was never reported.
An exit still awaiting its passage counts as made for conflicts: one confirmed later leaves
no conflict behind. And an exit's confirmation made from venue.db's row (its journal row
pruned) is placed where the claim was (`scan_as_held`). Real venue.db files, no bus."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from agent.core.codes import parse_platform_time
from agent.store.venue import Applied, BusScan, VenueStore, scan_as_held
from agent.venue import messages

T = "2026-12-06T12:00:0{}.000000Z"


def _scan(uuid: str, device: str, direction: str, awaiting: bool = False) -> BusScan:
    return BusScan(uuid=uuid, device=device, lane="floor", event_id=501, item_id=7,
                   zone_id=3, zone_is_default=False, direction=direction, admit=True,
                   status="valid", scanned_on=T.format(0), tracks_exits=True,
                   offline=device == "g3", awaiting=awaiting)


def _ticket(store: VenueStore) -> list[str]:
    """In at g1, out at g1 awaiting its passage, in again at g3 (offline) after it."""
    return store.apply("S", [
        Applied(1, "s", scan=_scan("in-1", "g1", "in"), bus_time=T.format(1)),
        Applied(2, "s", scan=_scan("out-1", "g1", "out", awaiting=True), bus_time=T.format(2)),
        Applied(3, "s", scan=_scan("in-2", "g3", "in"), bus_time=T.format(3))], T.format(9))


def test_the_entry_after_an_exit_voided_later_is_a_conflict(tmp_path: Path) -> None:
    store = VenueStore(tmp_path / "venue.db")
    try:
        assert _ticket(store) == []  # the exit may still be confirmed: nothing happened yet
        assert store.apply("S", [Applied(4, "s", void_uuid="out-1")], T.format(9)) == ["in-2"]
        assert [(c["uuid"], c["detail"]) for c in store.conflicts()] \
            == [("in-2", "admitted while already inside")]
        assert store.apply("S", [Applied(5, "s", void_uuid="out-1")], T.format(9)) == []
    finally:
        store.close()


def test_the_entry_after_an_exit_its_gate_refused_after_the_grant_is_a_conflict(
        tmp_path: Path) -> None:
    store = VenueStore(tmp_path / "venue.db")
    try:
        assert _ticket(store) == []
        refused = replace(_scan("out-1", "g1", "out"), admit=False, status="denied")
        assert store.apply("S", [Applied(4, "s", scan=refused)], T.format(9)) == ["in-2"]
    finally:
        store.close()


def test_an_exit_confirmed_later_leaves_no_conflict(tmp_path: Path) -> None:
    store = VenueStore(tmp_path / "venue.db")
    try:
        assert _ticket(store) == []
        assert store.apply("S", [Applied(4, "s", scan=_scan("out-1", "g1", "out"))],
                           T.format(9)) == []
        assert store.conflicts() == []
        assert store.awaiting_exits("g1") == []
    finally:
        store.close()


def test_a_confirmation_made_from_the_held_row_is_placed_where_the_claim_was(
        tmp_path: Path) -> None:
    """Its gate's journal row pruned, the confirmation is made from venue.db's row: a reader
    that never had the claim stores it at the claim's bus time, not at the sender's clock or
    at the time the confirmation was stored."""
    store = VenueStore(tmp_path / "venue.db")
    try:
        claim = replace(_scan("out-1", "g1", "out", awaiting=True), claim=True)
        stored = parse_platform_time("2026-12-06T11:57:00.250000Z")  # the sender 3 min fast
        store.apply("S", [messages.decode(1, "s", messages.encode_scan(claim), stored)],
                    T.format(9))
        held, = store.awaiting_exits("g1")
        again = scan_as_held(held, awaiting=False)
        assert (again.uuid, again.awaiting, again.claim) == ("out-1", False, False)
        later = parse_platform_time("2026-12-07T09:00:00.000000Z")
        read = messages.decode(7, "s", messages.encode_scan(again), later)
        assert read.bus_time == held["bus_time"] == "2026-12-06T11:57:00.250000Z"
        assert read.scan is not None and not read.scan.awaiting
        undated = scan_as_held({**held, "bus_time": None}, awaiting=False)  # unmeasured
        assert messages.decode(8, "s", messages.encode_scan(undated), later).bus_time is None
    finally:
        store.close()
