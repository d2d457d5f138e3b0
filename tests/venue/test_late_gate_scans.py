"""A gate joining the venue late reads every scan the stream keeps, a batch at a time.

The venue's stream keeps every scan the venue made. Through the ordered push consumer the bus
used until session 18, the server pushed them all at once and the gate queued what its
applier had not written yet (a gate catching up 200,000 scans peaked at 170 MB, against 36 MB
with nothing to read). Now the bus reads through agent.venue.streamread and asks for nothing
while its applier is `INBOX_MESSAGES` behind. Real gates, SQLite files and nats-server."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import demo_data
from agent.store.venue import BusScan
from agent.venue import bus as bus_module
from agent.venue import messages
from agent.venue.election import connect
from agent.venue.node import NodeProcess
from tests.venue.rig import make_device, venue_devices, wait_until, write_platform_files

SCANS = 3000


async def _publish_scans(url: str, venue: str, n: int) -> int:
    """`n` admits of other gates, as their claims would have put them on the stream."""
    nc, js = await connect({"servers": [url]}, 5.0)
    try:
        for start in range(0, n, 500):
            sent = []
            for i in range(start, min(n, start + 500)):
                scan_uuid = str(uuid.uuid4())
                scan = BusScan(uuid=scan_uuid, device="gate-x", lane="main",
                               event_id=demo_data.EVENT_ID, item_id=900_000 + i, zone_id=None,
                               zone_is_default=True, direction="in", admit=True,
                               status="valid", scanned_on=datetime.now(UTC).isoformat(),
                               clock_offset_s=0.0)
                sent.append(js.publish(
                    messages.ticket_subject(venue, demo_data.EVENT_ID, 900_000 + i, "gate-x"),
                    messages.encode_scan(scan), headers={"Nats-Msg-Id": scan_uuid}))
            await asyncio.gather(*sent)
        info = await js.stream_info(messages.stream_name(venue))
        return int(info.state.last_seq)
    finally:
        await nc.close()


def test_a_late_gate_catches_up_every_scan_with_its_applier_at_most_a_bound_behind(
        tmp_path: Path, venue_node: NodeProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus_module, "INBOX_MESSAGES", 100)
    with venue_devices(tmp_path, [venue_node.url], 1, 5):
        last = asyncio.run(_publish_scans(venue_node.url, "hall", SCANS))
        now = datetime.now(UTC).replace(microsecond=0)
        files = write_platform_files(tmp_path / "platform-late", now, 5)
        late = make_device(tmp_path, "late", [venue_node.url], files, now)
        most = 0
        try:
            deadline = time.monotonic() + 60
            while late.bus.applied_seq < last:
                assert time.monotonic() < deadline, (late.bus.applied_seq, last)
                most = max(most, late.bus._inbox.qsize())
                time.sleep(0.001)
            wait_until(lambda: late.bus.ready, 20, "late connected")
            store = late.venue_store()
            try:
                known = store.conn.execute("SELECT COUNT(*) FROM venue_scans").fetchone()[0]
            finally:
                store.close()
        finally:
            for g in late.gates:
                g.close()
            late.bus.stop()
    assert known >= SCANS
    assert most <= 100 + 1  # the bound (+ a reset marker or a released hold)
