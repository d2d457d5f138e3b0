"""A gate's first tickets, on a fresh install that serves every activated event (no
`events.ids`): the events come from the refresh job (`GET /activated-events`, then each event's
zones), the tickets from the delta job, which syncs the events the cache knows.

The delta job used to start 1.5 s after the daemon, on the bet that the refresh had finished by
then. On a slow link (a venue's mobile uplink, a platform answering in a second) it had not: the
first delta found no event in the empty cache, synced nothing, and the gate refused every ticket
as unknown until the next delta, `sync.delta_interval_s` later (30 s by default). Now the first
delta waits for the first refresh to end (done or failed), however long it takes.

Real daemon (subprocess), the platform sandbox on loopback with a 2 s latency on every answer.
Also the nightly full resync missed while the gate was switched off: run after the first delta.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta, timezone

from agent.core.codes import utc_iso
from agent.platform.sync import last_nightly
from agent.runtime.devrun import DaemonProcess
from tests.rigs import wait_until
from tests.runtime.daemon.conftest import Site, wait_synced


def test_the_first_tickets_follow_the_first_refresh_on_a_slow_link(site: Site) -> None:
    text = site.config.read_text()
    assert "\n[events]\nids = [" in text
    # every activated event (the demo's two), and the 30 s delta interval of the defaults
    text = text.replace("\n[events]\nids = [", "\n[events]\n# ids = [", 1)
    site.config.write_text(text.replace("delta_interval_s = 2.0", "delta_interval_s = 30.0"))
    site.sandbox.set_faults(latency_s=2.0)  # the refresh alone takes 3 answers: 6 s
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        started = time.monotonic()
        report = wait_synced(daemon, timeout=25)  # well before the second delta (30 s)
        took = time.monotonic() - started
        synced = [e for e in report["cache"]["events"] if e["items"]]
        assert synced, report["cache"]
        print(f"first tickets {took:.1f} s after ready (2 s per platform answer)")
    finally:
        assert daemon.stop() == 0


def _jobs(daemon: DaemonProcess) -> dict:
    return daemon.status()["jobs"]


def test_a_nightly_rebuild_missed_while_switched_off_runs_after_the_first_delta(
        site: Site) -> None:
    """The nightly full resync runs at `sync.full_resync_at` only while the daemon runs: a gate
    switched off at night never rebuilt its cache, and an item the platform stopped listing
    stayed admissible. At start, after the first delta, a rebuild older than the last nightly
    time runs at once; a recent one (here, a fresh install's first listing) does not."""
    at = (datetime.now() + timedelta(hours=12)).strftime("%H:%M")  # not due during the test
    text = site.config.read_text()
    site.config.write_text(text.replace("full_resync_retry_s = 1.0",
                                        f'full_resync_retry_s = 1.0\nfull_resync_at = "{at}"'))
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        wait_synced(daemon)
        wait_until(lambda: _jobs(daemon)["delta"]["runs"] >= 2, 15, "a second delta")
        assert _jobs(daemon)["full_resync"]["runs"] == 0  # nothing missed
        assert not any("was missed" in r.get("msg", "") for r in daemon.records)
    finally:
        assert daemon.stop() == 0
    two_nights_ago = utc_iso(datetime.now(UTC) - timedelta(days=2))
    with sqlite3.connect(site.store / "cache.db") as db:  # the gate was off for two nights
        db.execute("UPDATE sync_state SET last_full = ?", (two_nights_ago,))
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        daemon.wait_for(lambda r: "was missed" in r.get("msg", ""), 20, "the missed rebuild")
        wait_until(lambda: (_jobs(daemon)["full_resync"].get("last_success") is not None),
                   30, "the rebuild done")
        fulls = [e["last_full"] for e in daemon.status()["cache"]["events"] if e["items"]]
        assert fulls and min(fulls) > two_nights_ago, fulls
    finally:
        assert daemon.stop() == 0


def test_the_last_nightly_time_is_today_s_once_passed_else_yesterday_s() -> None:
    tz = timezone(timedelta(hours=1))
    assert last_nightly("04:00", datetime(2026, 12, 8, 9, 30, tzinfo=tz)) == \
        datetime(2026, 12, 8, 4, 0, tzinfo=tz)
    assert last_nightly("04:00", datetime(2026, 12, 8, 3, 59, tzinfo=tz)) == \
        datetime(2026, 12, 7, 4, 0, tzinfo=tz)
    assert last_nightly("04:00", datetime(2026, 12, 8, 4, 0, tzinfo=tz)) == \
        datetime(2026, 12, 8, 4, 0, tzinfo=tz)
