"""The running gate's ticket cache: a rebuilt file swapped in under the lanes, the lanes' and
status's connections reloaded after a sync, and a cache that fails while running rebuilt once.

Apart from agent.runtime.daemon because this is the one place that replaces the cache every
lane reads: it takes the lanes' locks, so it must stay short and be read as a whole (the
hot path waits on it). Opening the cache at start is agent.runtime.storestart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from agent.access import store_write_failure
from agent.errors import CacheNotAccessible

if TYPE_CHECKING:
    from agent.runtime.daemon import Daemon

log = logging.getLogger("gate_agent.daemon")


class SwapHold:
    """Keeps the connections control commands open to cache.db for themselves (`gate-agent
    scan`, `check`, `import`, `pair-tag` through the daemon: `using()` for as long as one is
    open) apart from the rename of a rebuilt cache over it (`swapping()`, around
    `swap_cache`). The swap closes and reopens the lanes' and status's connections itself;
    these it cannot, and one left open across the rename kept reading the replaced, unlinked
    file, and what it wrote there (a paired tag, an imported file) was lost while the command
    answered it done. The swap waits for the open ones to close and holds new ones back
    until it is over. Used on the daemon's loop only: both sides wait without stalling it."""

    def __init__(self) -> None:
        self.users = 0
        self.swapping_now = False
        self._waiters: list[asyncio.Future[None]] = []

    async def _changed(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    @asynccontextmanager
    async def using(self) -> AsyncIterator[None]:
        while self.swapping_now:
            await self._changed()
        self.users += 1
        try:
            yield
        finally:
            self.users -= 1
            self._wake()

    @asynccontextmanager
    async def swapping(self) -> AsyncIterator[None]:
        while self.swapping_now:
            await self._changed()
        self.swapping_now = True
        try:
            while self.users:
                await self._changed()
            yield
        finally:
            self.swapping_now = False
            self._wake()


def swap_cache(d: Daemon, do_swap: Any) -> None:
    """Close every connection to the live cache, rename the new file in, reopen.

    The lanes wait (their locks) only for closing, the rename and reopening: the rebuilt
    file's integrity check ran before (`Syncer.full_resync`), so it is not repeated per
    connection here — on 1M items that was seconds without a decision."""
    runners = list(d.lanes.values())
    for runner in runners:
        runner.lock.acquire()
    try:
        for runner in runners:
            runner.gate.cache.close()
        if d.status_cache:
            d.status_cache.close()
        try:
            do_swap()
            # The file is now the rebuilt, checked cache: a gate that ran on an in-memory
            # one (store.dir was not writable at start) takes it, and recovers by itself.
            d.cache_in_memory = False
        except OSError as exc:  # store.dir or cache.db refused the rename: not damage
            raise CacheNotAccessible("the rebuilt ticket cache was not swapped in: "
                                     + store_write_failure(d.cache_path, exc)) from exc
        finally:  # swapped or not (then on the file they had), the lanes read a cache
            for runner in runners:
                runner.gate.cache = d._open_cache(check=False)
            d.status_cache = d._open_cache(check=False)
    finally:
        for runner in runners:
            runner.lock.release()
    log.info("ticket cache rebuilt and swapped in")


def reload_lane_caches(d: Daemon) -> None:
    for runner in d.lanes.values():
        with runner.lock:
            runner.gate.cache.reload()
    if d.status_cache:
        d.status_cache.reload()


def catalog_changed(d: Daemon) -> None:
    """Venue mode: the leader's sync results were applied to the cache from the bus."""
    reload_lane_caches(d)
    d.cache_degraded = None


def cache_failed(d: Daemon, error: str | None) -> None:
    """A read of the running cache failed (a lane refused a scan with cacheUnavailable, or
    status could not read it): rebuild it once, as a damaged cache at start is. Thread-safe:
    the work is done on the loop; nothing without one (no jobs to run it)."""
    if d._loop is not None:
        d._loop.call_soon_threadsafe(d._rebuild_failed_cache, error)


def rebuild_failed_cache(d: Daemon, error: str | None) -> None:
    error = error or "a read of the ticket cache failed"
    if d.cache_degraded or d.cache_in_memory:
        return  # a rebuild is already due (or said to be impossible), or nothing on disk
    if d.syncer is None or d.role is not None:  # no platform jobs of this gate
        source = "the venue catalog" if d.role is not None else \
            "`gate-agent sync --full` or `gate-agent import`"
        d.cache_degraded = (f"the cache failed while running ({error}); restart the "
                            f"service: it is moved aside and refilled from {source}")
        log.error("%s", d.cache_degraded)
        return
    d.cache_degraded = f"the cache failed while running ({error}); rebuilding"
    log.error("%s", d.cache_degraded)
    schedule_rebuild(d)


def schedule_rebuild(d: Daemon) -> None:
    """The one-shot full resync of a damaged cache (at start, or failed while running),
    tried again after sync.full_resync_retry_s (doubling) until it succeeds."""
    d.jobs.add_once("initial_resync", d._full_job, first_in=0.5,
                    retry_s=d.config.sync["full_resync_retry_s"])
