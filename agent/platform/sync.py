"""Keeping the ticket cache current: events, zones, and tickets by delta or full resync.

A pass over one event's tickets fetches pages of `GET /entry/tickets?includeZones=true` and
applies each page in one transaction. Resumability without loss or duplication:
- items are keyed by (event, id) and written with INSERT OR REPLACE, so applying a page twice
  changes nothing;
- with each page, in the same transaction, the pass records where it stands (`pending_cursor`
  = the next page's URL); an interrupted pass continues from there;
- the delta cursor (the pass's `listEndTime`) is stored only after the last page is applied, so
  a pass that never finished is redone from the previous cursor, never skipped.

A full resync builds a new cache file beside the live one while the gate keeps deciding on the
old file, then swaps it in with one rename (`swap_in`): a reader sees the old cache or the new
one, never half. A crash mid-build leaves `cache.db.new`, which the next start deletes and
rebuilds.

SQLite work happens in a worker thread with its own connection (`workers.in_thread`), so a
slow disk during sync never stalls the lanes on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from agent.config import Config
from agent.core.codes import epoch_iso, utc_iso
from agent.core.model import EntryPage, Event, Zone
from agent.errors import ApiError, BadResponse, NotFound, Validation
from agent.files import fsync_dir
from agent.platform.client import PlatformClient
from agent.platform.workers import in_thread
from agent.store.cache import TicketCache

log = logging.getLogger(__name__)

FULL_PAGE = 1000  # async mode allows 1000 items per page
DELTA_PAGE = 100


@dataclass
class SyncProgress:
    """What a running or finished pass reports to the CLI's progress bar and to status."""

    phase: str = "idle"  # idle | events | zones | tickets | full | swapping
    event_id: int | None = None
    pages: int = 0
    items: int = 0
    total: int | None = None
    requests: int = 0
    started: float | None = None
    finished: float | None = None
    last_error: str | None = None
    last_success: dict[int, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "event_id": self.event_id, "pages": self.pages,
                "items": self.items, "total": self.total, "requests": self.requests,
                "started": epoch_iso(self.started), "finished": epoch_iso(self.finished),
                "last_error": self.last_error,
                "last_success": {str(k): epoch_iso(v) for k, v in self.last_success.items()}}


ProgressHook = Callable[[SyncProgress], None]


class SyncObserver(Protocol):
    """Told what a pass wrote, after it is in this device's cache (the venue leader publishes
    it on the bus: agent.venue.catalog). An exception stops the pass, as a failed write would."""

    async def events(self, events: list[Event]) -> None: ...

    async def zones(self, event_id: int, zones: list[Zone]) -> None: ...

    async def page(self, event_id: int, page: EntryPage) -> None: ...

    async def removed(self, event_id: int, item_ids: list[int]) -> None: ...

    async def pass_done(self, event_id: int, end_time: str | None, full: bool) -> None: ...


