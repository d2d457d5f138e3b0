"""Round one's daemon end-to-end tests, run again with `[venue]` configured, so the venue mode
cannot silently break admit/refuse, exits, reload, shutdown, a broken reader, a damaged cache
or the status format. One nats-server for the whole module (each test its own venue name, so
its own stream); the real daemon as a subprocess, a pty scanner, the sandbox on loopback.

And the one reload rule the venue adds: changing `[venue]` needs a restart; SIGHUP says so and
keeps the running bus settings while the rest of the reload applies.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable

import pytest

from agent import demo_data
from agent.venue.node import NodeProcess
from drivers.sim import send_scan
from tests.runtime.daemon import test_e2e as round_one
from tests.runtime.daemon.conftest import Site, wait_synced
from tests.runtime.daemon.conftest import site as round_one_site  # noqa: F401 - fixture
from tests.venue.rig import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

C = demo_data.CODES
_names = itertools.count(1)

ROUND_ONE: list[Callable[[Site], None]] = [
    round_one.test_scans_decide_pulse_upload_and_report,
    round_one.test_sighup_reloads_lanes_without_dropping_scans,
    round_one.test_broken_reader_makes_healthz_fail_with_reason,
    round_one.test_damaged_cache_starts_degraded_and_rebuilds,
]


def venue_section(url: str, name: str, timeout_ms: int = 300) -> str:
    return f"""
[venue]
name = "{name}"
servers = ["{url}"]
device = "daemon"
claim_timeout_ms = {timeout_ms}
"""


@pytest.fixture
def venue_site(round_one_site: Site, shared_venue_node: NodeProcess) -> Site:  # noqa: F811
    round_one_site.extra_sections = venue_section(shared_venue_node.url, f"r1hall{next(_names)}")
    round_one_site.write_config()
    return round_one_site


@pytest.mark.parametrize("round_one_test", ROUND_ONE, ids=lambda t: t.__name__[5:])
def test_round_one_with_a_venue(venue_site: Site, round_one_test: Callable[[Site], None]) -> None:
    round_one_test(venue_site)
    assert "[venue]" in venue_site.config.read_text()  # still configured at the end


def test_sighup_with_a_changed_venue_keeps_the_running_bus(
        round_one_site: Site, venue_node: NodeProcess) -> None:  # noqa: F811
    """Its own node: the test stops it to see which offline policy a lane started by the
    reload follows (the running one, `local`, not the file's new `refuse`)."""
    site = round_one_site
    site.extra_sections = venue_section(venue_node.url, "hall")
    site.write_config()
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        wait_synced(daemon)
        wait_until(lambda: daemon.status()["venue"]["ready"], 10, "on the bus")
        # [venue] changed (name, timeout, policy) and a lane added, which the reload applies
        site.extra_sections = venue_section(venue_node.url, "elsewhere", 900) + \
            'offline_policy = "refuse"\n'
        site.write_config(extra_lanes=f"""
[[lanes]]
name = "side"
gate_id = {demo_data.GATE_NORTH}
direction = "in"
readers = ["sim:side?socket={site.root / 'side.sock'}"]
""")
        daemon.signal(signal.SIGHUP)
        warning = daemon.wait_for(lambda r: "[venue] changed" in r.get("msg", ""), 10,
                                  "the venue warning")
        assert warning["level"] == "warning" and "next restart" in warning["msg"]
        daemon.wait_for(lambda r: "configuration reloaded" in r.get("msg", ""), 10, "reload")
        venue = daemon.status()["venue"]
        assert venue["venue"] == "hall" and venue["connected"]  # the running bus settings
        site.scanner.write(C["valid"].encode() + b"\r\n")
        assert daemon.wait_decisions(1)[0]["status"] == "valid"
        wait_until(lambda: daemon.status()["venue"]["claims_granted"] == 1, 10,
                   "the claim on the running venue's stream")
        venue_node.kill()
        wait_until(lambda: not daemon.status()["venue"]["connected"], 10, "bus gone")
        send_scan(site.root / "side.sock", C["valid2"])
        side = daemon.wait_for(lambda r: r.get("lane") == "side", 10, "the new lane's scan")
        assert (side["admit"], side["status"]) == (True, "valid")  # policy local, as running
    finally:
        code = daemon.stop()
        assert code == 0, "".join(daemon.raw_lines[-30:])
