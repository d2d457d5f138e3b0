"""When the venue leader runs round one's daily full pass (`sync.full_resync_at`, local time)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.config import Config
from agent.core.codes import utc_iso
from agent.platform.sync import Syncer
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


def _lead(site: Site, after_first_delta_s: float, config: Config | None = None) -> list[str]:
    """LeaderSync.run on a real Syncer (no bus: nothing here publishes) until a full pass has
    ended or `after_first_delta_s` passed since its first delta without one starting; the
    passes it ran, in order ("full" at its start, "full done" at its end)."""
    ran: list[str] = []
    config = config or site.config

    async def go() -> None:
        async with site.client() as client:
            syncer = Syncer(config, client, site.cache_path)
            full_in_place, delta_all = syncer.full_in_place, syncer.delta_all

            async def full() -> int:
                ran.append("full")
                try:
                    return await full_in_place()
                finally:
                    ran.append("full done")

            async def delta() -> int:
                ran.append("delta")
                return await delta_all()

            syncer.full_in_place, syncer.delta_all = full, delta  # type: ignore[method-assign]
            counters = {"leader_errors": 0}
            leading = asyncio.create_task(
                LeaderSync(config, "venue", "gate-a", counters).run(syncer))
            try:
                while "delta" not in ran:
                    assert not leading.done() and len(ran) < 5, ran
                    await asyncio.sleep(0.05)
                deadline = time.monotonic() + after_first_delta_s
                while "full done" not in ran and ("full" in ran or time.monotonic() < deadline):
                    assert not leading.done(), leading
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
    assert ran[:2] == ["delta", "full"] and ran[-1] == "full done", ran
    assert len(cached_ids(site.cache_path)) == 1140


def test_the_venue_deltas_go_on_while_the_daily_full_pass_lists(site: Site) -> None:
    """The daily full pass is a task of its own beside the leader's loop: with pages that take
    1.5 s each, the loop's deltas (every 0.5 s here) run while it lists, not after it. (Until
    session 18 the loop awaited the pass: at 1M items ~17 minutes without a delta anywhere in
    the venue.)"""
    async def fill() -> None:
        async with site.client() as client:
            await first_fill(site, client)

    asyncio.run(fill())
    with sqlite3.connect(site.cache_path) as db:  # missed: runs after the first delta
        db.execute("UPDATE sync_state SET last_full = ?",
                   (utc_iso(datetime.now(UTC) - timedelta(days=2)),))
    site.sandbox.set_faults(async_delay_s=1.5)
    config = dataclasses.replace(site.config,
                                 sync={**site.config.sync, "delta_interval_s": 0.5})
    ran = _lead(site, 10.0, config)
    during = ran[ran.index("full") + 1:ran.index("full done")]
    assert ran[0] == "delta" and during.count("delta") >= 2, ran
    assert len(cached_ids(site.cache_path)) == 1140
