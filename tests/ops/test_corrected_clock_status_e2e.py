"""Status measures the age of a scan on the clock that stamped it.

While the platform shows this gate's clock to be wrong, scans are stamped with the platform's
time (agent.runtime.clock); status measured their age on the wall clock all the same. Here the
gate's clock runs 8 hours ahead of the platform's (the sandbox's clock put 8 h back), and the
platform fails every request, so a scan waits for upload: seconds old, it showed as 8 hours
old — `upload_backlog` at once, `gate_oldest_pending_age_seconds` 28800, the UploadBacklog
alert after 5 minutes. (A clock behind the platform's hid a real backlog for as many hours.)
Real daemon (a subprocess), the sandbox on loopback, a pty scanner."""

from __future__ import annotations

import re

import pytest

from agent import demo_data
from tests.faults.conftest import FaultSite, cache_items, feed, site_factory, status_or_none  # noqa: F401
from tests.rigs import wait_until

BEHIND_S = 8 * 3600
AGE = re.compile(r"^gate_oldest_pending_age_seconds (\S+)$", re.M)


@pytest.mark.e2e
def test_a_fresh_scan_on_a_corrected_clock_is_no_backlog(site_factory) -> None:  # noqa: F811
    site: FaultSite = site_factory(extra_tickets=0, rpm=600, window_s=2)
    site.sandbox.set_faults(clock_offset_s=-BEHIND_S)
    run = site.daemon()
    run.wait_ready()

    def report() -> dict:
        return status_or_none(run) or {"cache": {}, "reasons": []}

    wait_until(lambda: report().get("clock", {}).get("corrected"), 20, "the clock corrected")
    wait_until(lambda: cache_items(report()), 20, "the first sync")
    site.sandbox.set_faults(error_rate=1.0)  # every request fails: the scan stays pending
    feed(site.scanners["entry"], [demo_data.CODES["valid"]])
    run.wait_decisions(1)
    wait_until(lambda: report()["journal"].get("pending"), 10, "the scan pending")
    now = report()
    assert now["clock"]["corrected"] and now["journal"]["pending"] >= 1
    codes = {r["code"] for r in now["reasons"]}
    assert "clock_corrected" in codes
    assert "upload_backlog" not in codes, now["reasons"]
    (age,) = AGE.findall(run.get("/metrics").text)
    assert 0 <= float(age) < 600, age
    run.stop()
