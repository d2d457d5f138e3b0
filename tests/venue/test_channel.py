"""Each lane claims over its own NATS connection, in its own thread (agent.venue.channel), and
falls back to the bus's connection whenever its own cannot serve at that instant; an idle one
is kept alive (and reconnected) by the keeper thread without any claim. Real nats-server, real
gates over real SQLite files."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from agent import demo_data
from agent.venue.channel import ChannelKeeper
from agent.venue.node import NodeProcess, free_ports
from tests.venue.rig import venue_devices, wait_until


def test_claims_go_over_the_lanes_connection_or_else_the_bus(tmp_path: Path,
                                                             venue_node: NodeProcess) -> None:
    with venue_devices(tmp_path, [venue_node.url], 2, 4) as (a, b):
        gate, lane = a.gate(), a.gate().config.lane("north-in")
        link = gate.venue
        assert link is not None
        now = datetime.now(UTC)
        first = gate.scan(demo_data.bulk_barcode(0), lane, now)
        assert first.decision.admit and link.channel.used == 1
        # the keeper (or anyone) running the channel's loop right now: the bus serves the claim
        with link.channel.lock:
            second = gate.scan(demo_data.bulk_barcode(1), lane, now)
        assert second.decision.admit and link.channel.used == 1
        assert a.bus.counters["claims_granted"] == 2
        assert [r["venue"] for r in a.journal_rows()] == ["claimed", "claimed"]
        # both claims stand for the venue, whichever connection carried them
        other = b.gate()
        for i in (0, 1):
            code = demo_data.bulk_barcode(i)
            wait_until(lambda code=code: other.check(code, other.config.lane("north-in"),
                                                     datetime.now(UTC)).status == "alreadyIn",
                       5, f"gate b knows {code}")


def test_an_idle_channel_comes_back_after_the_bus_does(tmp_path: Path,
                                                       venue_node: NodeProcess) -> None:
    with venue_devices(tmp_path, [venue_node.url], 1, 4) as (a,):
        gate, lane = a.gate(), a.gate().config.lane("north-in")
        link = gate.venue
        assert link is not None
        venue_node.kill()
        wait_until(lambda: not link.channel.ready, 10, "the channel sees the node gone")
        venue_node.start()  # same port, same storage
        # no claim meanwhile: only the keeper runs the idle loop, and it reconnects
        wait_until(lambda: link.channel.ready and a.bus.connected, 20, "reconnected")
        # (the keeper may still be running the loop it reconnected in: the next is 1 s away)
        wait_until(lambda: not link.channel.lock.locked(), 5, "the keeper done")
        assert gate.scan(demo_data.bulk_barcode(2), lane, datetime.now(UTC)).decision.admit
        assert link.channel.used == 1


def test_a_channel_that_never_connected_closes_without_hanging() -> None:
    """A lane started while the bus is down (a reload during an outage, say): the keeper keeps
    trying to connect its channel, and stopping the daemon must not wait on that forever."""
    port = free_ports(1)[0]  # nothing listens there
    keeper = ChannelKeeper({"servers": [f"nats://127.0.0.1:{port}"], "name": "t"})
    keeper.start()
    channel = keeper.open()
    time.sleep(2.5)  # the keeper has tried (and is trying) to connect
    assert not channel.ready
    assert channel.publish("venue.x", b"{}", "u", 0, 0.1) is None  # claims use the bus
    stopper = threading.Thread(target=keeper.stop)
    stopper.start()
    stopper.join(20)  # generous: the bound is a few seconds, "forever" is what is tested
    assert not stopper.is_alive() and channel.closed
