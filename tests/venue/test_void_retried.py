"""A void the bus could not take when it was made is published once the bus is back.

A claimed admit can be voided long after the sweep judged its claim (the sweep looks at each of
this process's claims once, SWEEP_AFTER_S after picking it up, and then forgets it): a lane
waiting for the turnstile's passage pulse up to `passage_timeout_ms` (at most 120 s) voids an
admit nobody walked through. Its claim's void went out only if the bus took it at that
instant; with the bus away (a node restarting, a cable pulled) it was dropped, the claim stood
on the bus until the next restart of the daemon, and the patron, who never went in, was
refused `alreadyIn` at every gate, this one included. Now the void is handed back to the
sweep, which publishes it once connected if the journal still holds no admit for the claim.

Here the sweep's age is 1 s (a 30 s wait past it looks the same to the sweep), the claim is
judged, the node is killed, the admit voided in the journal the way a passage timeout or a
failed relay does (agent.store.passages) and the claim's void asked of the bus as the daemon
does (`Daemon._void_claim`), then the node starts again. Real gates, SQLite files and
nats-server."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import demo_data
from agent.store.journal import Journal
from agent.store.passages import PassageLog
from agent.venue import bus as venue_bus
from agent.venue import messages
from agent.venue.node import NodeProcess
from tests.venue.rig import venue_devices, wait_until

CODE = demo_data.bulk_barcode(3)


def test_a_void_made_while_the_bus_is_away_is_published_when_it_is_back(
        tmp_path: Path, venue_node: NodeProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(venue_bus, "SWEEP_AFTER_S", 1.0)
    with venue_devices(tmp_path, [venue_node.url], 2, 5) as (a, b):
        gate = a.gate()
        result = gate.scan(CODE, gate.config.lane("north-in"), datetime.now(UTC))
        assert result.decision.admit and result.uuid is not None and result.seq is not None
        wait_until(lambda: [r["venue"] for r in a.journal_rows()] == ["claimed"], 10,
                   "the row settled as claimed")
        # the sweep picked the claim up, found its admit in the journal and forgot it
        wait_until(lambda: a.bus._swept_seq >= 1 and not a.bus._unchecked, 20,
                   "the sweep to judge the claim")
        assert a.bus.counters["voids"] == 0

        venue_node.kill()
        wait_until(lambda: not a.bus.connected, 10, "a sees the node gone")
        journal = Journal(a.bus.store_path.with_name("journal.db"))
        try:
            voided = PassageLog(journal).void_unopened(
                result.uuid, result.seq, datetime.now(UTC).isoformat(), "relay failed")
        finally:
            journal.close()
        assert voided is not None and voided["uuid"] == result.uuid
        a.bus.void_now(voided, "not passed: the turnstile did not turn")
        assert a.bus.counters["voids"] == 0  # the bus was away: nothing went out
        venue_node.start()

        wait_until(lambda: a.bus.counters["voids"] == 1, 20,
                   "a to publish the void once the bus is back")
        last = venue_node.stream_last_seq(messages.stream_name("hall"))
        assert last is not None and last >= 2  # the claim and its void
        wait_until(lambda: b.bus.applied_seq >= last and a.bus.applied_seq >= last, 20,
                   "both gates apply the whole stream")
        # the patron never went in: the ticket is free again at the other gate
        assert b.gate().scan(CODE, b.gate().config.lane("north-in"),
                             datetime.now(UTC)).decision.admit
