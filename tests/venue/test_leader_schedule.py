"""When the venue leader runs round one's daily full pass (`sync.full_resync_at`, local time)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.core.codes import utc_iso
from agent.sandbox.harness import start_sandbox
from agent.venue.leader_sync import LeaderSync, next_daily
from agent.venue.lease import NotLeader
from tests.platform.sync.conftest import Site, cached_ids, make_site
from tests.platform.sync.test_sync_passes import first_fill


def test_next_daily_is_the_next_local_time_of_day() -> None:
    base = datetime(2026, 12, 6, 3, 59, 30).astimezone()
    at = datetime.fromtimestamp(next_daily("04:00", base.timestamp())).astimezone()
    assert (at.hour, at.minute, at.date()) == (4, 0, base.date())
    after = base + timedelta(minutes=1)  # 04:00:30: today's is past, tomorrow's is next
    at = datetime.fromtimestamp(next_daily("04:00", after.timestamp())).astimezone()
    assert (at.hour, at.minute, at.date()) == (4, 0, (base + timedelta(days=1)).date())
    exactly = base.replace(hour=4, minute=0, second=0)
    assert next_daily("04:00", exactly.timestamp()) > exactly.timestamp()  # never twice


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with start_sandbox(tickets=1200, async_delay_s=0.02, rpm=1000) as sb:
        yield make_site(tmp_path / "leader", sb, rpm=1000)


def _lead(site: Site, after_first_delta_s: float) -> list[str]:
    """LeaderSync.run on a real Syncer (no bus: nothing here publishes) until a full pass has
    run or `after_first_delta_s` passed since its first delta; the passes it ran, in order."""
    ran: list[str] = []

    async def go() -> None:
        async with site.client() as client:
            syncer = site.syncer(client)
            full_in_place, delta_all = syncer.full_in_place, syncer.delta_all

            async def full() -> int:
                ran.append("full")
                return await full_in_place()

            async def delta() -> int:
                ran.append("delta")
                return await delta_all()

            syncer.full_in_place, syncer.delta_all = full, delta  # type: ignore[method-assign]
            counters = {"leader_errors": 0}
            leading = asyncio.create_task(
                LeaderSync(site.config, "venue", "gate-a", counters).run(syncer))
            try:
                while "delta" not in ran:
                    assert not leading.done() and len(ran) < 5, ran
                    await asyncio.sleep(0.05)
                deadline = time.monotonic() + after_first_delta_s
                while time.monotonic() < deadline and "full" not in ran:
                    await asyncio.sleep(0.05)
                while syncer.progress.phase not in ("idle",):  # a pass ends before the test
                    await asyncio.sleep(0.05)
                assert counters["leader_errors"] == 0 and not leading.done()
            finally:
                leading.cancel()
                with contextlib.suppress(asyncio.CancelledError, NotLeader):
                    await leading
                syncer.close()

    asyncio.run(go())
    return ran


def test_a_daily_full_pass_missed_while_nobody_led_runs_after_the_first_delta(
        site: Site) -> None:
    """The leader's daily full pass runs at `sync.full_resync_at` only while a leader runs: a
    venue switched off at night never ran it. A new leader whose cache's last full pass (its
    own, or the catalog's) is older than the last nightly time runs it after its first delta;
    with a recent one it waits for the next nightly time."""
    async def fill() -> None:
        async with site.client() as client:
            await first_fill(site, client)

    asyncio.run(fill())
    assert _lead(site, 3.0) == ["delta"]  # the first listing was a full one: nothing missed
    with sqlite3.connect(site.cache_path) as db:
        db.execute("UPDATE sync_state SET last_full = ?",
                   (utc_iso(datetime.now(UTC) - timedelta(days=2)),))
    ran = _lead(site, 10.0)
    assert ran == ["delta", "full"], ran
    assert len(cached_ids(site.cache_path)) == 1140
