"""`published` counts the scans the venue's stream stored, not every send.

The publisher sends this gate's journal rows after the cursor venue.db keeps (the last row the
bus acknowledged). Rows sent again (an ack lost with the link, a venue.db deleted: it is
derived, and a gate without it sends its whole journal again) carry the same `Nats-Msg-Id`,
and JetStream answers them `duplicate` without storing them: they were counted as published,
and status said as many scans went out as the stream already held. Now they count in
`republished`. Real gate, real SQLite files, a real nats-server.
"""

from __future__ import annotations

from pathlib import Path

from agent import demo_data
from agent.venue.node import NodeProcess
from tests.venue.rig import venue_devices, wait_until

SCANS = 3


def test_scans_sent_again_count_as_republished_not_published(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    with venue_devices(tmp_path, [venue_node.url], 1, 10) as (dev,):
        gate = dev.gate()
        lane = gate.config.lane("floor-in")
        for i in range(SCANS):  # an admit (its claim is the scan on the bus), then a refusal
            assert gate.scan(demo_data.bulk_barcode(i), lane, dev.now()).decision.admit
            again = gate.scan(demo_data.bulk_barcode(i), lane, dev.now()).decision
            assert (again.admit, again.status) == (False, "alreadyIn")  # the publisher's
        wait_until(lambda: dev.bus.counters["published"] == SCANS, 20, "the refusals published")
        assert dev.bus.counters["republished"] == 0
        # venue.db deleted: the gate sends its whole journal again, claims too, in case the
        # stream lost them; the stream has every one of them already
        dev.bus.stop()
        for name in ("venue.db", "venue.db-wal", "venue.db-shm"):
            (dev.bus.store_path.parent / name).unlink(missing_ok=True)
        dev.restart_bus()
        last = dev.journal_rows()[-1]["seq"]
        store = dev.venue_store()
        try:
            wait_until(lambda: store.published_through() >= last, 20, "every row sent again")
        finally:
            store.close()
        status = dev.bus.get_status()
        assert (status["published"], status["republished"]) == (0, 2 * SCANS), status
        wait_until(lambda: dev.bus.applied_seq == 2 * SCANS, 10, "the stream replayed")
        assert dev.bus.stream_last_seq == 2 * SCANS  # nothing stored twice
