"""venue.db held by another process as the venue bus starts: the bus waits for it, says why,
and starts by itself once it opens, nothing lost.

`VenueBus._main` (the bus loop) and the applier thread each open their own connection to
venue.db as the bus starts. Opened once with no retry, a file held at that moment (a `sqlite3`
shell with `PRAGMA locking_mode=EXCLUSIVE` between the bus's construction and its start, a
momentary permission or disk problem) ended both threads for good: no scan published or
applied, no claim answered, and status said only "connecting". Now both try it again every
`open_retry_s`, status names the file and what holds it (`db_open_error`, reason
venue_db_failing), and once it opens the scans journaled meanwhile go out.
A real second process holds the lock on a real venue.db; real gate, journal, nats-server.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest

from agent import demo_data
from agent.config import Config, load_config
from agent.ops.status import evaluate
from agent.platform.provision import import_file
from agent.runtime.gate import Gate
from agent.runtime.opening import opened_gate
from agent.store.cache import TicketCache
from agent.store.journal import Journal
from agent.venue.bus import VenueBus
from agent.venue.claims import VenueLink
from agent.venue.node import NodeProcess
from tests.venue.rig import LANES, wait_until, write_platform_files
from tests.venue.test_venue_db_held import HOLD_EXCLUSIVE

# another process holds a store file here on purpose: each try waits out the busy timeout
pytestmark = pytest.mark.usefixtures("short_busy_timeout")

SCANS = 30
RETRY_S = 0.2  # the bus's own retry interval here (5 s by default)


def _stored(url: str, stream: str) -> int:
    """Messages the venue's stream holds (0 while it does not exist yet)."""
    async def count() -> int:
        nc = await nats.connect(url)
        try:
            return int((await nc.jetstream().stream_info(stream)).state.messages)
        except nats.js.errors.NotFoundError:
            return 0
        finally:
            await nc.close()
    return asyncio.run(count())


def _reasons(bus: VenueBus) -> dict[str, str]:
    _health, reasons = evaluate({"venue": bus.get_status()}, datetime.now(UTC), 3600)
    return {r.code: r.message for r in reasons}


def gate_with_bus(tmp_path: Path, node: NodeProcess, now: datetime) -> tuple[Config, VenueBus]:
    """A gate's config (tickets imported) and its venue bus, made but not started (it makes
    venue.db, reads it and closes it), retrying an open every RETRY_S."""
    files = write_platform_files(tmp_path / "platform", now, 10)
    store_dir = tmp_path / "g1"
    config_path = tmp_path / "g1.toml"
    config_path.write_text(demo_data.demo_config(store_dir, LANES + f"""
[venue]
name = "hall"
servers = ["{node.url}"]
device = "g1"
claim_timeout_ms = 500
"""), encoding="utf-8")
    config = load_config(config_path)
    with opened_gate(config) as g:
        for path in files:
            import_file(g.cache, path, now, demo_data.EVENT_ID)
    assert config.venue is not None
    return config, VenueBus(config.venue, store_dir, store_dir / "journal.db", str(config_path),
                            open_retry_s=RETRY_S)


