"""A claim the venue granted whose journal transaction refused after all (another lane of this
gate admitted the ticket in between): the row is a plain refusal, not 'claimed'.

The claim is voided after the commit (agent.venue.claims `after_commit`), so 'claimed' on that
row would say the venue granted an admit this journal does not hold: the publisher skipped it
(on the bus already) and status counted it in `decided_claimed`. Real gate, real SQLite files,
a real nats-server; the claim waited for (not in flight), so its answer is `granted` when the
row is written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent import demo_data
from agent.config import load_config
from agent.runtime.gate import Gate
from agent.store.cache import TicketCache
from agent.store.journal import Journal
from agent.venue.claims import Claim
from agent.venue.node import NodeProcess
from tests.venue.rig import VenueDevice, venue_devices, wait_until
from tests.venue.test_decide_again import between_claim_and_commit


def refused_after_grant(dev: VenueDevice, code: str) -> dict[str, Any]:
    """Scan `code` at `dev` with another lane of the device (no claim of its own) admitting it
    between the granted claim and the journal transaction; returns the refusal's journal row
    (a plain refusal under the claim's uuid)."""
    gate = dev.gate()
    gate.claims_in_flight = False  # the answer is in before the row is written
    config = load_config(dev.config_path)
    other = Gate(TicketCache(config.store_dir / "cache.db"),  # another lane, no claim
                 Journal(config.store_dir / "journal.db"), config, None)
    lane = gate.config.lane("north-in")
    claims: list[Claim] = []

    def other_lane_admits(claim: Claim) -> None:
        claims.append(claim)
        assert claim.outcome == "granted", claim
        assert other.scan(code, lane, datetime.now(UTC)).decision.admit

    try:
        with between_claim_and_commit(gate, other_lane_admits):
            result = gate.scan(code, lane, datetime.now(UTC))
    finally:
        other.close()
    assert not result.decision.admit and result.decision.status == "alreadyIn"
    ((claim,),) = [claims]
    refusal = {row["uuid"]: row for row in dev.journal_rows() if row["code"] == code}[claim.uuid]
    assert (refusal["admit"], refusal["venue"]) == (0, None)
    return refusal


def test_a_granted_claim_refused_locally_is_a_plain_refusal(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    with venue_devices(tmp_path, [venue_node.url], 1, 5) as (dev,):
        refusal = refused_after_grant(dev, demo_data.bulk_barcode(0))
        config = load_config(dev.config_path)
        # status: nothing decided with the venue's grant stands in this journal
        journal = Journal(config.store_dir / "journal.db")
        try:
            assert journal.venue_counts()["claimed"] == 0
            assert dev.bus.get_status(journal)["decided_claimed"] == 0
        finally:
            journal.close()
        # the publisher sends the refusal like any scan (the other lane's admit, then it)
        store = dev.venue_store()
        try:
            wait_until(lambda: store.published_through() >= refusal["seq"], 20,
                       "the publisher passed the refusal")
        finally:
            store.close()
        assert dev.bus.counters["published"] == 2