class Syncer:
    """Sync jobs for one device. `cache_path` is the live cache file (`<store>/cache.db`)."""

    def __init__(self, config: Config, client: PlatformClient, cache_path: Path,
                 on_progress: ProgressHook | None = None,
                 swap_hook: Callable[[Callable[[], None]], None] | None = None,
                 observer: SyncObserver | None = None,
                 swap_guard: Callable[[], AbstractAsyncContextManager[None]] | None = None):
        """`swap_hook(do_swap)` lets the owner of other connections to the live cache close them
        before the rename and reopen after; by default the swap just happens. `swap_guard()` is
        entered (awaited) around the swap: the daemon's waits there until no connection it
        cannot close itself is open (agent.runtime.cachecare.SwapHold). `observer` is told
        every write of a pass (the venue leader's fan-out)."""
        self.observer = observer
        self.swap_hook = swap_hook or (lambda do_swap: do_swap())
        self.swap_guard = swap_guard or contextlib.nullcontext
        self.config = config
        self.client = client
        self.cache_path = Path(cache_path)
        self.progress = SyncProgress()
        # What a pass on the live cache reports while a full resync builds (the delta job's):
        # status and `sync --full`'s bar keep showing the rebuild in `progress` (`_mine`).
        self.beside = SyncProgress()
        # `on_progress`, and hooks each added and removed by its owner (the daemon's `sync`
        # commands: agent.runtime.controlops)
        self.listeners: list[ProgressHook] = [on_progress] if on_progress else []
        self._writer: TicketCache | None = None
        self._lock = asyncio.Lock()  # one pass on the live cache at a time; a swap never races one
        # One full pass at a time (a rebuild, or the venue leader's in place); other passes run
        # beside it, and `_full_task` is the one listing now.
        self._full_lock = asyncio.Lock()
        self._full_task: asyncio.Task[Any] | None = None

    def _cache(self) -> TicketCache:
        if self._writer is None:
            self._writer = TicketCache(self.cache_path,
                                       keep_personal_data=self.config.store["keep_personal_data"],
                                       check=False)
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _step_lock(self, stepwise: bool) -> AbstractAsyncContextManager[Any]:
        """The live lock for one step of a `stepwise` pass (the venue leader's full pass in
        place, which lets other passes run between its pages); otherwise the caller already
        holds it for the whole pass, and this takes nothing."""
        return self._lock if stepwise else contextlib.nullcontext()

    def _mine(self) -> SyncProgress:
        """The progress the running pass reports to: `progress` (status's), or `beside` for a
        pass on the live cache while a full pass lists (a rebuild, or the venue leader's in
        place), so that status does not flip to that delta and to idle under a full pass that
        is still running. Every pass still
        stamps `progress.last_success`, and every request is counted in `progress.requests`."""
        if self._full_task is not None and asyncio.current_task() is not self._full_task:
            return self.beside
        return self.progress

    def _report(self, **changes: Any) -> None:
        mine = self._mine()
        for key, value in changes.items():
            setattr(mine, key, value)
        mine.requests = self.progress.requests
        for listener in list(self.listeners):
            listener(mine)

    # -- events and zones -------------------------------------------------------------------

    async def event_ids(self) -> list[int]:
        """Configured ids, or every activated event; cached events serve when offline."""
        configured = self.config.event_ids
        return configured if configured is not None else [e.id for e in self._cache().events()]

    async def refresh_events(self) -> list[int]:
        """`GET /activated-events` then `GET /zones/all` per served event; returns their ids."""
        async with self._lock:
            self._report(phase="events", started=time.time(), last_error=None)
            ids = await self._refresh_into(self._cache())
            self._report(phase="idle", finished=time.time())
            return ids

    async def _refresh_into(self, cache: TicketCache) -> list[int]:
        """Events and their zones into `cache`. Configured events get their zones refreshed
        even when the platform does not list them as activated (yet)."""
        events = await self.client.activated_events()
        self.progress.requests += 1
        configured = self.config.event_ids
        served = [e for e in events if configured is None or e.id in configured]
        stamp = utc_iso(datetime.now(UTC))
        await in_thread(_write, cache, partial(cache.put_events, served, stamp))
        if self.observer is not None:
            await self.observer.events(served)
        ids = [e.id for e in served] if configured is None else list(configured)
        for event_id in ids:
            self._report(phase="zones", event_id=event_id)
            zones = await self.client.zones(event_id)
            self.progress.requests += 1
            await in_thread(_write, cache, partial(cache.put_zones, event_id, zones, stamp))
            if self.observer is not None:
                await self.observer.zones(event_id, zones)
        return ids

    # -- tickets ------------------------------------------------------------------------------

    async def sync_tickets(self, event_id: int, *, full: bool = False) -> int:
        """One pass for one event: delta from the stored cursor, or everything (`full`)."""
        async with self._lock:
            return await self._pass(self._cache(), event_id, full=full)

    async def full_in_place(self) -> int:
        """The venue leader's daily full pass: events, zones and every event's whole listing
        into the live cache, items no longer listed removed. No file swap (the gates follow
        the same pass from the bus, agent.venue.catalog; the leader's other connections to the
        live cache stay valid). Returns the items the listings applied.

        Deltas and refreshes run beside it (the leader's loop goes on): at 1M items the
        listing spends ~17 minutes on the rate limit, and holding the venue's deltas back for
        that long left every gate deciding on tickets that had stopped changing (a refund
        admitted, a box-office sale refused). It takes the live lock page by page (`stepwise`):
        each page is fetched, applied and published under it, so writes land in the order
        they were listed, and a page never overwrites what a later delta brought. At each
        event's end, under the lock, it catches up (a delta from the listing's cursor) and
        removes the items neither the listing nor the catch-up names: an item a delta wrote
        meanwhile stays when the platform still lists it, and goes when it no longer does."""
        async with self._full_lock:
            self._full_task = asyncio.current_task()
            try:
                async with self._lock:
                    cache = self._cache()
                    self._report(phase="events", started=time.time(), last_error=None)
                    ids = await self._refresh_into(cache)
                total = 0
                for event_id in ids:
                    total += await self._pass(cache, event_id, full=True, replace=True,
                                              stepwise=True)
                return total
            finally:
                self._full_task = None

    async def _pass(self, cache: TicketCache, event_id: int, *, full: bool,
                    replace: bool = False, stepwise: bool = False,
                    seen: set[int] | None = None) -> int:
        """One listing of one event into `cache`. The caller holds the live lock, unless
        `stepwise` (the leader's full pass in place: `_run_pass` takes it page by page)."""
        async with self._step_lock(stepwise):
            state = await in_thread(cache.sync_state, event_id) or {}
        cursor = None if full else state.get("cursor")
        resume = state.get("pending_cursor")
        if resume and full and _link_is_delta(resume):
            # A full pass must list everything: finishing an interrupted delta is not that.
            resume = None
        if resume and not full and not _link_is_delta(resume) and \
                self._full_task not in (None, asyncio.current_task()):
            # The full pass listing beside this delta stored that link: its own next page, not
            # an interrupted pass for this delta to finish.
            resume = None
        try:
            return await self._run_pass(cache, event_id, cursor, resume,
                                        state.get("pending_end") if resume else None,
                                        replace=replace, stepwise=stepwise, seen=seen)
        except (Validation, NotFound, BadResponse) as exc:
            if not resume or self._mine().pages:
                raise
            # The stored next-page link is refused (expired, or api.base_url changed): a
            # resume link must never wedge sync, so drop it and redo the pass from the cursor.
            log.warning("sync of event %s: stored resume link refused (%s); restarting the "
                        "pass", event_id, exc)
            async with self._step_lock(stepwise):
                await in_thread(_write, cache, lambda: cache.set_pending(event_id, None, None))
            return await self._run_pass(cache, event_id, cursor, None, None, replace=replace,
                                        stepwise=stepwise, seen=seen)

    async def _run_pass(self, cache: TicketCache, event_id: int, cursor: str | None,
                        resume: str | None, end_time: str | None, *,
                        replace: bool = False, stepwise: bool = False,
                        seen: set[int] | None = None) -> int:
        """Page through one listing. `resume` is the stored next-page link of an interrupted
        pass; it decides the page size itself (a full listing's links ask for 1000 items,
        which the platform allows only in async mode), so a delta run can finish an
        interrupted full pass without a 422. `replace`: a full listing read from its first
        page here removes the event's items it did not list (a resumed one cannot know the
        pages read before: it removes nothing); `stepwise`, it catches up first (see
        `full_in_place`). `seen` collects the ids of the items applied."""
        if resume:
            use_async = _link_limit(resume) > DELTA_PAGE
            listing_full = not _link_is_delta(resume)
        else:
            use_async = listing_full = cursor is None  # first or full: big async pages
        self._report(phase="full" if listing_full else "tickets", event_id=event_id, pages=0,
                     items=0, total=None, started=time.time(), last_error=None)
        include_products = any(lane.include_products for lane in self.config.lanes)
        next_url: str | None = resume
        applied = 0
        listed: set[int] | None = set() if replace and listing_full and not resume else None
        while True:
            async with self._step_lock(stepwise):
                page: EntryPage = await self.client.entry_tickets(
                    event_id, start_time=None if listing_full else cursor, include_zones=True,
                    include_products=include_products,
                    limit=FULL_PAGE if use_async else DELTA_PAGE, async_mode=use_async,
                    page_url=next_url)
                self.progress.requests += 1
                # The pass's listEndTime is the earliest one seen: a later one could skip
                # changes made while the pass was paging (the docs do not promise one value
                # per pass).
                end_time = _earliest(end_time, page.list_end_time)
                next_url = page.next_url
                await in_thread(_apply_page, cache, event_id, page, next_url, end_time)
                if self.observer is not None:
                    await self.observer.page(event_id, page)
            applied += len(page.items)
            for collected in (listed, seen):
                if collected is not None:
                    collected.update(item.id for item in page.items)
            self._report(pages=self._mine().pages + 1, items=applied, total=page.total)
            if next_url is None:
                break
        async with self._step_lock(stepwise):
            new_cursor = end_time or cursor
            if stepwise and listed is not None:
                new_cursor = await self._catch_up_in_place(cache, event_id, end_time, listed)
            await self._finish_pass(cache, event_id, new_cursor, listing_full, listed)
        return applied

    async def _catch_up_in_place(self, cache: TicketCache, event_id: int, end_time: str | None,
                                 listed: set[int]) -> str | None:
        """The end of a full pass in place (`full_in_place`), under the live lock: a delta from
        the listing's cursor, whose items join `listed`, so that the removal keeps what a delta
        brought while the listing ran (a ticket sold meanwhile, listed before the listing's
        position) and drops what the platform no longer lists. Returns the cursor the pass
        ends with: the catch-up's, or the listing's when there is none.

        Best effort, as the rebuild's: without a listEndTime there is nothing to catch up from
        (a pass from no cursor lists the event again), and a platform error is logged; then
        the listing alone decides the removal and the cursor goes back to the listing's, so
        the next delta brings back whatever changed while it ran."""
        if end_time is None:
            log.warning("full pass of event %s: no listEndTime to catch up from; items "
                        "it did not list are removed", event_id)
            return None
        try:
            await self._run_pass(cache, event_id, end_time, None, None, seen=listed)
        except ApiError as exc:
            log.warning("full pass of event %s: catching up with what changed while it listed "
                        "failed (%s); the next delta goes on from the listing's cursor",
                        event_id, exc)
            return end_time
        return (await in_thread(cache.sync_state, event_id) or {}).get("cursor") or end_time

    async def _finish_pass(self, cache: TicketCache, event_id: int, cursor: str | None,
                           listing_full: bool, listed: set[int] | None) -> None:
        """A listing's end: items it did not list removed (`listed`, a full listing's), its
        cursor stored, both published."""
        stamp = utc_iso(datetime.now(UTC))
        removed: list[int] = []

        def finish() -> None:
            if listed is not None:
                removed.extend(cache.keep_only_items(event_id, listed))
            cache.set_cursor(event_id, cursor, stamp, full=listing_full)

        await in_thread(_write, cache, finish)
        if self.observer is not None and removed:
            await self.observer.removed(event_id, removed)
        if self.observer is not None:
            await self.observer.pass_done(event_id, cursor, listing_full)
        self.progress.last_success[event_id] = time.time()
        self._report(phase="idle", finished=time.time())

    async def delta_all(self) -> int:
        total = 0
        for event_id in await self.event_ids():
            total += await self.sync_tickets(event_id)
        return total

    # -- full resync --------------------------------------------------------------------------

    async def full_resync(self) -> int:
        """Rebuild the whole cache into `cache.db.new`, then swap it in atomically.

        The live cache keeps its passes (the delta and refresh jobs) while the new file is
        built: at 1M items a rebuild spends ~17 minutes on the rate limit, and holding every
        pass back for that long left the gate deciding on a cache that had stopped changing (a
        ticket refunded, or sold at the box office, meanwhile was admitted or refused on stale
        data). Before the swap the new file catches up with what changed on the platform while
        it was built (`_catch_up`: a delta from its own cursor, the earliest listEndTime of its
        listings) under the live lock, so that nothing changes between that and the rename: the
        file swapped in is as current as the one it replaces (a delta on the live file just
        before the swap is in it too), a tag paired during the rebuild included. After a
        listing longer than a delta interval it catches up once before, outside the lock, so
        that the live deltas wait only for the last changes; after a short one that would only
        spend a request per event of the rate budget. Returns the items the full listings
        applied (the catch-ups' are in the progress reports)."""
        async with self._full_lock:
            self._full_task = asyncio.current_task()
            try:
                return await self._rebuild()
            finally:
                self._full_task = None

    async def rebuild_missed(self) -> str | None:
        """Why the cache needs a full rebuild now (logged), or None: an event's last full
        listing on record is older than the last time the nightly one came due
        (`sync.full_resync_at`), or it never had one. The nightly job runs only while the
        daemon (or the venue's leader) runs: a gate switched off at night never ran it, and
        only a full pass drops items the platform no longer lists (a delta never names them).
        A read that fails says nothing was missed: the nightly one is still planned."""
        due = last_nightly(self.config.sync["full_resync_at"], datetime.now().astimezone())
        try:
            async with self._lock:  # the writer's connection: no pass uses it meanwhile
                served = await self.event_ids()
                passes, fulls, oldest = await in_thread(self._cache().full_listings, served)
        except Exception as exc:  # noqa: BLE001 - see above
            log.warning("could not tell whether the nightly full resync was missed: %s", exc)
            return None
        if passes == 0:
            return None  # nothing synced yet: the first delta lists everything
        if fulls < passes or oldest is None:
            why = "an event in the cache never had a full listing"
        elif oldest < utc_iso(due.astimezone(UTC)):
            why = f"the last full rebuild on record was at {oldest}"
        else:
            return None
        log.warning("the nightly full resync (due %s) was missed: %s; running it now",
                    due.isoformat(timespec="minutes"), why)
        return why

    async def _rebuild(self) -> int:
        new_path = self.cache_path.with_name(self.cache_path.name + ".new")
        await in_thread(_remove_db, new_path)
        fresh = TicketCache(new_path, keep_personal_data=self.config.store["keep_personal_data"],
                            check=False)
        swapped = False
        try:
            self._report(phase="events", started=time.time(), last_error=None)
            listing = time.monotonic()
            ids = await self._refresh_into(fresh)
            total = 0
            for event_id in ids:
                total += await self._pass(fresh, event_id, full=True)
            if time.monotonic() - listing > self.config.sync["delta_interval_s"]:
                # a long listing: most of what changed meanwhile is brought here, so that the
                # catch-up under the lock (which holds the live cache's deltas) stays short
                await self._catch_up(fresh, ids)
            async with self._lock:  # no pass on the live cache from here to the rename
                await self._catch_up(fresh, ids)
                await in_thread(fresh.checkpoint)
                await in_thread(fresh.verify)  # here, not in the swap under the lane locks
                fresh.close()
                self._report(phase="swapping")
                async with self.swap_guard():  # no await between the close and the rename
                    self.close()
                    self.swap_hook(lambda: swap_in(new_path, self.cache_path))
                    swapped = True
        finally:
            if not swapped:
                # A failed build is never swapped in; do not leave a half file behind (a crash
                # leaves one, which `discard_unfinished_rebuild` removes at the next start),
                # nor one held back by a cancelled wait or a refused rename.
                fresh.close()
                if new_path.exists():
                    await in_thread(_remove_db, new_path)
        self._report(phase="idle", finished=time.time())
        return total

    async def _catch_up(self, fresh: TicketCache, ids: list[int]) -> None:
        """A delta pass per event into the file being built, from the cursor its listing left.

        Best effort: the rebuilt file is whole without it, so a platform error here is logged
        and the file swapped in all the same (the pass's bookkeeping is in the file: the next
        delta resumes it), rather than minutes of listing thrown away for one failed request.
        An event whose listing left no cursor (no `listEndTime` from the platform) is skipped:
        a pass from no cursor lists the whole event again."""
        for event_id in ids:
            state = await in_thread(fresh.sync_state, event_id) or {}
            if not state.get("cursor"):
                log.warning("full resync of event %s: no listEndTime to catch up from; the next "
                            "delta brings what changed while it listed", event_id)
                continue
            try:
                await self._pass(fresh, event_id, full=False)
            except ApiError as exc:
                log.warning("full resync of event %s: catching up with what changed while it "
                            "listed failed (%s); swapped in all the same, the next delta goes "
                            "on from there", event_id, exc)