def test_a_venue_db_held_at_start_is_tried_again_and_the_bus_then_catches_up(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    config, bus = gate_with_bus(tmp_path, venue_node, now)  # the bus made venue.db, closed it
    store_dir, journal_path = config.store_dir, config.store_dir / "journal.db"
    locker = subprocess.Popen([sys.executable, "-c", HOLD_EXCLUSIVE, str(bus.store_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert locker.stdin is not None and locker.stdout is not None
    # this gate's lane meanwhile: its scans journaled (its link to venue.db needs the file
    # too, so it decides without one here: codes with no ticket, refused)
    alone = Gate(TicketCache(store_dir / "cache.db"), Journal(journal_path), config)
    linked: Gate | None = None
    try:
        assert locker.stdout.readline().strip() == "locked"
        bus.start()
        lane = config.lane("floor-in")
        for i in range(SCANS):
            assert not alone.scan(f"UNKNOWN{i:05d}", lane, now).decision.admit
        wait_until(lambda: bus.get_status()["db_open_error"] is not None, 30,
                   "the failed open in status")
        status = bus.get_status()
        error = status["db_open_error"]
        assert str(bus.store_path) in error and "locked" in error and "fuser" in error, status
        assert status["db_open_failing_since"] is not None
        assert not status["connected"] and not bus.ready
        said = _reasons(bus)
        assert str(bus.store_path) in said["venue_db_failing"], said
        assert "not running" in said["venue_db_failing"], said
        assert "venue_unreachable" not in said, said  # it is not the bus server
        assert _stored(venue_node.url, bus.stream) == 0  # nothing went out meanwhile
        # both still waiting for it (they ended at the first failure before)
        assert bus._thread is not None and bus._thread.is_alive()
        assert bus._applier.is_alive()
    finally:
        locker.stdin.close()  # the holder ends: the lock goes with its connection
        locker.wait(10)
    try:
        wait_until(lambda: bus.ready, 30, "the bus started once venue.db opened")
        wait_until(lambda: _stored(venue_node.url, bus.stream) >= SCANS, 20,
                   "the scans journaled meanwhile published")
        wait_until(lambda: bus.applied_seq >= SCANS, 20, "and applied here")
        status = bus.get_status()
        assert (status["db_open_error"], status["db_open_failing_since"]) == (None, None)
        # status's own reads of venue.db failed on the lock too (db_read_error): each is
        # shown until the next read comes back, started by a status call (status_read)
        wait_until(lambda: "venue_db_failing" not in _reasons(bus), 20,
                   "venue_db_failing cleared by status's next reads")
        wait_until(lambda: bus.counters["published"] >= SCANS, 10, "the acks counted")
        assert bus.counters["published"] == SCANS
        # claims answered: a lane linked to the venue admits a ticket through the bus
        linked = Gate(TicketCache(store_dir / "cache.db"), Journal(journal_path), config,
                      VenueLink(bus, config.venue["offline_policy"]))
        assert linked.scan(demo_data.bulk_barcode(1), lane, now).decision.admit
        assert bus.counters["claims_granted"] == 1
        wait_until(lambda: bus.applied_seq == SCANS + 1, 20, "the claim applied")
        assert _stored(venue_node.url, bus.stream) == SCANS + 1
    finally:
        alone.close()
        if linked is not None:
            linked.close()
        bus.stop()


@pytest.mark.parametrize("held", ["venue.db", "journal.db"])
def test_a_bus_stopped_while_a_file_it_needs_is_held_ends_its_threads(
        tmp_path: Path, held: str) -> None:
    """Stopping a bus still waiting for venue.db or journal.db (a daemon's reload or shutdown
    meanwhile) ends its loop and applier threads: neither keeps trying a file for a bus that
    is gone."""
    venue = {"name": "held", "servers": ["nats://127.0.0.1:1"], "device": "h1",
             "credentials": "", "tls_ca": "", "claim_timeout_ms": 500,
             "offline_policy": "local", "heartbeat_s": 5.0, "heartbeat_ttl_s": 30.0}
    journal_path = tmp_path / "journal.db"
    Journal(journal_path).close()
    bus = VenueBus(venue, tmp_path, journal_path, open_retry_s=RETRY_S)
    path, failing = (bus.store_path, bus.db_open_failing) if held == "venue.db" else \
        (journal_path, bus.journal_open_failing)
    locker = subprocess.Popen([sys.executable, "-c", HOLD_EXCLUSIVE, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert locker.stdin is not None and locker.stdout is not None
    try:
        assert locker.stdout.readline().strip() == "locked"
        bus.start()
        wait_until(lambda: failing.error is not None, 30, "the failed open in status")
        bus.stop()
        assert bus._thread is not None
        for thread in (bus._thread, bus._applier):  # a try in flight waits out its busy wait
            thread.join(30)
            assert not thread.is_alive(), thread
    finally:
        locker.stdin.close()
        locker.wait(10)
