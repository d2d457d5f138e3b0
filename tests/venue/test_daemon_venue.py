"""The real daemon (subprocess, pty scanner) with `[venue]` (round one's own e2e tests with a
venue: test_round_one_with_venue.py): the daemon shares the venue with another gate — a ticket
admitted at one is refused at the other within milliseconds; status, metrics and the CLI show
the bus."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import demo_data
from agent.core.codes import parse_utc_iso
from agent.demo_venue import gate_config
from agent.runtime.devrun import DaemonProcess
from agent.venue.node import NodeProcess
from agent.venue.term import epoch_text
from tests.conftest import PROJECT_ROOT, run_cli
from tests.runtime.daemon.conftest import Site, site, wait_synced  # noqa: F401 - fixture
from tests.venue.rig import venue_devices, wait_until

C = demo_data.CODES

pytestmark = pytest.mark.e2e


def venue_section(url: str, device: str = "daemon") -> str:
    return f"""
[venue]
name = "hall"
servers = ["{url}"]
device = "{device}"
claim_timeout_ms = 300
"""


def test_daemon_and_another_gate_share_admissions(site: Site, venue_node: NodeProcess,  # noqa: F811
                                                  tmp_path: Path) -> None:
    site.write_config(extra_lanes=venue_section(venue_node.url))
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        wait_synced(daemon)
        with venue_devices(tmp_path / "other", [venue_node.url], 1, 1) as (other,):
            lane = other.gate().config.lane("north-in")
            wait_until(lambda: daemon.status()["venue"]["ready"], 10, "daemon on the bus")
            site.scanner.write(C["valid"].encode() + b"\r\n")
            first = daemon.wait_decisions(1)[0]
            assert first["status"] == "valid"
            admitted_at = time.monotonic()
            wait_until(lambda: other.gate().check(C["valid"], lane, datetime.now(UTC)).status
                       == "alreadyIn", 2, "the other gate knows")
            seen_after_ms = (time.monotonic() - admitted_at) * 1000
            assert other.gate().scan(C["valid"], lane, datetime.now(UTC)).decision.status \
                == "alreadyIn"
            # and the other way round: admitted elsewhere, refused at the daemon's scanner
            assert other.gate().scan(C["valid2"], lane, datetime.now(UTC)).decision.admit
            wait_until(lambda: daemon.status()["venue"]["applied_seq"] >= 3, 5, "daemon applied")
            site.scanner.write(C["valid2"].encode() + b"\r\n")
            second = daemon.wait_decisions(2)[1]
            assert (second["code"], second["status"]) == (C["valid2"], "alreadyIn")
            # the granted row is marked 'claimed' by the bus thread (within 0.2 s, off the hot path)
            wait_until(lambda: daemon.status()["venue"]["decided_claimed"] == 1, 5,
                       "the granted row marked")
            venue = daemon.status()["venue"]
            assert venue["connected"] and venue["claims_granted"] == 1 and venue["lag"] == 0
            assert venue["decided_claimed"] == 1 and venue["conflicts"] == 0
            metrics = daemon.get("/metrics").text
            assert "gate_venue_connected 1.0" in metrics
            assert 'gate_venue_claims_total{outcome="granted"} 1.0' in metrics
            table = run_cli("status", "--config", str(site.config))
            assert "Venue hall as daemon: connected" in table.stdout
            wait_until(lambda: daemon.status()["venue"]["gates"]["online"] >= 1, 10, "beat")
            # one clock here for gate and bus server: measured off by delivery time only. Only a
            # beat delivered live measures it (not one the watcher replays at its start), so
            # the first beat listed may come before the first measure: wait for the next.
            wait_until(lambda: daemon.status()["venue"]["clock_offset_s"] is not None, 15,
                       "the clock offset measured")
            offset = daemon.status()["venue"]["clock_offset_s"]
            assert offset is not None and abs(offset) < 1.0, offset
            assert "Venue gates (heartbeats): 1 online" in run_cli(
                "status", "--config", str(site.config)).stdout
            listed = run_cli("venue", "conflicts", "--json", "--config", str(site.config))
            assert json.loads(listed.stdout) == {"conflicts": []}
            print(f"visibility daemon -> other gate: {seen_after_ms:.1f} ms")
    finally:
        assert daemon.stop() == 0


def test_venue_cli_prints_a_node_config(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\ndir = "{tmp_path}"\n' + """
[venue]
name = "hall"
servers = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222", "nats://10.0.0.3:4222"]
""")
    out = run_cli("venue", "node-config", "--node", "3", "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert 'listen: "10.0.0.3:4222"' in out.stdout and "nats-route://10.0.0.1:6222" in out.stdout
    bad = run_cli("venue", "node-config", "--node", "4", "--config", str(config))
    assert bad.returncode == 2 and "--node must be 1..3" in bad.stderr
    alone = tmp_path / "alone.toml"
    alone.write_text(f'[store]\ndir = "{tmp_path}"\n')
    missing = run_cli("venue", "conflicts", "--config", str(alone))
    assert missing.returncode == 2 and "venue: no [venue] section" in missing.stderr


def test_daemon_leads_the_venue_and_status_shows_the_leader(site: Site,  # noqa: F811
                                                            venue_node: NodeProcess) -> None:
    """The real daemon in venue mode: alone on the venue it is elected, syncs for the venue
    (its cache is complete), uploads the venue's scans, and `gate-agent status` names it."""
    # beats every 0.5 s (heartbeat_s): the leader's figures reach the dashboard sooner
    site.write_config(extra_lanes=venue_section(venue_node.url) + "heartbeat_s = 0.5\n")
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        wait_synced(daemon)
        site.scanner.write(C["valid"].encode() + b"\r\n")
        decided = daemon.wait_decisions(1)[0]
        wait_until(lambda: decided["uuid"] in {u["uuid"] for u in
                                               site.sandbox.received()["uploads"]},
                   15, "the scan uploaded by the venue leader")
        # (the figure is refreshed from the bus's request log every few seconds: wait for it)
        wait_until(lambda: ((daemon.status()["venue"].get("leader") or {}).get(
            "budget_in_use_per_min") or 0) >= 3, 15, "the venue's request log")
        leader = daemon.status()["venue"]["leader"]
        assert leader["leader"] == "daemon" and leader["this_device_leads"]
        assert leader["leader_since"] and leader["leader_term"]
        # the term's epoch: the lease bucket's creation time, the same instant as in the
        # catalog's newest term (`<epoch in microseconds>/<revision>`)
        epoch, revision = (int(n) for n in leader["catalog_term"].split("/"))
        assert revision == leader["leader_term"] and \
            leader["leader_term_epoch"] == epoch_text(epoch), leader
        assert leader["budget_in_use_per_min"] >= 3  # events, zones, tickets, the upload
        assert daemon.status()["upload"]["sent_total"] == 1
        table = run_cli("status", "--config", str(site.config))
        assert "Venue leader: daemon (this gate) since" in table.stdout
        metrics = daemon.get("/metrics").text
        for line in ("gate_venue_leader 1.0", f"gate_venue_leader_term {leader['leader_term']}.0",
                     "gate_venue_budget_used ", "gate_venue_upload_lag_seconds ",
                     "gate_venue_quarantined 0.0"):
            assert line in metrics, line
        (seconds,) = re.findall(r"^gate_venue_leader_term_epoch_seconds (\S+)$", metrics, re.M)
        assert float(seconds) == parse_utc_iso(leader["leader_term_epoch"]).timestamp()
        # the heartbeat carries the leader's figures under the names the dashboard reads
        # (a first heartbeat may carry the leader's budget before its request log was read)
        wait_until(lambda: ((daemon.get("/api/venue").json()["totals"]["budget"] or {})
                            .get("used") or 0) >= 3, 15, "the leader's figures in the heartbeat")
        totals = daemon.get("/api/venue").json()["totals"]
        assert totals["leader"] == "daemon"
        assert totals["budget"]["used"] >= 3 and totals["budget"]["per_minute"] > 0
        assert totals["upload_lag_s"] is not None
        # `gate-agent sync` beside it asks the venue leader (here this very daemon) over the
        # bus and returns once the daemon holds the pass (agent.venue.passrequest)
        listed = site.sandbox.received()["perEndpoint"].get("GET /entry/tickets", 0)
        synced = run_cli("sync", "--json", "--config", str(site.config))
        assert synced.returncode == 0, synced.stderr
        result = json.loads(synced.stdout)
        assert (result["leader"], result["mode"]) == ("daemon", "delta")
        assert result["events"] and all(e["items"] > 0 for e in result["events"])
        assert site.sandbox.received()["perEndpoint"].get("GET /entry/tickets", 0) > listed
        # `gate-agent upload` hands this gate's scans to the bus (the one above is long there)
        handed = run_cli("upload", "--json", "--config", str(site.config))
        assert handed.returncode == 0, handed.stderr
        assert json.loads(handed.stdout) | {"handed": 0} == {
            "venue": True, "handed": 0, "sent": 0, "quarantined": 0, "requests": 0,
            "pending": 0, "quarantined_total": 0, "error": None, "auth": False}
    finally:
        assert daemon.stop() == 0


