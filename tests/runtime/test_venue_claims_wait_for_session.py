"""A gate sends no venue claim while its bus session is not set up, even with the link up.

`VenueBus.start_claim` answers `unavailable` unless the bus is `ready` (connected AND every
set-up step done): the lane then decides by `venue.offline_policy` and journals the scan
`offline`, to be published once the session runs; the claim counts as not sent
(`claims_not_sent`), not as one the bus left unanswered. Before the set-up is done this gate has not
caught up with the stream (its view of other gates' admits is incomplete), so a claim sent on
that view could be granted on a ticket it would have refused.

The session is held back for real: one nats-server with JetStream, the venue's stream made
beforehand with `max_consumers = 1` and that one consumer taken, so the set-up step
"subscribing to the stream" fails while JetStream answers everything else (a publish to the
stream would be stored, and a claim granted). Real VenueBus, Gate, SQLite cache and journal
(tests/venue/rig.py `make_device`)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import nats
from nats.js.api import ConsumerConfig, StorageType, StreamConfig

from agent import demo_data
from agent.venue import messages
from agent.venue.bus import DUPLICATE_WINDOW_S
from agent.venue.node import start_venue
from tests.venue.rig import make_device, wait_until, write_platform_files

VENUE = "hall"  # make_device's venue


async def take_the_only_consumer(url: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        stream = messages.stream_name(VENUE)
        await js.add_stream(StreamConfig(
            name=stream, subjects=[messages.stream_subjects(VENUE)], storage=StorageType.FILE,
            num_replicas=1, duplicate_window=DUPLICATE_WINDOW_S, max_consumers=1))
        await js.add_consumer(stream, ConsumerConfig(durable_name="taken"))
    finally:
        await nc.close()


async def stream_messages(url: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(messages.stream_name(VENUE))
        return int(info.state.messages)
    finally:
        await nc.close()


def test_no_claim_goes_out_before_the_session_is_set_up(tmp_path: Path) -> None:
    nodes = start_venue(tmp_path / "nats", 1, VENUE)
    url = nodes[0].url
    try:
        asyncio.run(take_the_only_consumer(url))
        now = datetime.now(UTC).replace(microsecond=0)
        files = write_platform_files(tmp_path / "platform", now, 10)
        device = make_device(tmp_path, "g1", [url], files, now, policy="local",
                             timeout_ms=2000)
        gate = device.gate()
        try:
            bus = device.bus
            wait_until(lambda: bus.setup_error is not None, 20, "the set-up step failing")
            assert bus.connected and not bus.ready
            assert bus.session_step == "subscribing to the stream", bus.session_step
            assert "maximum consumers" in str(bus.setup_error)

            lane = gate.config.lane("north-in")  # single access: an admit needs a claim
            result = gate.scan(demo_data.bulk_barcode(0), lane, device.now())
            assert result.decision.admit  # offline_policy "local": decided here alone
            row = next(r for r in device.journal_rows() if r["uuid"] == result.uuid)
            assert row["venue"] == "offline", row["venue"]
            status = bus.get_status()
            assert status["claims_granted"] == 0 and status["claims_conflicted"] == 0
            # never sent: counted as such, not as a claim the bus left unanswered (that run
            # is venue_degraded's sign of a bus that does not answer)
            assert (status["claims_not_sent"], status["claims_timed_out"],
                    status["claims_timing_out"]) == (1, 0, 0)
            assert asyncio.run(stream_messages(url)) == 0  # nothing sent on the stream
        finally:
            gate.close()
            device.bus.stop()
    finally:
        for node in nodes:
            node.kill()
