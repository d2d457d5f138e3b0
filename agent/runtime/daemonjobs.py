"""The daemon's scheduled work: which jobs run and when (ticket sync, upload, prune, the
retries of a store that could not be opened at start), and the jobs' bodies.

Apart from agent.runtime.daemon because the schedule is one decision to read whole — what
runs in venue mode and what not, what a damaged cache adds — and the bodies are short calls
into agent.platform and agent.store. The scheduler itself is agent.runtime.scheduler.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from agent.core.codes import utc_iso
from agent.errors import CacheCorrupt, CacheNotAccessible, JournalUnavailable
from agent.runtime import cachecare, storestart, venuewiring
from agent.runtime.storeaccess import not_mine
from agent.store.cache import TicketCache
from agent.store.journal import Journal

if TYPE_CHECKING:
    from agent.runtime.daemon import Daemon

log = logging.getLogger("gate_agent.daemon")

CACHE_ACCESS_RETRY_S = 10.0  # how often a cache.db not openable for its access is tried again


def schedule(d: Daemon, resync_now: bool) -> None:
    add_platform_jobs(d, resync_now)
    if d.cache_unreadable:
        d.jobs.add_interval("cache_access", lambda: cache_access_job(d),
                            CACHE_ACCESS_RETRY_S, first_in=CACHE_ACCESS_RETRY_S)
    if d.journal_error:
        d.jobs.add_interval("journal_access", lambda: journal_access_job(d),
                            d.store_retry_s, first_in=d.store_retry_s)
    venuewiring.retry_venue_db(d)
    d.jobs.start()


def add_platform_jobs(d: Daemon, resync_now: bool) -> None:
    s = d.config.sync
    add_journal_jobs(d)
    if d.role is not None:
        return  # no ticket-list request and no upload of its own: see VenueRole
    if d.syncer is not None:
        d.jobs.add_interval("refresh", lambda: refresh_job(d), s["refresh_interval_s"],
                            first_in=0.2)
        # its first run follows the first refresh's end (refresh_job), not a set time
        d.jobs.add_interval("delta", lambda: delta_job(d), s["delta_interval_s"],
                            first_in=s["delta_interval_s"])
        # A failed full resync is tried again soon (sync.full_resync_retry_s, doubling),
        # not the next night: after a damaged cache the gate has no tickets until it works.
        d.jobs.add_daily("full_resync", lambda: full_job(d), s["full_resync_at"],
                         retry_s=s["full_resync_retry_s"])
        if resync_now:
            cachecare.schedule_rebuild(d)


def add_journal_jobs(d: Daemon) -> None:
    """Upload (not in venue mode: the leader uploads) and prune, with an uploader only."""
    if d.uploader is None:
        return
    if d.role is None:
        d.jobs.add_interval("upload", lambda: upload_job(d),
                            d.config.sync["upload_interval_s"], first_in=1)
    d.jobs.add_interval("prune", lambda: prune_job(d), 3600, first_in=60)


async def upload_job(d: Daemon) -> None:
    assert d.uploader is not None
    await d.uploader.upload_round()


async def prune_job(d: Daemon) -> None:
    assert d.uploader is not None
    now = datetime.now(UTC)
    await asyncio.to_thread(d.uploader.prune, now)
    events = d.lane_event_log()
    if events is not None:  # the counting day is at most 24 h old: keep two at least
        days = max(2, d.config.store["sent_retention_days"])
        await asyncio.to_thread(events.prune_people, utc_iso(now - timedelta(days=days)))


async def refresh_job(d: Daemon) -> None:
    """Events and zones. Its first run, done or failed, brings the delta forward: the delta
    syncs the events the cache knows, which on a fresh install serving every activated event
    (no `events.ids`) are the ones this refresh writes. The delta used to start 1.5 s after
    the daemon on the bet that the refresh was done by then; on a slow link it was not, the
    first delta synced nothing, and every ticket was refused as unknown until the next delta,
    `sync.delta_interval_s` later (tests/runtime/daemon/test_first_sync.py)."""
    assert d.syncer is not None
    first = d.jobs.first_run("refresh")
    try:
        await d.syncer.refresh_events()
        cachecare.reload_lane_caches(d)
    finally:
        if first:
            d.jobs.run_now("delta")


async def delta_job(d: Daemon) -> None:
    """A delta pass of every served event. After its first run (done or failed), the nightly
    full resync runs at once if it was missed (`run_missed_rebuild`)."""
    assert d.syncer is not None
    if d.cache_degraded:
        return  # the full resync fills the cache first
    first = d.jobs.first_run("delta")
    try:
        await d.syncer.delta_all()
    finally:
        task = asyncio.current_task()
        if first and not (task is not None and task.cancelling()):  # not when stopping
            await run_missed_rebuild(d)


async def run_missed_rebuild(d: Daemon) -> None:
    """The nightly full resync runs at its time of day only while the daemon runs: a gate
    switched off at night (or restarted after its nightly run failed) never rebuilt its cache,
    and items the platform no longer lists (a delta never names them) stayed admissible. At
    start, once the first delta has brought the cache up to date, a rebuild whose last run on
    record is older than the last nightly time runs at once (the `full_resync` job itself, so
    its retries and `cache_not_rebuilt` apply); deltas go on beside it (agent.platform.sync)."""
    assert d.syncer is not None
    if await d.syncer.rebuild_missed() is not None:
        d.jobs.run_now("full_resync")


async def full_job(d: Daemon) -> None:
    assert d.syncer is not None
    await d.syncer.full_resync()
    d.cache_degraded = None
    for runner in d.lanes.values():  # their failed reads were of the file replaced
        runner.gate.cache_error = None


async def cache_access_job(d: Daemon) -> None:
    """cache.db could not be opened at start for its access or a full disk, not damage
    (`cache_unreadable`: kept, the gate on an empty cache): tried again until it opens,
    then every lane reads it — no restart, no rebuild."""
    if not d.cache_unreadable:
        return
    try:
        found = await asyncio.to_thread(
            TicketCache, d.cache_path,
            keep_personal_data=d.config.store["keep_personal_data"])
    except (CacheCorrupt, CacheNotAccessible) as exc:
        d.cache_unreadable = str(exc)  # still (or now) why: status keeps saying it
        return
    found.close()
    d.cache_in_memory = False
    d._swap_cache(lambda: None)  # the lanes' connections now on the file
    d.cache_unreadable = None
    log.warning("ticket cache %s can be opened again: the lanes read it", d.cache_path)


async def journal_access_job(d: Daemon) -> None:
    """journal.db could not be opened at start (`journal_unavailable`; kept as it is,
    never made anew): tried again until it opens, then the uploader, the venue role and
    bus and every lane take it — no restart."""
    if not d.journal_error:
        return
    try:
        journal = await asyncio.to_thread(Journal, d.journal_path)
    except JournalUnavailable as exc:
        d.journal_error = not_mine(d.journal_path) or str(exc)
        return
    d.journal, d.journal_error = storestart.settled(journal), None
    log.warning("scan journal %s can be opened again: the lanes record scans",
                d.journal_path)
    d._start_uploader()
    add_journal_jobs(d)
    if d.bus is not None:  # it ran without the journal: again with it
        bus, d.bus = d.bus, None
        if d._beats is not None:
            d._beats.cancel()
            d._beats = None
        await asyncio.to_thread(bus.stop)
        venuewiring.start_venue(d)
        venuewiring.start_heartbeats(d)
    venuewiring.start_role(d)
    d._restart_lanes()


def maybe_upload_now(d: Daemon) -> None:
    """A lane recorded a scan: upload at once when a full batch waits (not at the next
    upload_interval_s)."""
    if d.journal is None:
        return
    batch = d.config.sync["upload_batch_size"]
    if d.journal.pending_count(at_most=batch) >= batch:
        d.jobs.run_now("upload")