def test_a_venue_leader_whose_clock_is_off_decides_by_the_platforms_time(
        site: Site, venue_node: NodeProcess) -> None:  # noqa: F811
    """In venue mode the platform is talked to by the leader's own client (agent.venue.leader),
    not the single gate's: its answers must reach the gate's clock too (agent.runtime.clock).
    The sandbox's clock is 8 hours ahead: the leader corrects and stamps its scans so."""
    ahead_s = 8 * 3600
    site.sandbox.set_faults(clock_offset_s=ahead_s)
    site.write_config(extra_lanes=venue_section(venue_node.url))
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        wait_until(lambda: (daemon.status().get("clock") or {}).get("corrected"), 20,
                   "the leader's clock corrected")
        assert "clock_corrected" in {r["code"] for r in daemon.status()["reasons"]}
        wait_synced(daemon)
        site.scanner.write(C["valid"].encode() + b"\r\n")
        decided = daemon.wait_decisions(1)[0]
        stamped = datetime.fromisoformat(decided["at"].replace("Z", "+00:00"))
        assert abs((stamped - datetime.now(UTC)).total_seconds() - ahead_s) < 60
    finally:
        assert daemon.stop() == 0


def test_a_member_whose_clock_is_off_decides_by_the_platforms_time_via_the_leader(
        site: Site, venue_node: NodeProcess) -> None:  # noqa: F811
    """A member sends the platform nothing, so it has no Date to compare with: the leader puts
    the platform's time against the bus server's in its heartbeat, and the member, knowing its
    own offset from the bus server, corrects by it (agent.runtime.clock.leader_reading). The
    sandbox's clock is 8 hours ahead of this machine's, which both daemons share."""
    ahead_s = 8 * 3600
    site.sandbox.set_faults(clock_offset_s=ahead_s)
    # the leader beats every 0.5 s (heartbeat_s, 2 s by default): the member's two readings
    # come sooner
    site.write_config(extra_lanes=venue_section(venue_node.url) + "heartbeat_s = 0.5\n")
    member_config = gate_config(site.root, "member", [venue_node.url], venue="hall",
                                extra="leader = false")
    member_store = site.root / "member"
    leader = site.daemon().start()
    # the member looks at the leader's beat once a watchdog period (5 s without systemd's
    # WATCHDOG_USEC) and corrects on the second reading: 1 s, as under WatchdogSec=2
    member = DaemonProcess(member_config, member_store, cwd=PROJECT_ROOT,
                           env={"WATCHDOG_USEC": "2000000"}).start()
    try:
        leader.wait_ready()
        member.wait_ready()
        wait_until(lambda: (member.status().get("clock") or {}).get("corrected"), 30,
                   "the member's clock corrected by the leader's heartbeat")
        clock = member.status()["clock"]
        assert clock["source"] == "venue leader" and abs(clock["offset_s"] - ahead_s) < 5
        assert "clock_corrected" in {r["code"] for r in member.status()["reasons"]}
        scanned = run_cli("scan", C["valid"], "--json", "--config", str(member_config))
        assert scanned.returncode in (0, 1), scanned.stderr  # admitted or refused: journaled
        conn = sqlite3.connect(member_store / "journal.db")
        try:
            (stamp,), = conn.execute("SELECT scanned_on FROM scans").fetchall()
        finally:
            conn.close()
        stamped = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert abs((stamped - datetime.now(UTC)).total_seconds() - ahead_s) < 60
    finally:
        assert member.stop() == 0
        assert leader.stop() == 0


