"""The daemon's hourly prune job runs: it drops sent scans past `store.sent_retention_days`
and counted passages older than the retention (at least two counting days).

It read the retention from `[sync]` instead of `[store]` and failed with a KeyError every hour,
so every gate showed `job_failing` a minute after start, and people-count rows grew for good;
nothing ran the job itself. Here the real job runs against the demo site's real journal."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from agent.core.codes import utc_iso
from agent.runtime.daemon import Daemon
from tests.conftest import DemoSite


def test_the_prune_job_runs_and_drops_old_counted_passages(site: DemoSite) -> None:
    d = Daemon(site.config)
    d.open_stores()
    try:
        d.setup_platform(token="not-used-here")  # the job needs the uploader; no request is made
        events = d.lane_event_log()
        assert events is not None
        now = datetime.now(UTC)
        retention = max(2, site.config.store["sent_retention_days"])
        old = utc_iso(now - timedelta(days=retention, hours=1))
        recent = utc_iso(now - timedelta(hours=1))
        events.count_person(old, "north-in", "in", "9001")
        events.count_person(recent, "north-in", "in", "9001")
        asyncio.run(d._prune_job())
        kept = [r[0] for r in events.conn.execute(
            "SELECT at FROM lane_events WHERE kind IN ('people_in', 'people_out')")]
        assert kept == [recent]
    finally:
        d.close_stores()
