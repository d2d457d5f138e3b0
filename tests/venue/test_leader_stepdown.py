"""A venue leader that lost only its platform link hands the lease over (agent.venue.stepdown).

Gate devices are real processes (tests/venue/role_child.py running `VenueRole`) on a real
nats-server; the platform is the sandbox (a real HTTP server on loopback). The "blind" gate's
`api.base_url` names a closed port on this machine: its connections are refused, as behind a
cut cable or a firewall, while its bus works."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.ops.status import evaluate
from agent.sandbox.harness import Sandbox, start_sandbox
from agent.store.journal import Journal
from agent.venue.election import connect, lease_bucket
from agent.venue.lease import LEASE_KEY, current_leader
from agent.venue.node import NodeProcess, free_ports
from tests.platform.sync.conftest import backlog, fill_journal, make_site
from tests.venue.test_venue_leader import TTL_S, Gate, _applied, venue_extra, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPDOWN_S = 2.0
HOLD_S = 5 * STEPDOWN_S  # agent.venue.stepdown.HOLD_FACTOR
SCANS = 30


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with start_sandbox(tickets=200, async_delay_s=0.02, rpm=60) as sb:
        yield sb


def _gate(root: Path, sb: Sandbox, node: NodeProcess, venue: str, name: str, blind: bool,
          rows: list[Any], revoked: bool = False) -> Gate:
    site = make_site(root / name, sb, name=name, rpm=60, extra=venue_extra(node, venue, name)
                     + f"leader_stepdown_after_s = {STEPDOWN_S}\nplatform_probe_s = 1\n")
    if blind:  # its own path to the platform is gone: a port nothing listens on
        (dead,) = free_ports(1)
        text = site.config_path.read_text().replace(sb.url, f"http://127.0.0.1:{dead}/v1")
        site.config_path.write_text(text)
    if revoked:  # the platform refuses its token (401); its connections still open
        (root / name / "token").write_text("revoked-token")
    site.config.store_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(site.config.store_dir / "journal.db")
    fill_journal(journal, rows)
    journal.close()
    return Gate(site)


@pytest.fixture
def venue(shared_venue_node: NodeProcess) -> str:
    return f"sd{int(time.time() * 1000) % 10_000_000}"


def _status(gate: Gate) -> dict[str, Any]:
    """The child's status file, read again when caught mid-write (then it reads as {})."""
    return wait_for(gate.status, 5, "a whole status file")  # type: ignore[no-any-return]


def _reasons(status: dict[str, Any]) -> dict[str, str]:
    """The reasons a gate's report would give from its role's status (agent.ops.status), by
    code: its `platform` is the role's `platform_status()`, its venue leader part the role's."""
    if not status:
        return {}
    snap = {"platform": status.get("platform_link") or {},
            "venue": {"connected": True, "leader": status}}
    _health, reasons = evaluate(snap, datetime.now(UTC), 3600)
    return {r.code: r.message for r in reasons}


def _gates(root: Path, sb: Sandbox, node: NodeProcess, venue: str, scans_each: int,
           first: tuple[str, bool], second: tuple[str, bool],
           first_revoked: bool = False) -> tuple[list[Any], list[Gate]]:
    """Two gates of the venue, each (name, blind) with `scans_each` scans of its own to
    upload: the rows of both, and the gates (not started)."""
    rows = backlog(2 * scans_each, datetime.now(UTC).replace(microsecond=0))
    return rows, [_gate(root, sb, node, venue, first[0], first[1], rows[:scans_each],
                        revoked=first_revoked),
                  _gate(root, sb, node, venue, second[0], second[1], rows[scans_each:])]


def _reasons_with(gate: Gate, code: str) -> dict[str, str] | None:
    said = _reasons(gate.status())
    return said if code in said else None


