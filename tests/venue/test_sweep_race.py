"""The void sweep against a lane's claim sent while the sweep reads venue.db.

The sweep tells this process's claims from an earlier process's by the uuids its bus sent
(`VenueBus._sent`): an earlier process's claim with no admit in the journal is voided at once.
A claim sent just after the sweep took in those uuids, stored, and applied to venue.db before
the sweep's read of it, looked like an earlier process's; its admit was not journaled yet (the
lane was still committing), so it was voided, while the lane went on to journal the admit as
granted ('claimed') and open the gate: the ticket stood voided at every other gate, which may
admit it again (a double admit in the venue). Seen once as a flake of the crash storm
(tests/venue/test_crash.py) under load: "a claimed admit not among the standing claims".

Here the interleaving is certain: the sweep's read of venue.db is held until the lane's claim
is applied there, and the lane's journal commit is held until the sweep's round is over (a
slow fsync on a loaded device). Real gate, SQLite files and nats-server."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import demo_data
from agent.runtime.gate import ScanResult
from agent.store.venue import VenueStore
from agent.venue import messages
from agent.venue.node import NodeProcess
from tests.venue.rig import venue_devices, wait_until

CODE = demo_data.bulk_barcode(1)


class HeldRead:
    """`VenueStore.claims_after` (only a bus's sweep calls it) with the next call on the store
    file `path` held, once `arm(path)`: `reached` is set when it begins, and it reads venue.db
    once `go` is set; `rounds` counts the calls on that file."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reached, self.go = threading.Event(), threading.Event()
        self.path: Path | None = None
        self.held = False
        self.rounds = 0
        real = VenueStore.claims_after

        def claims_after(store: VenueStore, device: str, seq: int) -> list[dict[str, Any]]:
            if store.path == self.path:
                if not self.held:
                    self.held = True
                    self.reached.set()
                    assert self.go.wait(30), "the held read was never released"
                self.rounds += 1
            return real(store, device, seq)

        monkeypatch.setattr(VenueStore, "claims_after", claims_after)

    def arm(self, path: Path) -> None:
        self.path = path


def held_commit(gate: Any) -> tuple[threading.Event, threading.Event]:
    """The gate's journal transactions wait for `commit` once begun (`committing` is set)."""
    committing, commit = threading.Event(), threading.Event()
    real: Callable[[], Any] = gate.journal.scan_transaction

    def scan_transaction() -> Any:
        committing.set()
        assert commit.wait(30), "the held commit was never released"
        return real()

    gate.journal.scan_transaction = scan_transaction
    return committing, commit


def scan_in_thread(gate: Any, code: str, lane: Any) -> tuple[threading.Thread, list[ScanResult]]:
    """`gate.scan(code)` on `lane` in a thread of its own, started; its result lands in the list."""
    results: list[ScanResult] = []
    thread = threading.Thread(
        target=lambda: results.append(gate.scan(code, lane, datetime.now(UTC))))
    thread.start()
    return thread, results


def assert_admitted_as_claimed(a: Any, results: list[ScanResult], claim_uuid: str) -> None:
    """The lane's scan admitted under its claim, and its row settled as granted."""
    (result,) = results
    assert result.decision.admit and result.uuid == claim_uuid
    wait_until(lambda: [r["venue"] for r in a.journal_rows()] == ["claimed"], 10,
               "the row settled as claimed")


def assert_claim_stands(a: Any, b: Any, node: NodeProcess, claim_uuid: str, code: str) -> None:
    """a's claim was never voided and stands on the bus, so b, with everything on the bus
    applied, refuses the ticket (voided, b would admit it again: a double admit)."""
    last = node.stream_last_seq(messages.stream_name("hall"))
    assert last is not None and last >= 1
    wait_until(lambda: b.bus.applied_seq >= last, 10, "b applies the whole stream")
    assert b.gate().scan(code, b.gate().config.lane("north-in"),
                         datetime.now(UTC)).decision.status == "alreadyIn"
    assert a.bus.counters["voids"] == 0
    store = a.venue_store()
    try:
        assert [c["uuid"] for c in store.standing_claims(a.name, "9999")] == [claim_uuid]
    finally:
        store.close()


@pytest.mark.parametrize("in_flight", [True, False], ids=["in-flight", "answer-first"])
def test_the_sweep_never_voids_a_claim_sent_while_it_reads(
        tmp_path: Path, venue_node: NodeProcess, monkeypatch: pytest.MonkeyPatch,
        in_flight: bool) -> None:
    read = HeldRead(monkeypatch)
    with venue_devices(tmp_path, [venue_node.url], 2, 5) as (a, b):
        gate = a.gate()
        gate.claims_in_flight = in_flight
        lane = gate.config.lane("north-in")
        committing, commit = held_commit(gate)
        # a's sweep's next round: past taking in the uuids its bus sent, not yet reading
        read.arm(a.bus.store_path)
        wait_until(read.reached.is_set, 20, "a's sweep to pick up claims")
        lane_thread, results = scan_in_thread(gate, CODE, lane)
        try:
            wait_until(committing.is_set, 10, "the lane at its journal commit")
            wait_until(lambda: a.bus.applied_seq >= 1, 10, "the claim applied to venue.db")
            store = a.venue_store()
            try:
                ((claim_uuid, voided),) = store.conn.execute(
                    "SELECT uuid, voided FROM venue_scans").fetchall()
            finally:
                store.close()
            assert voided == 0
            picked_at = read.rounds
            read.go.set()  # the sweep reads venue.db: the claim is there, its admit not yet
            wait_until(lambda: read.rounds >= picked_at + 2, 20,
                       "the sweep's round to end (the next one begins)")
        finally:
            read.go.set()
            commit.set()
            lane_thread.join(20)
        assert_admitted_as_claimed(a, results, claim_uuid)
        # the admit is journaled as granted, and its claim still stands on the bus, so the
        # other gate refuses the ticket
        assert_claim_stands(a, b, venue_node, claim_uuid, CODE)
