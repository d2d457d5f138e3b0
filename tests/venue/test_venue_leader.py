"""The venue leader end to end: gate devices are real processes (tests/venue/role_child.py
running `VenueRole`) on a real nats-server, against the sandbox (a real HTTP server with the
platform's 60 requests/min) that records every request and every row received.

Scaled down from the issue's scenario (10 daemons, 100,000 items, 10 x 1,000 scans) to fit
the suite's budget: 3 gates, 2,000 items, 3 x 150 scans; bench/leader_bench.py runs the full
sizes. The properties asserted are the same."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.sandbox.harness import Sandbox, start_sandbox
from agent.store.journal import Journal
from agent.venue.node import NodeProcess
from tests.platform.sync.conftest import EVENT, Site, backlog, expected_ids, fill_journal, make_site

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHILD = Path(__file__).with_name("role_child.py")
GATES = 3
SCANS = 150
BATCH = 50
TICKETS = 2000
TTL_S = 2.0


def venue_extra(node: NodeProcess, venue: str, device: str) -> str:
    return f"""
[sync]
upload_batch_size = {BATCH}
delta_interval_s = 5

[venue]
name = "{venue}"
servers = ["{node.url}"]
device = "{device}"
lease_ttl_s = {TTL_S}
platform_reserve = 6
"""


class Gate:
    def __init__(self, site: Site):
        self.site = site
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(CHILD), str(self.site.config_path)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "READY"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.site.config.store_dir / "role-status.json").read_text())
        except (OSError, ValueError):
            return {}

    def leads(self) -> bool:
        return bool(self.status().get("this_device_leads"))

    def cached_items(self) -> int:
        path = self.site.cache_path
        if not path.exists():
            return 0
        conn = sqlite3.connect(path)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM items WHERE event_id = ?",
                                    (EVENT,)).fetchone()[0])
        except sqlite3.Error:
            return 0
        finally:
            conn.close()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    # the platform's real limit (60/min); slow answers, so a kill lands mid-request
    with start_sandbox(tickets=TICKETS, async_delay_s=0.3, rpm=60) as sb:
        sb.set_faults(latency_s=0.3)
        yield sb


@pytest.fixture
def gates(tmp_path: Path, sandbox: Sandbox, shared_venue_node: NodeProcess) -> Iterator[list[Gate]]:
    venue = f"v{os.getpid()}x{int(time.time() * 1000) % 100000}"
    out = []
    start = datetime.now(UTC).replace(microsecond=0)
    for i in range(GATES):
        site = make_site(tmp_path / f"gate{i}", sandbox, name=f"gate{i}", rpm=60,
                         extra=venue_extra(shared_venue_node, venue, f"gate{i}"))
        site.config.store_dir.mkdir(parents=True, exist_ok=True)
        journal = Journal(site.config.store_dir / "journal.db")
        rows = backlog(SCANS * GATES, start)[i * SCANS:(i + 1) * SCANS]
        fill_journal(journal, rows)
        journal.close()
        out.append(Gate(site))
    yield out
    for gate in out:
        gate.kill()


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_leader_killed_during_sync_and_upload_loses_and_duplicates_nothing(
        gates: list[Gate], sandbox: Sandbox) -> None:
    for gate in gates:
        gate.start()
    first = wait_for(lambda: [g for g in gates if g.leads()], 20, "a leader")
    assert len(first) == 1
    leader = first[0]
    # kill it once it is both syncing and uploading (requests of both kinds seen)
    wait_for(lambda: sandbox.received()["requestUuids"] and
             sandbox.received()["perEndpoint"].get("GET /entry/tickets"), 30,
             "the leader syncing and uploading")
    leader.kill()
    killed_at = time.monotonic()
    others = [g for g in gates if g is not leader]
    second = wait_for(lambda: [g for g in others if g.leads()], 20, "a new leader")
    failover_s = time.monotonic() - killed_at
    assert len(second) == 1
    assert failover_s < TTL_S * 2 + 2, f"failover took {failover_s:.1f} s"
    leader.start()  # the old leader comes back as a member: its remaining scans go out
    want = {u for g in gates for u in _journal_rows(g)}
    wait_for(lambda: want <= set(_applied(sandbox)), 90, "every scan uploaded")
    wait_for(lambda: all(g.cached_items() >= _platform_items() for g in gates), 60,
             "every gate's cache complete from the bus")
    received = sandbox.received()
    applied = Counter(_applied(sandbox))
    assert set(applied) == want  # nothing lost, nothing foreign
    assert max(applied.values()) == 1  # nothing applied twice
    all_rows = Counter(u["uuid"] for u in received["uploads"])
    replays = sum(n - 1 for n in all_rows.values())
    duplicates = [u for u in received["uploads"] if u.get("skipped") == "duplicate uuid"]
    assert duplicates == []  # never the same scan under a second request uuid
    assert received["rateLimited"] == 0
    uploads = len(set(received["requestUuids"]))
    assert uploads <= math.ceil(len(want) / BATCH) + 3, received["requestUuids"]
    # only leaders listed tickets: two full listings at most (the killed one's, the new one's)
    print(f"failover {failover_s:.2f} s; upload requests {uploads} "
          f"(floor {math.ceil(len(want) / BATCH)}); rows replayed under the same request "
          f"uuid {replays}; per endpoint {received['perEndpoint']}")


def _journal_rows(gate: Gate) -> list[str]:
    journal = Journal(gate.site.config.store_dir / "journal.db")
    try:
        return [r["uuid"] for r in journal.rows(("pending", "sent", "quarantined", "local"),
                                                 100_000)]
    finally:
        journal.close()


def _applied(sb: Sandbox) -> list[str]:
    return [u["uuid"] for u in sb.received()["uploads"] if "skipped" not in u]


def _platform_items() -> int:
    return len(expected_ids(TICKETS))


def test_gate_started_while_its_node_is_down_falls_back_then_joins_the_bus(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """nats-py retries a first connect for ever: unbounded, the role never left it, so its
    fallback never ran and these scans stayed at the gate until the node came back."""
    venue_node.kill()
    with start_sandbox(tickets=200, async_delay_s=0.02, rpm=60) as sb:
        site = make_site(tmp_path / "gate", sb, name="early", rpm=60, extra=venue_extra(
            venue_node, "downstart", "early") + "fallback_after_s = 5\n")
        site.config.store_dir.mkdir(parents=True, exist_ok=True)
        rows = backlog(10, datetime.now(UTC).replace(microsecond=0))
        journal = Journal(site.config.store_dir / "journal.db")
        fill_journal(journal, rows)
        gate = Gate(site)
        started = time.monotonic()
        gate.start()
        try:
            wait_for(lambda: {r.uuid for r in rows} <= set(_applied(sb)), 30,
                     "the gate's own uploads while its node is down")
            assert time.monotonic() - started >= 5  # not before the configured time
            wait_for(lambda: gate.status().get("fallback_rows") == 10, 5, "status")
            assert journal.pending_count() == 0
            assert "no venue node answered" in gate.status()["bus_error"]
            venue_node.start()
            # the bus is joined once the node is there: this gate is elected and leads
            wait_for(lambda: gate.status().get("this_device_leads"), 30, "joining the bus")
            assert max(Counter(_applied(sb)).values()) == 1
        finally:
            gate.kill()
            journal.close()


def test_gate_cut_off_from_the_bus_uploads_its_own_scans_after_the_fallback_time(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    with start_sandbox(tickets=200, async_delay_s=0.02, rpm=60) as sb:
        site = make_site(tmp_path / "gate", sb, name="alone", rpm=60, extra=venue_extra(
            venue_node, "cutoff", "alone") + "fallback_after_s = 5\n")
        site.config.store_dir.mkdir(parents=True, exist_ok=True)
        start = datetime.now(UTC).replace(microsecond=0)
        rows = backlog(40, start)
        journal = Journal(site.config.store_dir / "journal.db")
        fill_journal(journal, rows[:20])
        gate = Gate(site)
        gate.start()
        try:
            # on the bus: handed over, uploaded by the venue's leader (itself)
            wait_for(lambda: {r.uuid for r in rows[:20]} <= set(_applied(sb)), 30,
                     "uploads through the bus")
            assert gate.status()["fallback_rows"] == 0
            venue_node.kill()
            cut_at = time.monotonic()
            fill_journal(journal, rows[20:])
            wait_for(lambda: {r.uuid for r in rows[20:]} <= set(_applied(sb)), 40,
                     "the gate's own uploads")
            waited = time.monotonic() - cut_at
            assert waited >= 5  # not before the configured time
            wait_for(lambda: gate.status().get("fallback_rows") == 20, 5, "status")
            received = sb.received()
            applied = Counter(_applied(sb))
            assert set(applied) == {r.uuid for r in rows} and max(applied.values()) == 1
            double = sum(1 for u in received["uploads"] if u.get("skipped") == "duplicate uuid")
            assert double == 0 and received["rateLimited"] == 0
            assert journal.pending_count() == 0
        finally:
            gate.kill()
            journal.close()