def test_blind_leader_hands_the_lease_to_a_gate_that_reaches_the_platform(
        tmp_path: Path, sandbox: Sandbox, shared_venue_node: NodeProcess, venue: str) -> None:
    rows, gates = _gates(tmp_path, sandbox, shared_venue_node, venue, SCANS,
                         ("blind", True), ("seeing", False))
    blind, seeing = gates
    try:
        blind.start()  # alone: it leads although it cannot reach the platform
        wait_for(blind.leads, 20, "the blind gate leading")
        # leading, it measures its link with its requests: the failure is a reason
        failing = wait_for(lambda: _reasons_with(blind, "platform_unreachable"), 20,
                           "the blind leader's requests failing")
        assert "network failure" in failing["platform_unreachable"]
        seeing.start()
        wait_for(lambda: seeing.status().get("platform_reachable") is True, 20,
                 "the other gate's probe")
        led_at = time.monotonic()
        wait_for(seeing.leads, 30, "the gate that reaches the platform leading")
        handed_after = time.monotonic() - led_at
        # (its status file is written every 0.2 s: the new leader's may come first, and one
        # written between the step-down's record and the lease's release shows both)
        status = wait_for(lambda: (lambda s: s if s.get("stepped_down")
                                   and not s.get("this_device_leads") else None)(blind.status()),
                          5, "the old leader's status")
        step = status["stepped_down"]
        assert step["successor"] == "seeing", step
        assert "no successful platform request" in step["why"] and "network failure" in step["why"]
        assert status["held_until"] is not None and not status["this_device_leads"]
        assert handed_after < STEPDOWN_S + 10, handed_after
        # no longer leading, it no longer measures the link by requests: their last error
        # is history, marked so, and no reason says it is the link's state now; the
        # step-down's reason says what is known now
        link = status["platform_link"]
        assert link["not_measured_since"] and link["last_error"], link
        said = _reasons(status)
        assert "platform_unreachable" not in said and "auth_failed" not in said, said
        assert "platform link now: NOT reachable" in said["leader_stepped_down"], said
        # the new leader uploads the whole venue's backlog: every scan exactly once
        want = {r.uuid for r in rows}
        wait_for(lambda: want <= set(_applied(sandbox)), 40, "every scan uploaded")
        applied = Counter(_applied(sandbox))
        assert set(applied) == want and max(applied.values()) == 1
        assert sandbox.received()["rateLimited"] == 0
        # the old leader stays out within its hold-down (its probe fails too: it never
        # takes the lease from a gate that reaches the platform)
        deadline = led_at + HOLD_S
        while time.monotonic() < deadline:
            assert not blind.leads()
            time.sleep(0.2)
        blind_status, seeing_status = _status(blind), _status(seeing)
        assert blind_status["terms_won"] == 1 and seeing_status["this_device_leads"]
        assert blind_status["platform_reachable"] is False  # its probe, as a member
        assert "127.0.0.1" in (blind_status["platform_error"] or "")
        assert seeing_status["platform_checked_by"] == "requests"
        assert seeing_status["platform_reachable"] is True
    finally:
        for gate in gates:
            gate.kill()


def test_whole_venue_offline_keeps_its_leader(
        tmp_path: Path, sandbox: Sandbox, shared_venue_node: NodeProcess, venue: str) -> None:
    _rows, gates = _gates(tmp_path, sandbox, shared_venue_node, venue, SCANS,
                          ("first", True), ("second", True))
    first, second = gates
    try:
        first.start()
        wait_for(first.leads, 20, "a leader")
        second.start()
        wait_for(lambda: second.status().get("platform_reachable") is False, 20,
                 "the other gate's probe")
        wait_for(lambda: (first.status().get("platform_reachable") is False), 20,
                 "the leader's requests failing")
        # well past the step-down time: nobody can reach the platform, so nothing moves
        deadline = time.monotonic() + 3 * STEPDOWN_S
        while time.monotonic() < deadline:
            assert not second.leads()
            time.sleep(0.2)
        status = _status(first)
        assert status["this_device_leads"]
        assert status["stepped_down"] is None and status["held_until"] is None
        assert _status(second)["terms_won"] == 0  # never led: no flapping
        assert "network failure" in (status["platform_error"] or "")
        assert _applied(sandbox) == []
    finally:
        for gate in gates:
            gate.kill()


