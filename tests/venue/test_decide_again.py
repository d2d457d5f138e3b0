"""The journal transaction after a venue claim takes the claim's decision again only when
nothing it was read from changed (agent.runtime.gate `_decide_again`).

Two lanes of one device (each its own connections, as the daemon builds them) with the bus
unreachable (policy `local`: the claim is decided offline at once, no NATS needed), real SQLite
files. Between one lane's claim and its transaction, something commits from another connection:
the other lane's admit in the journal, or another gate's admit applied to venue.db by the
consumer. The transaction must see it and refuse; one admit per ticket. One device for the
module (its bus, never connected, takes seconds to stop); each test scans its own ticket.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from agent import demo_data
from agent.config import load_config
from agent.core.codes import utc_iso
from agent.runtime.gate import Gate
from agent.store.cache import TicketCache
from agent.store.journal import Journal
from agent.store.venue import BusScan, VenueStore
from agent.venue import messages
from agent.venue.claims import Claim, VenueLink
from agent.venue.node import free_ports
from tests.venue.rig import VenueDevice, make_device, write_platform_files


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VenueDevice, Gate]]:
    """One device, bus unreachable (nothing listens on its port), and a second lane's gate."""
    tmp_path = tmp_path_factory.mktemp("decide-again")
    now = datetime.now(UTC).replace(microsecond=0)
    files = write_platform_files(tmp_path / "platform", now, 5)
    dead = f"nats://127.0.0.1:{free_ports(1)[0]}"
    dev = make_device(tmp_path, "solo", [dead], files, now, policy="local", timeout_ms=100)
    config = load_config(dev.config_path)
    assert config.venue is not None
    other = Gate(TicketCache(config.store_dir / "cache.db"),
                 Journal(config.store_dir / "journal.db"), config,
                 VenueLink(dev.bus, config.venue["offline_policy"]))
    try:
        yield dev, other
    finally:
        other.close()
        dev.gate().close()
        dev.bus.stop()


@contextmanager
def between_claim_and_commit(gate: Gate, meanwhile: Callable[[Claim], None]) -> Iterator[None]:
    """Run `meanwhile` after `gate`'s claim was decided and before its journal transaction."""
    link = gate.venue
    assert link is not None
    real = link.claim

    def claim(*args: Any, **kwargs: Any) -> Claim:
        answer = real(*args, **kwargs)
        meanwhile(answer)
        return answer

    link.claim = claim  # type: ignore[method-assign]
    try:
        yield
    finally:
        link.claim = real  # type: ignore[method-assign]


def admits(dev: VenueDevice, code: str) -> int:
    return sum(1 for row in dev.journal_rows() if row["code"] == code and row["admit"])


def test_other_lanes_admit_between_claim_and_commit_is_seen(
        device: tuple[VenueDevice, Gate]) -> None:
    dev, other = device
    lane = other.config.lane("north-in")
    code = demo_data.bulk_barcode(0)
    first: list[bool] = []

    def other_lane_admits(claim: Claim) -> None:
        assert claim.outcome == "offline" and claim.decision is not None
        first.append(claim.decision.admit)
        assert dev.gate().scan(code, lane, datetime.now(UTC)).decision.admit

    with between_claim_and_commit(other, other_lane_admits):
        result = other.scan(code, lane, datetime.now(UTC))
    assert first == [True]  # the claim's own decision was an admit...
    assert not result.decision.admit and result.decision.status == "alreadyIn"  # ...not taken
    assert admits(dev, code) == 1


def test_venue_admit_applied_between_claim_and_commit_is_seen(
        device: tuple[VenueDevice, Gate]) -> None:
    dev, gate = device
    lane = gate.config.lane("north-in")
    code = demo_data.bulk_barcode(1)

    def consumer_applies_another_gates_admit(claim: Claim) -> None:
        d = claim.decision
        assert claim.outcome == "offline" and d is not None and d.admit
        subject = messages.ticket_subject(dev.bus.name, d.event_id, d.item_id, "elsewhere")
        body = messages.encode_scan(BusScan(
            uuid=str(uuidlib.uuid4()), device="elsewhere", lane="north-in", event_id=d.event_id,
            item_id=d.item_id, zone_id=d.zone_id, zone_is_default=d.zone_is_default,
            direction=d.direction, admit=True, status=d.status,
            scanned_on=utc_iso(datetime.now(UTC)), max_entries=1))
        store = VenueStore(dev.bus.store_path)  # the consumer's own connection
        try:
            store.apply(dev.bus.stream, [messages.decode(store.position(dev.bus.stream) + 1,
                                                          subject, body)],
                        utc_iso(datetime.now(UTC)))
        finally:
            store.close()

    with between_claim_and_commit(gate, consumer_applies_another_gates_admit):
        result = gate.scan(code, lane, datetime.now(UTC))
    assert not result.decision.admit and result.decision.status == "alreadyIn"
    assert admits(dev, code) == 0


def test_unchanged_facts_keep_the_claims_decision(device: tuple[VenueDevice, Gate]) -> None:
    """Nothing changed in between: the admit is journaled once, under the claim's uuid."""
    dev, gate = device
    lane = gate.config.lane("north-in")
    code = demo_data.bulk_barcode(2)
    claims: list[Claim] = []
    with between_claim_and_commit(gate, claims.append):
        result = gate.scan(code, lane, datetime.now(UTC))
    assert result.decision.admit and result.uuid == claims[0].uuid
    assert admits(dev, code) == 1
