"""The venue leader's daily full pass in place (agent.platform.sync.Syncer.full_in_place) lets
the deltas run beside it, and removes only what the platform no longer lists.

Until session 18 that pass held the live lock from its first page to its last: at 1M items
about 17 minutes on the rate limit in which no delta reached the venue (a refund admitted, a
box-office sale refused at every gate). Now it takes the lock page by page, and catches up
before it removes. Real sandbox over loopback, real cache files; no bus here (the catalog's
tests cover what the gates apply)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from agent.platform.sync import SyncProgress
from agent.runtime.opening import opened_gate
from tests.platform.sync.conftest import EVENT, Site, cached_ids, noon
from tests.platform.sync.test_sync_passes import first_fill

ALL = 1140  # items of the site's event 1001 listing (1200 generated, products left out)


def _status(site: Site, barcode: str) -> str | None:
    with sqlite3.connect(site.cache_path) as db:
        row = db.execute("SELECT status FROM items WHERE barcode = ?", (barcode,)).fetchone()
    return row[0] if row else None


def test_a_delta_lands_while_the_full_pass_lists_and_stays_after_it(
        site: Site, sandbox) -> None:
    """The leader's delta runs, and writes the live cache, while the full pass still lists; it
    does not take up the full pass's stored next-page link (one item, not the rest of the
    listing); status keeps showing the full pass; the refund stands after the pass."""
    lane = site.config.lane("main")
    now = noon(sandbox)

    async def go() -> tuple[int, bool, str, str | None, int]:
        async with site.client() as client:
            await first_fill(site, client)
            sandbox.set_faults(async_delay_s=1.5)  # each 1000-item page: 1.5 s
            syncer = site.syncer(client)
            try:
                full = asyncio.create_task(syncer.full_in_place())
                while not (syncer.progress.phase == "full" and syncer.progress.pages == 1):
                    assert not full.done(), full
                    await asyncio.sleep(0.01)
                sandbox.change_item("SF0000001", "refunded")
                applied = await syncer.sync_tickets(EVENT)  # the leader loop's delta
                still_listing = not full.done()
                phase = syncer.progress.phase
                with opened_gate(site.config) as gate:  # the live cache, as a lane reads it
                    live = gate.check("SF0000001", lane, now).detail
                return applied, still_listing, phase, live, await full
            finally:
                syncer.close()

    applied, still_listing, phase, live, listed = asyncio.run(go())
    assert still_listing  # the delta did not wait for the full pass
    assert applied == 1 and live == "refunded"
    assert phase == "full"  # the full pass's progress, not the delta's
    assert listed == ALL
    assert _status(site, "SF0000001") == "refunded"
    assert len(cached_ids(site.cache_path)) == ALL


def test_a_page_listed_before_a_delta_is_written_before_it(site: Site, sandbox) -> None:
    """SF0000001 is refunded on the platform just after the full pass received its first page
    (which still says it is sold), and a delta asks to run before that page is written. The
    page is written first, then the delta: from the delta's end on, the cache says refunded.
    (Fetched outside the lock, the delta would go first and the older page overwrite it until
    the pass's catch-up, minutes later at 1M items.)"""
    seen: list[tuple[bool, str | None]] = []  # after each full page: (delta done, status)

    async def go() -> tuple[int, int]:
        async with site.client() as client:
            await first_fill(site, client)
            syncer = site.syncer(client)
            original = client.entry_tickets
            deltas: list[asyncio.Task[int]] = []

            async def refund_after_the_first_full_page(*args: Any, **kw: Any) -> Any:
                page = await original(*args, **kw)
                if kw.get("start_time") is None and not deltas:  # the full listing's first
                    sandbox.change_item("SF0000001", "refunded")
                    deltas.append(asyncio.create_task(syncer.sync_tickets(EVENT)))
                    await asyncio.sleep(0.5)  # the delta's chance to go first, were it free
                return page

            def after_each_page(p: SyncProgress) -> None:
                if p.phase == "full" and p.pages and len(seen) < p.pages:
                    seen.append((deltas[0].done(), _status(site, "SF0000001")))

            client.entry_tickets = refund_after_the_first_full_page  # type: ignore[method-assign]
            syncer.listeners.append(after_each_page)
            try:
                listed = await syncer.full_in_place()
                return listed, await deltas[0]
            finally:
                syncer.close()

    listed, delta = asyncio.run(go())
    assert listed == ALL and delta == 1
    assert seen == [(False, "sold"), (True, "refunded")]
    assert _status(site, "SF0000001") == "refunded"


def test_the_removal_keeps_what_the_platform_still_lists_and_drops_what_it_does_not(
        site: Site, sandbox) -> None:
    """Two items change while the full pass lists (scripted at the platform's answers):
    - SF0000005 is off the platform's listings when the pass lists its page, and back on them
      just after (as a ticket sold after the listing passed its place): the delta beside and
      the catch-up name it, so it stays;
    - SF0001100 is written by the delta beside the pass, then taken off the listings before
      the pass reaches its page: neither the listing nor the catch-up names it, so it goes."""
    script: list[str] = []

    async def go() -> tuple[int, int]:
        async with site.client() as client:
            await first_fill(site, client)
            sandbox.list_item("SF0000005", False)
            syncer = site.syncer(client)
            original = client.entry_tickets
            deltas: list[asyncio.Task[int]] = []

            async def scripted(*args: Any, **kw: Any) -> Any:
                page = await original(*args, **kw)
                if kw.get("start_time") is None and kw.get("page_url") is None:
                    script.append("full page 1")
                    sandbox.list_item("SF0000005", True)
                    sandbox.change_item("SF0001100", "locked")
                    deltas.append(asyncio.create_task(syncer.sync_tickets(EVENT)))
                elif kw.get("start_time") is not None and script == ["full page 1"]:
                    script.append(f"delta beside: {[i.barcode for i in page.items]}")
                    sandbox.list_item("SF0001100", False)
                return page

            client.entry_tickets = scripted  # type: ignore[method-assign]
            try:
                listed = await syncer.full_in_place()
                return listed, await deltas[0]
            finally:
                syncer.close()

    listed, delta = asyncio.run(go())
    assert script == ["full page 1", "delta beside: ['SF0000005', 'SF0001100']"]
    assert delta == 2
    assert listed == ALL - 2  # neither was in the full listing
    assert _status(site, "SF0000005") == "sold"  # caught up: the platform lists it
    assert _status(site, "SF0001100") is None  # listed by nothing at the end: removed
    assert len(cached_ids(site.cache_path)) == ALL - 1


def test_a_failed_catch_up_removes_by_the_listing_and_the_next_delta_brings_it_back(
        site: Site, sandbox, caplog) -> None:
    """The platform refuses every request once the listing is done: the catch-up fails and is
    logged, the listing alone decides the removal (SF0000005, back on the listings by then,
    goes), and the cursor is the listing's, so the next delta brings SF0000005 back."""
    faulted: list[bool] = []

    def refuse_after_the_listing(p: SyncProgress) -> None:
        if p.phase == "full" and p.pages == 2 and not faulted:
            sandbox.list_item("SF0000005", True)
            sandbox.set_faults(trial_expired=True)
            faulted.append(True)

    async def go() -> tuple[int, str | None, int]:
        async with site.client() as client:
            await first_fill(site, client)
            sandbox.list_item("SF0000005", False)
            syncer = site.syncer(client, on_progress=refuse_after_the_listing)
            try:
                listed = await syncer.full_in_place()
                removed = _status(site, "SF0000005")
                sandbox.clear_faults()
                return listed, removed, await syncer.sync_tickets(EVENT)
            finally:
                syncer.close()

    listed, removed, delta = asyncio.run(go())
    assert faulted == [True]
    assert "catching up with what changed while it listed failed" in caplog.text
    assert listed == ALL - 1 and removed is None
    assert delta >= 1 and _status(site, "SF0000005") is not None