async def _free_the_lease(url: str, venue: str) -> str | None:
    """Delete the lease (as a lost grant would leave it) and return who holds it next."""
    nc, js = await connect({"servers": [url]}, 2.0)
    try:
        kv = await lease_bucket(js, venue, TTL_S, 1)
        held = await current_leader(kv)
        assert held is not None
        await kv.delete(LEASE_KEY)
        for _ in range(100):
            await asyncio.sleep(0.1)
            after = await current_leader(kv)
            if after is not None and after.term > held.term:
                return after.holder
        return None
    finally:
        await nc.close()


def test_a_blind_gate_leaves_a_free_lease_to_one_that_reaches_the_platform(
        tmp_path: Path, sandbox: Sandbox, shared_venue_node: NodeProcess, venue: str) -> None:
    """The lease freed under a working leader: the blind member, which polls for a free lease
    more often than the leader notices it lost one, leaves it to the gate that can work."""
    _rows, gates = _gates(tmp_path, sandbox, shared_venue_node, venue, 1,
                          ("seeing", False), ("blind", True))
    seeing, blind = gates
    try:
        seeing.start()
        wait_for(lambda: seeing.leads() and seeing.status().get("platform_reachable"), 30,
                 "the seeing gate leading, its requests answered")
        blind.start()
        wait_for(lambda: blind.status().get("reachable_successor") == "seeing", 20,
                 "the blind gate knowing who can reach the platform")
        holders = [asyncio.run(_free_the_lease(shared_venue_node.url, venue))
                   for _ in range(5)]
        assert holders == ["seeing"] * 5, holders
        assert _status(blind)["terms_won"] == 0
    finally:
        for gate in gates:
            gate.kill()


def test_leader_with_a_revoked_token_stays_out_for_its_hold_down(
        tmp_path: Path, sandbox: Sandbox, shared_venue_node: NodeProcess, venue: str) -> None:
    """Refused by the platform (401) although its connections open: its probe says
    "reachable", so only the hold-down keeps it from taking a free lease straight back."""
    rows, gates = _gates(tmp_path, sandbox, shared_venue_node, venue, 1,
                         ("revoked", False), ("seeing", False), first_revoked=True)
    revoked, seeing = gates
    try:
        revoked.start()
        wait_for(revoked.leads, 20, "the revoked gate leading")
        seeing.start()
        wait_for(seeing.leads, 30, "the gate whose token works leading")
        step = wait_for(lambda: revoked.status().get("stepped_down"), 5, "its status")
        assert step["successor"] == "seeing" and "401" in step["why"], step
        wait_for(lambda: revoked.status().get("platform_reachable") is True, 10,
                 "the revoked gate's own probe (its connections open)")
        handed_at = time.monotonic()
        holders = [asyncio.run(_free_the_lease(shared_venue_node.url, venue))
                   for _ in range(5)]
        assert holders == ["seeing"] * 5, holders
        assert _status(revoked)["terms_won"] == 1
        want = {r.uuid for r in rows}
        wait_for(lambda: want <= set(_applied(sandbox)), 30, "both gates' scans uploaded")
        # its successor dies: a gate whose connections open is better than no leader at all,
        # hold-down or not (alone, it cannot hand the lease to anyone: it keeps it)
        seeing.kill()
        wait_for(revoked.leads, 10, "the held gate taking the lease of a venue without one")
        assert time.monotonic() - handed_at < HOLD_S, "only after its hold-down"
        assert _status(revoked)["held_until"] is not None
    finally:
        for gate in gates:
            gate.kill()
