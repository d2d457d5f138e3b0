"""A venue member corrects its clock as its bus session comes up, not a watchdog period later.

A member sends the platform nothing: its clock is checked against the platform's time that the
leader's heartbeat carries, by the daemon's watchdog loop (half of systemd's WatchdogSec), and a
wrong clock is corrected on the second agreeing reading. Under WatchdogSec=30 that was half a
minute after start, deciding validity windows by the wrong time meanwhile. Now the first leader
beats of each bus session are taken as they arrive (agent.venue.bus `on_leader_time`), and the
period goes on after them. Here the period is ten minutes: the correction must come from the
session, not from the watchdog. Real daemons (subprocesses), a real nats-server, the sandbox
platform 8 hours ahead of this machine's clock.
"""

from __future__ import annotations

import pytest

from agent.demo_venue import gate_config
from agent.runtime.devrun import DaemonProcess
from agent.venue.node import NodeProcess
from tests.conftest import PROJECT_ROOT
from tests.runtime.daemon.conftest import Site, site  # noqa: F401 - fixture
from tests.venue.rig import wait_until

pytestmark = pytest.mark.e2e

PERIOD_USEC = 1_200_000_000  # WatchdogSec=1200: the daemon's watchdog loop every 600 s


def test_a_member_takes_the_leaders_time_as_its_session_comes_up(
        site: Site, venue_node: NodeProcess) -> None:  # noqa: F811
    ahead_s = 8 * 3600
    site.sandbox.set_faults(clock_offset_s=ahead_s)
    site.write_config(extra_lanes=f"""
[venue]
name = "hall"
servers = ["{venue_node.url}"]
device = "daemon"
claim_timeout_ms = 300
""")
    member_config = gate_config(site.root, "member", [venue_node.url], venue="hall",
                                extra="leader = false")
    leader = site.daemon().start()
    member = DaemonProcess(member_config, site.root / "member", cwd=PROJECT_ROOT,
                           env={"WATCHDOG_USEC": str(PERIOD_USEC)}).start()
    try:
        leader.wait_ready()
        member.wait_ready()
        # a deadline far below the watchdog period: the readings come with the session
        wait_until(lambda: (member.status().get("clock") or {}).get("corrected"), 90,
                   "the member's clock corrected by the leader's heartbeat")
        clock = member.status()["clock"]
        assert clock["source"] == "venue leader" and abs(clock["offset_s"] - ahead_s) < 5
    finally:
        assert member.stop() == 0
        assert leader.stop() == 0
