"""A venue whose JetStream lost its quorum, on a real three-node cluster (nodes killed by PID).

A gate's link to the node left stays up while JetStream answers nothing: the gate says so
(connected, venue_degraded, why), decides by its offline policy, and comes back by itself when
the quorum does. A bus session whose set-up began as the quorum went used to fail at its first
JetStream step and be torn down, again and again: "not connected" (venue_unreachable, false) for
as long as the outage lasted (the CI flake of tests/venue/test_cluster.py). (A stream without a
leader, whose replicas answer stream info with what each holds: tests/venue/test_leaderless_setup.py.)
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import demo_data
from agent.ops.status import evaluate
from agent.venue import bus as venue_bus
from agent.venue.node import NodeProcess
from tests.venue.rig import VenueDevice, venue_devices, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TIMEOUT_MS = 300


def admit(device: VenueDevice, i: int) -> tuple[bool, str]:
    gate = device.gate()
    r = gate.scan(demo_data.bulk_barcode(i), gate.config.lane("north-in"), datetime.now(UTC))
    return r.decision.admit, r.decision.status


def venue_reasons(device: VenueDevice) -> dict[str, str]:
    """The venue reasons of the device's status, as /status gives them: code -> text."""
    _health, reasons = evaluate({"venue": device.bus.get_status()}, datetime.now(UTC), 3600)
    return {r.code: r.message for r in reasons if r.code.startswith("venue")}


def admit_until_granted(device: VenueDevice, tickets: range) -> int:
    """Admit tickets until one's claim is granted (a stream leader may be being elected);
    returns the next ticket."""
    granted = device.bus.counters["claims_granted"]
    for i in tickets:
        assert admit(device, i)[0]
        if device.bus.counters["claims_granted"] > granted:
            return i + 1
        time.sleep(0.2)
    raise AssertionError(("no claim granted", dict(device.bus.counters),
                          device.bus.get_status()))


def test_a_session_set_up_without_quorum_says_link_up_degraded_and_comes_back(
        tmp_path: Path, venue_cluster: list[NodeProcess],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # set-up tries 1 s apart at most, not 4: the story told between tries is what is checked,
    # and the session comes back at the first try after the quorum does
    monkeypatch.setattr(venue_bus, "SETUP_RETRY_S", (0.5, 1.0))
    urls = [n.url for n in venue_cluster]
    with venue_devices(tmp_path, urls, 1, 400, timeout_ms=TIMEOUT_MS) as (a,):
        nxt = admit_until_granted(a, range(0, 150))
        applied = a.bus.applied_seq
        a.bus.stop()
        for node in venue_cluster[:2]:
            node.kill()
        a.restart_bus()  # its session is set up on the one node left: JetStream cannot answer
        tries = [0]
        failed = a.bus._set_up_failed

        def counted(exc: BaseException) -> None:
            tries[0] += 1
            failed(exc)
        monkeypatch.setattr(a.bus, "_set_up_failed", counted)
        wait_until(lambda: list(venue_reasons(a)) == ["venue_degraded"], 90,
                   "the link up, the venue degraded")
        status = a.bus.get_status()
        assert status["connected"] and not a.bus.ready, status
        assert status["session_step"] != "running", status
        assert "its session is not set up" in venue_reasons(a)["venue_degraded"], status
        # decided by the offline policy ("local"): admitted, journaled as decided offline
        assert admit(a, 200)[0]
        assert a.journal_rows()[-1]["venue"] == "offline"
        seen, told = tries[0], []

        def retried() -> bool:  # the story, looked at all along, until three more set-up tries
            told.append((list(venue_reasons(a)), a.bus.connected))
            return tries[0] >= seen + 3
        wait_until(retried, 60, "three more set-up tries")
        odd = [t for t in told if t != (["venue_degraded"], True)]
        assert told and not odd, (len(told), odd[:5])
        # a few set-up retries later: still the same, true, story
        assert list(venue_reasons(a)) == ["venue_degraded"], a.bus.get_status()
        assert a.bus.connected
        for node in venue_cluster[:2]:
            node.start(wait=False)
        for node in venue_cluster[:2]:
            node.wait_healthy()
        wait_until(lambda: a.bus.ready, 90, "the session set up by itself")
        admit_until_granted(a, range(nxt, nxt + 150))
        assert "venue_degraded" not in venue_reasons(a), a.bus.get_status()
        status = a.bus.get_status()
        assert status["session_step"] == "running" and status["setup_error"] is None
        assert a.bus.stream_restarts == 0 and a.bus.applied_seq > applied  # venue.db kept
        # the offline admit reaches the venue
        offline = [r["uuid"] for r in a.journal_rows() if r["venue"] == "offline"]
        wait_until(lambda: all(a.venue_store().conn.execute(
            "SELECT 1 FROM venue_scans WHERE uuid = ?", (u,)).fetchone() for u in offline),
            30, "the offline scan on the stream")
