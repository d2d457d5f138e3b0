"""In-process gates of one venue: each its own store directory, cache, journal and VenueBus
(so each is a separate device on the bus), deciding through the real `Gate` over real SQLite
files and a real nats-server. Tickets: `bulk_tickets(n)` with access to an extra in-only zone
(LAWN, for `max_entries = 2`)."""

from __future__ import annotations

import dataclasses
import json
import queue
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from agent import demo_data
from agent.config import load_config
from agent.platform.provision import import_file
from agent.runtime.gate import Gate
from agent.runtime.lane import LaneEvent, LaneRunner
from agent.runtime.opening import opened_gate
from agent.store.cache import TicketCache
from agent.store.journal import Journal
from agent.store.venue import VenueStore
from agent.venue.bus import VenueBus
from agent.venue.claims import VenueLink

LAWN = 9004
LANES = f"""
[[lanes]]
name = "lawn"
zone_id = {LAWN}
direction = "in"
max_entries = 2

[[lanes]]
name = "floor-in"
zone_id = {demo_data.FLOOR_ZONE}
direction = "in"
max_entries = 0

[[lanes]]
name = "floor-out"
zone_id = {demo_data.FLOOR_ZONE}
direction = "out"
max_entries = 0
"""


def wait_until(check: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def venue_lane(device: VenueDevice, lane: str,
               **changes: Any) -> tuple[LaneRunner, queue.Queue[LaneEvent]]:
    """The real lane thread on `device`'s gate: lane `lane` of its config with `changes`,
    voiding its claims on the bus as the daemon does; started, its passage inputs watched
    (stop it)."""
    gate = device.gate()
    config = dataclasses.replace(gate.config.lane(lane), debounce_ms=0, **changes)
    events: queue.Queue[LaneEvent] = queue.Queue()
    runner = LaneRunner(config, gate, events.put,
                        void_claim=lambda scan: device.bus.void_now(scan, "not passed"))
    runner.start()
    for direction in [d for d, url in (("in", config.passage_in), ("out", config.passage_out))
                      if url]:
        wait_until(lambda d=direction: runner.passage.inputs[d].connected, 5, "passage input")
    return runner, events


def write_platform_files(root: Path, now: datetime, tickets: int) -> list[Path]:
    files = demo_data.write_demo_files(root, now)
    zones = json.loads(files[1].read_text())
    zones["zones"].append({"id": LAWN, "name": "Lawn", "scan": "in", "capacity": None,
                           "openingDate": None, "closingDate": None})
    files[1].write_text(json.dumps(zones))
    bulk = demo_data.bulk_tickets(tickets)
    for item in bulk:
        item["zoneData"]["accessToZones"].append({"id": LAWN})
    path = root / "bulk.json"
    path.write_text(json.dumps({"content": bulk, "total": len(bulk)}))
    return [*files, path]


@dataclass
class VenueDevice:
    name: str
    config_path: Path
    bus: VenueBus
    gates: list[Gate]

    def gate(self) -> Gate:
        return self.gates[0]

    def restart_bus(self) -> None:
        """Stop this device's bus and start a new one on the same store (a daemon restart)."""
        self.bus.stop()
        old = self.bus
        self.bus = VenueBus(old.venue, old.store_path.parent, old.journal_path, None,
                            wall=old.wall, clock=old.clock)
        self.bus.start()
        for gate in self.gates:
            assert gate.venue is not None
            gate.venue.bus = self.bus

    def now(self) -> datetime:
        """The time this device decides by (its wall clock, or its corrected clock)."""
        return datetime.fromtimestamp(self.bus.clock(), UTC)

    def calibrate(self) -> None:
        """Heartbeats until this device has measured its clock against the bus server's (the
        rig runs no daemon, which would beat every `heartbeat_s`)."""
        def measured() -> bool:
            self.bus.beat(orjson.dumps({"device": self.name}))
            return self.bus.board.calibrated
        wait_until(measured, 10, f"{self.name}'s clock measured")

    def venue_link_seq(self) -> int:
        """The stream position of this device's last granted claim."""
        link = self.gate().venue
        assert link is not None
        return link.last_granted_seq

    def venue_store(self) -> VenueStore:
        return VenueStore(self.bus.store_path)

    def journal_rows(self) -> list[dict[str, Any]]:
        journal = Journal(self.bus.store_path.with_name("journal.db"))
        try:
            return journal.after(0, 100_000)
        finally:
            journal.close()


def make_device(root: Path, name: str, servers: list[str], files: list[Path], now: datetime,
                policy: str = "local", timeout_ms: int = 500,
                wall: Callable[[], float] = time.time,
                clock: Callable[[], float] | None = None) -> VenueDevice:
    store = root / name
    config_path = root / f"{name}.toml"
    servers_toml = ", ".join(f'"{s}"' for s in servers)
    config_path.write_text(demo_data.demo_config(store, LANES + f"""
[venue]
name = "hall"
servers = [{servers_toml}]
device = "{name}"
claim_timeout_ms = {timeout_ms}
offline_policy = "{policy}"
"""), encoding="utf-8")
    config = load_config(config_path)
    with opened_gate(config) as g:
        for path in files:
            import_file(g.cache, path, now, demo_data.EVENT_ID)
    assert config.venue is not None
    bus = VenueBus(config.venue, config.store_dir, config.store_dir / "journal.db",
                   str(config_path), wall=wall, clock=clock)
    bus.start()
    gate = Gate(TicketCache(config.store_dir / "cache.db"),
                Journal(config.store_dir / "journal.db"), config,
                VenueLink(bus, config.venue["offline_policy"]))
    return VenueDevice(name, config_path, bus, [gate])


def _skewed(skew_s: float) -> Callable[[], float]:
    return lambda: time.time() + skew_s


@contextmanager
def venue_devices(root: Path, servers: list[str], n: int, tickets: int = 100,
                  policy: str = "local", timeout_ms: int = 500,
                  servers_of: list[list[str]] | None = None,
                  prefix: str = "g",
                  skews_s: list[float] | None = None,
                  corrected: list[bool] | None = None) -> Iterator[list[VenueDevice]]:
    """`n` devices on the venue (named PREFIX1..PREFIXn: device names must be unique in a
    venue); `servers_of[i]`: device i's own servers list; `skews_s[i]`: how far device i's
    wall clock is ahead of the real one (its bus measures that clock); `corrected[i]`: device
    i decides by the real time all the same (as the daemon's GateClock does once the platform
    showed its clock wrong). Scan with `device.now()`."""
    now = datetime.now(UTC).replace(microsecond=0)
    files = write_platform_files(root / "platform", now, tickets)
    devices = [make_device(root, f"{prefix}{i + 1}", servers_of[i] if servers_of else servers, files,
                           now, policy, timeout_ms, _skewed(skews_s[i]) if skews_s else time.time,
                           time.time if corrected and corrected[i] else None)
               for i in range(n)]
    try:
        for d in devices:
            wait_until(lambda d=d: d.bus.ready, 20, f"{d.name} connected")
        yield devices
    finally:
        for d in devices:
            for g in d.gates:
                g.close()
            d.bus.stop()
