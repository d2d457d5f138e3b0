"""The sweep's void of this gate's old claims against a lane whose commit is late.

The sweep voids this process's own claims that have stood SWEEP_AFTER_S (30 s) with no admit in
the journal, taking such a claim for one whose commit failed. A lane whose journal commit is
merely late — a stalled fsync on a worn SD card, lanes queued on the journal's write lock
behind it, the daemon stopped (SIGSTOP) and continued — had its granted claim voided while it
was still about to commit the admit; it then journaled the admit and opened the gate, and
every other gate saw the ticket free again (a double admit in the venue). The journal cannot
tell "not committed yet" from "never will be"; only the lane knows, so a claim is swept only
once its lane is done with it (`VenueBus.claim_done`).

Here the lane's commit is held past the sweep's age (made 1 s here, so the test does not wait
30 s: the sweep measures ages, and a 1 s age passed is what a 30 s stall looks like to it),
until the sweep has looked at the due claim twice. Real gates, SQLite files and nats-server."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import demo_data
from agent.store.venue import VenueStore
from agent.venue import bus as venue_bus
from agent.venue import messages
from agent.venue.node import NodeProcess
from tests.venue.rig import venue_devices, wait_until
from tests.venue.test_sweep_race import (
    assert_admitted_as_claimed,
    assert_claim_stands,
    held_commit,
    scan_in_thread,
)

CODE = demo_data.bulk_barcode(2)
SWEEP_AFTER_S = 1.0


class SweepRounds:
    """The monotonic time each round of the sweep on the store file `path` began reading
    venue.db (`VenueStore.claims_after`: only a bus's sweep calls it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
        self.started: list[float] = []
        real = VenueStore.claims_after

        def claims_after(store: VenueStore, device: str, seq: int) -> list[dict[str, Any]]:
            if store.path == path:
                self.started.append(time.monotonic())
            return real(store, device, seq)

        monkeypatch.setattr(VenueStore, "claims_after", claims_after)

    def two_after(self, moment: float) -> bool:
        """A round began at or after `moment` and the next one began too, so the whole round
        that took `moment` for its `now` is over."""
        return sum(1 for t in self.started if t >= moment) >= 2


@pytest.mark.parametrize("in_flight", [True, False], ids=["in-flight", "answer-first"])
def test_a_claim_whose_commit_is_late_is_not_voided_under_its_lane(
        tmp_path: Path, venue_node: NodeProcess, monkeypatch: pytest.MonkeyPatch,
        in_flight: bool) -> None:
    monkeypatch.setattr(venue_bus, "SWEEP_AFTER_S", SWEEP_AFTER_S)
    with venue_devices(tmp_path, [venue_node.url], 2, 5) as (a, b):
        rounds = SweepRounds(monkeypatch, a.bus.store_path)
        gate = a.gate()
        gate.claims_in_flight = in_flight
        lane = gate.config.lane("north-in")
        committing, commit = held_commit(gate)
        lane_thread, results = scan_in_thread(gate, CODE, lane)
        try:
            wait_until(committing.is_set, 10, "the lane at its journal commit")
            # the sweep picked the claim up as this process's own: due SWEEP_AFTER_S later
            wait_until(lambda: len(a.bus._unchecked) == 1, 20, "the sweep to pick the claim up")
            ((claim_uuid, (_claim, picked)),) = list(a.bus._unchecked.items())
            wait_until(lambda: rounds.two_after(picked + SWEEP_AFTER_S), 20,
                       "a whole round of the sweep with the claim due")
        finally:
            commit.set()
            lane_thread.join(20)
        assert_admitted_as_claimed(a, results, claim_uuid)
        # its lane done, the claim is looked at again: the admit is in the journal now
        done = time.monotonic()
        wait_until(lambda: rounds.two_after(done), 20, "a round of the sweep after the commit")
        assert a.bus._unchecked == {}
        # the admit is journaled as granted here, its claim stands on the bus, and the other
        # gate refuses the ticket (voided under the lane, b admitted it: 'valid')
        assert_claim_stands(a, b, venue_node, claim_uuid, CODE)


class Crashed(Exception):
    """Anything but JournalUnavailable out of the journal transaction (a bug, a MemoryError)."""


@pytest.mark.parametrize("in_flight", [True, False], ids=["in-flight", "answer-first"])
def test_a_claim_whose_lane_failed_is_voided_by_the_sweep(
        tmp_path: Path, venue_node: NodeProcess, monkeypatch: pytest.MonkeyPatch,
        in_flight: bool) -> None:
    """The other side of the rule: a lane that fails out of its scan is done with its claim
    (nothing will commit it), so the sweep voids it once old (in flight, the lane voids its
    grant itself at once) and the ticket is free again at every gate; left to a lane that is
    gone, it would stand until a restart (the patron refused `alreadyIn` everywhere)."""
    monkeypatch.setattr(venue_bus, "SWEEP_AFTER_S", SWEEP_AFTER_S)
    with venue_devices(tmp_path, [venue_node.url], 2, 5) as (a, b):
        gate = a.gate()
        gate.claims_in_flight = in_flight

        def scan_transaction() -> Any:
            raise Crashed("the journal transaction failed unexpectedly")

        gate.journal.scan_transaction = scan_transaction  # type: ignore[method-assign]
        with pytest.raises(Crashed):
            gate.scan(CODE, gate.config.lane("north-in"), datetime.now(UTC))
        assert a.journal_rows() == []
        wait_until(lambda: a.bus.counters["voids"] == 1, 20, "the sweep to void the claim")
        last = venue_node.stream_last_seq(messages.stream_name("hall"))
        assert last is not None and last >= 2  # the claim and its void
        wait_until(lambda: b.bus.applied_seq >= last, 10, "b applies the whole stream")
        assert b.gate().scan(CODE, b.gate().config.lane("north-in"),
                             datetime.now(UTC)).decision.admit