def last_nightly(hhmm: str, now: datetime) -> datetime:
    """When the nightly full resync (`sync.full_resync_at`, this machine's local time, as the
    daemon's scheduler reads it) last came due before `now` (aware, local)."""
    hour, minute = (int(x) for x in hhmm.split(":"))
    due = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return due if due <= now else due - timedelta(days=1)


def next_nightly(hhmm: str, now: datetime) -> datetime:
    """When it next comes due after `now` (never `now` itself: a pass run at its time of day
    is not due again at once)."""
    return last_nightly(hhmm, now) + timedelta(days=1)


def _link_query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def _link_is_delta(url: str) -> bool:
    """A stored next-page link of a delta pass carries its `startTime`."""
    return bool(_link_query(url).get("startTime"))


def _link_limit(url: str) -> int:
    raw = _link_query(url).get("limit", "")
    return int(raw) if raw.isdigit() else DELTA_PAGE


def _earliest(a: str | None, b: str | None) -> str | None:
    """The earlier of two `YYYY-MM-DD HH:MM:SS` times (text order is time order)."""
    if a is None or b is None:
        return a or b
    return min(a, b)


def _write(cache: TicketCache, action: Callable[[], None]) -> None:
    with cache.transaction():
        action()


def _apply_page(cache: TicketCache, event_id: int, page: EntryPage, next_url: str | None,
                end_time: str | None) -> None:
    """Items of one page and the pass's position, in one transaction."""
    with cache.transaction():
        cache.put_items(event_id, page.items)
        cache.set_pending(event_id, next_url, end_time)


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def swap_in(new_path: Path, live_path: Path) -> None:
    """Replace the live cache file with a completed new one in one rename.

    The new file was checkpointed and closed (no -wal beside it). Stale -wal/-shm files of the
    old cache are removed first: SQLite would otherwise apply them to the new file.
    """
    for suffix in ("-wal", "-shm"):
        Path(str(live_path) + suffix).unlink(missing_ok=True)
    os.replace(new_path, live_path)
    fsync_dir(live_path.parent)


def discard_unfinished_rebuild(cache_path: Path) -> bool:
    """At start-up: a `cache.db.new` is a rebuild that was interrupted. Delete it; True if so."""
    new_path = Path(cache_path).with_name(Path(cache_path).name + ".new")
    if new_path.exists():
        _remove_db(new_path)
        return True
    return False
