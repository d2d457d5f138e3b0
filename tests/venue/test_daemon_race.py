"""The race with real daemons: five `gate-agent run` processes on one venue bus, each with pty
scanners; every ticket is typed into all five within a millisecond. Exactly one admit per
single-access ticket in the venue (two on a `max_entries = 2` lane); the rest refused."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import demo_data
from agent.config import load_config
from agent.platform.provision import import_file
from agent.runtime.devrun import DaemonProcess
from agent.runtime.opening import opened_gate
from agent.venue.node import NodeProcess
from tests.conftest import PROJECT_ROOT
from tests.rigs import PtyDevice
from tests.venue.rig import LAWN, write_platform_files

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DAEMONS = 5
TICKETS = 100


def _config(root: Path, name: str, url: str, entry: PtyDevice, lawn: PtyDevice) -> Path:
    path = root / f"{name}.toml"
    path.write_text(f"""
[api]
base_url = "http://127.0.0.1:9/v1"
token_file = "{root / 'no-token'}"
[store]
dir = "{root / name}"
[events]
ids = [{demo_data.EVENT_ID}]
[status]
listen = "127.0.0.1:0"
[[lanes]]
name = "entry"
direction = "in"
max_entries = 1
readers = ["serial://{entry.path}"]
[[lanes]]
name = "lawn"
zone_id = {LAWN}
direction = "in"
max_entries = 2
readers = ["serial://{lawn.path}"]
[venue]
name = "hall"
servers = ["{url}"]
device = "{name}"
claim_timeout_ms = 3000  # a loaded CI machine: the race must happen on the bus, never by policy
""")
    return path


@pytest.fixture
def daemons(tmp_path: Path, venue_node: NodeProcess) -> Iterator[list[tuple[DaemonProcess,
                                                                            PtyDevice, PtyDevice]]]:
    files = write_platform_files(tmp_path / "platform", datetime.now(UTC), TICKETS)
    running = []
    try:
        for i in range(DAEMONS):
            name = f"d{i + 1}"
            (tmp_path / f"pty-{name}-e").mkdir()
            (tmp_path / f"pty-{name}-l").mkdir()
            entry, lawn = PtyDevice(tmp_path / f"pty-{name}-e"), PtyDevice(tmp_path / f"pty-{name}-l")
            config_path = _config(tmp_path, name, venue_node.url, entry, lawn)
            config = load_config(config_path)
            with opened_gate(config) as gate:
                for path in files:
                    import_file(gate.cache, path, datetime.now(UTC), demo_data.EVENT_ID)
            daemon = DaemonProcess(config_path, config.store_dir, cwd=PROJECT_ROOT).start()
            running.append((daemon, entry, lawn))
        for daemon, _e, _l in running:
            daemon.wait_ready(40)
        deadline = time.monotonic() + 20
        while not all(d.status()["venue"]["ready"] for d, _e, _l in running):
            assert time.monotonic() < deadline, "daemons not on the bus"
            time.sleep(0.1)
        yield running
    finally:
        for daemon, _e, _l in running:  # all told at once: each takes its second to stop
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.signal(signal.SIGTERM)
        for daemon, entry, lawn in running:
            daemon.stop()
            entry.unplug()
            lawn.unplug()


def test_five_daemons_race_for_every_ticket(daemons: list) -> None:
    codes = [demo_data.bulk_barcode(i) for i in range(TICKETS)]
    spreads = []
    for code in codes:
        line = code.encode() + b"\r\n"
        started = time.perf_counter()
        for _daemon, entry, _lawn in daemons:
            entry.write(line)
        spreads.append(time.perf_counter() - started)
        for _daemon, _entry, lawn in daemons:
            lawn.write(line)
    # All five within a millisecond, as the issue asks: the race is real. A test process that
    # the other pytest worker preempts may stretch some (seen: p95 2.7 ms under load); those
    # still race, only less tightly, so most, not all, must be within the millisecond.
    within = sum(spread < 0.001 for spread in spreads)
    assert within >= 0.8 * len(spreads), sorted(spreads)
    decisions = []
    for daemon, _e, _l in daemons:
        decisions += daemon.wait_decisions(2 * TICKETS, timeout=120)
    entry_admits = Counter(d["code"] for d in decisions if d["lane"] == "entry" and d["admit"])
    lawn_admits = Counter(d["code"] for d in decisions if d["lane"] == "lawn" and d["admit"])
    assert len(entry_admits) == TICKETS and set(entry_admits.values()) == {1}
    assert len(lawn_admits) == TICKETS and set(lawn_admits.values()) == {2}
    refused = Counter((d["lane"], d["status"]) for d in decisions if not d["admit"])
    assert refused == {("entry", "alreadyIn"): TICKETS * (DAEMONS - 1),
                       ("lawn", "scansInExceeded"): TICKETS * (DAEMONS - 2)}
    venue = [d.status()["venue"] for d, _e, _l in daemons]
    assert sum(v["claims_granted"] for v in venue) == 3 * TICKETS
    assert sum(v["claims_timed_out"] for v in venue) == 0
