"""A gate whose clock the platform shows to be wrong decides by the platform's time.

The sandbox's clock is put 8 hours ahead of this machine's before the daemon starts: from the
gate's side, its own clock is 8 hours behind (a controller without a real-time clock that
booted at its last saved time). By the platform's time the main floor (open until the end of
the event, 6 h from now) is closed: a gate trusting its own clock would let the floor ticket in
(fail open). The daemon must refuse it `zoneClosed`, stamp the scan with the platform's time,
and say so in status (`clock_corrected`). When the platform's clock agrees with this one again
(as after NTP fixed the gate), the correction ends and the same ticket is admitted.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent import demo_data
from tests.faults.conftest import FaultSite, cache_items, feed, status_or_none
from tests.rigs import wait_until

AHEAD_S = 8 * 3600


def _reasons(site_run) -> set[str]:
    report = status_or_none(site_run) or {}
    return {r["code"] for r in report.get("reasons", [])}


@pytest.mark.e2e
def test_a_gate_clock_hours_behind_the_platform_decides_by_the_platform(site_factory) -> None:
    site: FaultSite = site_factory(extra_tickets=0, rpm=600, window_s=2)
    site.sandbox.set_faults(clock_offset_s=AHEAD_S)
    run = site.daemon()
    run.wait_ready()
    wait_until(lambda: "clock_corrected" in _reasons(run), 20, "clock_corrected in status")
    wait_until(lambda: cache_items(status_or_none(run) or {"cache": {}}), 20, "the first sync")
    report = run.status()
    assert report["clock"]["corrected"] and abs(report["clock"]["offset_s"] - AHEAD_S) < 5
    assert "clock_skew" not in _reasons(run)  # one reason for one fault

    floor = demo_data.CODES["floor"]
    feed(site.scanners["floor"], [floor])
    (first,) = run.wait_decisions(1)
    assert first["admit"] is False and first["status"] == "zoneClosed", first
    stamped = datetime.fromisoformat(first["at"].replace("Z", "+00:00"))
    assert abs((stamped - datetime.now(UTC)).total_seconds() - AHEAD_S) < 60
    (row,) = [r for r in site.journal_rows() if r["uuid"] == first["uuid"]]
    assert row["scanned_on"] == first["at"]  # journaled (and uploaded) with the platform's time

    site.sandbox.clear_faults()  # the clocks agree again
    wait_until(lambda: "clock_corrected" not in _reasons(run), 20, "the correction to end")
    feed(site.scanners["floor"], [floor])
    second = run.wait_decisions(2)[-1]
    assert second["admit"] is True and second["status"] == "valid", second
    stamped = datetime.fromisoformat(second["at"].replace("Z", "+00:00"))
    assert abs((stamped - datetime.now(UTC)).total_seconds()) < 60
    run.stop()
