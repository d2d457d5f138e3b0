"""Admission against the venue: real gates (real SQLite, real `Gate`) on a real nats-server.

Each device has its own store and its own bus connection, like separate turnstiles; threads
released by a barrier scan the same ticket at every gate within the same millisecond.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent import demo_data
from agent.venue.node import NodeProcess
from tests.venue.rig import VenueDevice, venue_devices, wait_until

GATES = 5
TICKETS = 100


def race(devices: list[VenueDevice], lane_name: str, codes: list[str],
         direction: str | None = None) -> list[tuple[str, str, bool, str]]:
    """Every device scans each code at once (a barrier per code); (code, device, admit, status)."""
    barrier = threading.Barrier(len(devices))
    results: list[tuple[str, str, bool, str]] = []
    lock = threading.Lock()

    def run(device: VenueDevice) -> None:
        gate = device.gate()
        lane = gate.config.lane(lane_name)
        for code in codes:
            barrier.wait()
            r = gate.scan(code, lane, datetime.now(UTC), direction)
            with lock:
                results.append((code, device.name, r.decision.admit, r.decision.status))

    threads = [threading.Thread(target=run, args=(d,)) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == len(devices) * len(codes)
    return results


def admits_per_code(results: list[tuple[str, str, bool, str]]) -> Counter[str]:
    return Counter(code for code, _device, admit, _status in results if admit)


def test_single_access_race_admits_each_ticket_once(tmp_path: Path,
                                                    venue_node: NodeProcess) -> None:
    codes = [demo_data.bulk_barcode(i) for i in range(TICKETS)]
    with venue_devices(tmp_path, [venue_node.url], GATES, TICKETS) as devices:
        results = race(devices, "north-in", codes)
        admits = admits_per_code(results)
        assert sum(admits.values()) == TICKETS and set(admits.values()) == {1}
        refusals = Counter(status for _c, _d, admit, status in results if not admit)
        assert refusals == {"alreadyIn": TICKETS * (GATES - 1)}
        # every admit was granted by the venue, none decided offline; granted rows are
        # settled ('claiming' -> 'claimed') by each bus thread within 0.2 s
        for d in devices:
            d.bus.wake()
        wait_until(lambda: not [r for d in devices for r in d.journal_rows()
                                if r["venue"] == "claiming"], 10, "granted rows settled")
        journaled = [r for d in devices for r in d.journal_rows()]
        rows = [r for r in journaled if r["admit"]]
        assert {r["venue"] for r in rows} == {"claimed"}
        # what is uploaded agrees: one admit row per ticket (a claim that lost its race in
        # flight left a voided row, never an admit), and no row is left waiting for an answer
        assert Counter(r["code"] for r in rows) == Counter(codes)
        assert {r["venue"] for r in journaled if r["venue"] in ("claiming", "void")} <= {"void"}
        assert all(r["upload_state"] == "local" for r in journaled if r["venue"] == "void")
        assert sum(d.bus.counters["claims_timed_out"] for d in devices) == 0


def test_max_entries_two_race(tmp_path: Path, venue_node: NodeProcess) -> None:
    codes = [demo_data.bulk_barcode(i) for i in range(40)]
    with venue_devices(tmp_path, [venue_node.url], GATES, 40) as devices:
        results = race(devices, "lawn", codes)
        admits = admits_per_code(results)
        assert set(admits.values()) == {2} and len(admits) == 40
        refusals = Counter(status for _c, _d, admit, status in results if not admit)
        assert refusals == {"scansInExceeded": 40 * (GATES - 2)}


def test_in_out_race(tmp_path: Path, venue_node: NodeProcess) -> None:
    codes = [demo_data.bulk_barcode(i) for i in range(30)]
    with venue_devices(tmp_path, [venue_node.url], GATES, 30) as devices:
        entered = race(devices, "floor-in", codes)
        assert set(admits_per_code(entered).values()) == {1} and len(admits_per_code(entered)) == 30
        left = race(devices, "floor-out", codes)
        assert set(admits_per_code(left).values()) == {1}
        assert Counter(s for *_x, a, s in left if not a) == {"alreadyOut": 30 * (GATES - 1)}
        again = race(devices, "floor-in", codes)  # back in once more: once per ticket again
        assert set(admits_per_code(again).values()) == {1}


def test_other_gates_scans_reach_the_derived_state(tmp_path: Path,
                                                   venue_node: NodeProcess) -> None:
    with venue_devices(tmp_path, [venue_node.url], 2, 5) as (a, b):
        code = demo_data.bulk_barcode(0)
        lane = a.gate().config.lane("north-in")
        assert a.gate().scan(code, lane, datetime.now(UTC)).decision.admit
        wait_until(lambda: b.bus.applied_seq >= 1, 5, "b applies a's scan")
        # b's dry run, which never touches the bus, already knows the ticket is inside
        assert b.gate().check(code, lane, datetime.now(UTC)).status == "alreadyIn"


def test_a_re_entry_elsewhere_within_the_same_second_is_seen(tmp_path: Path,
                                                              venue_node: NodeProcess) -> None:
    """In at gate a, out and in again at gate b, all within one second: gate a must see b's
    re-entry (it once took it for an echo of its own entry, same direction, same second, and
    admitted the ticket a second time). Each scan is made at the time it is stamped with:
    other gates' scans are placed at the time the bus stored them (docs/venue.md, "How gates
    order a ticket's scans"), so stamps made up ahead of or behind the real time would be a
    gate's clock that far off, unmeasured."""
    code = demo_data.bulk_barcode(0)

    def at(moment: datetime) -> datetime:
        time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))
        return moment

    with venue_devices(tmp_path, [venue_node.url], 2, 1) as (a, b):
        ga, gb = a.gate(), b.gate()
        t0 = (datetime.now(UTC) + timedelta(seconds=1)).replace(microsecond=100_000)
        assert ga.scan(code, ga.config.lane("floor-in"), at(t0)).decision.admit
        wait_until(lambda: b.bus.applied_seq >= a.venue_link_seq(), 5, "b has a's entry")
        assert gb.scan(code, gb.config.lane("floor-out"), at(t0 + timedelta(seconds=0.3))) \
            .decision.admit
        assert gb.scan(code, gb.config.lane("floor-in"), at(t0 + timedelta(seconds=0.6))) \
            .decision.admit
        wait_until(lambda: a.bus.applied_seq >= b.venue_link_seq(), 5, "a has b's scans")
        again = ga.scan(code, ga.config.lane("floor-in"), at(t0 + timedelta(seconds=0.9))) \
            .decision
        assert (again.admit, again.status) == (False, "alreadyIn")