def _first(daemon: DaemonProcess, words: str) -> int:
    """The position of the daemon's first log record that says `words`."""
    return next(i for i, r in enumerate(daemon.records) if words in r.get("msg", ""))


def test_the_daemon_opens_its_lanes_once_its_clock_is_measured(
        site: Site, venue_node: NodeProcess) -> None:  # noqa: F811
    """Lanes decide nothing before this gate has measured its clock against the bus server's
    (as the bus connects, from the server's time; no heartbeat needed): before, they opened at
    once and read other gates' scans as if this clock agreed with the server's until the first
    heartbeat was delivered (a whole `heartbeat_s` after connecting, at worst)."""
    site.write_config(extra_lanes=venue_section(venue_node.url))
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        assert _first(daemon, "from the bus server's") < _first(daemon, "lane entry ready")
        offset = daemon.status()["venue"]["clock_offset_s"]
        assert offset is not None and abs(offset) < 1.0, offset
    finally:
        assert daemon.stop() == 0


def test_a_daemon_whose_bus_is_out_of_reach_opens_its_lanes_all_the_same(
        site: Site, tmp_path: Path) -> None:  # noqa: F811
    """No bus to measure the clock against: the lanes open after a bounded wait, and the log
    says which entries are refused until the clock is measured."""
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        url = f"nats://127.0.0.1:{free.getsockname()[1]}"
    site.write_config(extra_lanes=venue_section(url))
    daemon = site.daemon().start()
    try:
        daemon.wait_ready(timeout=40.0)
        warned = _first(daemon, "not measured against the bus server's yet")
        assert "clockUnmeasured" in daemon.records[warned]["msg"]
        assert warned < _first(daemon, "lane entry ready")
        venue = daemon.status()["venue"]
        assert venue["clock_offset_s"] is None and not venue["connected"]
    finally:
        assert daemon.stop() == 0
