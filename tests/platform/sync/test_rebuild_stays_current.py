"""A full resync keeps the live cache current while it builds, and swaps in a file as current
as the one it replaces (agent.platform.sync.Syncer.full_resync).

Until session 17 a rebuild held every pass on the live cache back for as long as it listed
(about 17 minutes at 1M items on the rate limit): a ticket refunded or sold meanwhile was
decided on stale data, and whatever changed on the platform during the listing (a tag paired
at another gate, a refund of an item already listed) was missing from the file swapped in
until the next delta. Real sandbox over loopback, real cache files."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.core.codes import utc_iso
from agent.platform.sync import Syncer, SyncProgress
from agent.runtime.opening import opened_gate
from agent.sandbox import rules
from tests.platform.sync.conftest import EVENT, Site, cached_ids, noon
from tests.platform.sync.test_sync_passes import first_fill

TAG = "0x04A10000000B"  # SF0000011's tag in the sandbox's seed


def test_deltas_reach_the_live_cache_while_a_full_resync_lists(site: Site, sandbox) -> None:
    """The delta job's pass runs, and lands in the live cache, while the rebuild is still
    listing; status and the CLI's bar keep showing the rebuild meanwhile."""
    lane = site.config.lane("main")
    now = noon(sandbox)

    async def go() -> tuple[int, bool, str, str | None, str | None]:
        async with site.client() as client:
            await first_fill(site, client)
            sandbox.set_faults(async_delay_s=1.5)  # each 1000-item page of the rebuild: 1.5 s
            syncer = site.syncer(client)
            try:
                rebuild = asyncio.create_task(syncer.full_resync())
                while syncer.progress.phase != "full":  # listing the first page
                    assert not rebuild.done(), rebuild
                    await asyncio.sleep(0.01)
                sandbox.change_item("SF0000001", "refunded")
                applied = await syncer.sync_tickets(EVENT)  # the delta job's pass
                still_building = not rebuild.done()
                phase = syncer.progress.phase
                with opened_gate(site.config) as gate:  # the live cache, as a lane reads it
                    live = gate.check("SF0000001", lane, now).detail
                assert await rebuild == 1140
                with opened_gate(site.config) as gate:  # the rebuilt file, swapped in
                    rebuilt = gate.check("SF0000001", lane, now).detail
                return applied, still_building, phase, live, rebuilt
            finally:
                syncer.close()

    applied, still_building, phase, live, rebuilt = asyncio.run(go())
    assert still_building  # the delta did not wait for the rebuild
    assert applied >= 1 and live == "refunded"
    assert phase == "full"  # the rebuild's progress, not the delta's
    assert rebuilt == "refunded"
    assert len(cached_ids(site.cache_path)) == 1140


def test_a_tag_paired_while_the_rebuild_listed_is_in_the_file_swapped_in(
        site: Site, sandbox) -> None:
    """SF0000012 is paired with SF0000011's tag on the platform after the rebuild listed both
    (its second page is applied): the rebuild catches up before its swap, so the gate reads the
    tag as the new ticket's at once, not after the next delta (or never, had its cursor been
    taken later)."""
    lane = site.config.lane("main")
    now = noon(sandbox)
    paired: list[bool] = []

    def pair_at_the_last_page(p: SyncProgress) -> None:
        if p.phase == "full" and p.pages == 2 and not paired:
            with sandbox.state.lock:  # as the platform records another device's pairing
                rules.pair(sandbox.state.store, {"barcode": "SF0000012", "nfc-id": TAG,
                                                 "event-id": str(EVENT),
                                                 "pair-barcode-again": False},
                           sandbox.state.clock.now())
            paired.append(True)

    async def go() -> int:
        async with site.client() as client:
            await first_fill(site, client)
            syncer = site.syncer(client, on_progress=pair_at_the_last_page)
            try:
                return await syncer.full_resync()
            finally:
                syncer.close()

    assert asyncio.run(go()) == 1140
    assert paired == [True]
    with opened_gate(site.config) as gate:
        tag = gate.check(TAG, lane, now)
        assert tag.admit and tag.item_id == 100012, (tag.item_id, tag.status, tag.detail)
    assert not site.cache_path.with_name("cache.db.new").exists()


def test_two_full_resyncs_asked_at_once_build_one_after_the_other(site: Site, sandbox) -> None:
    """The nightly job and a technician's `sync --full` at the same moment: each builds
    `cache.db.new` alone (a second one starting meanwhile would delete the first's file under
    its open connection)."""
    lane = site.config.lane("main")
    now = noon(sandbox)
    building: list[int] = []
    overlap: list[int] = []

    async def go() -> list[int]:
        async with site.client() as client:
            await first_fill(site, client)
            syncer = site.syncer(client)
            original = syncer._rebuild

            async def watched() -> int:
                building.append(1)
                overlap.append(len(building))
                try:
                    return await original()
                finally:
                    building.pop()

            syncer._rebuild = watched  # type: ignore[method-assign]
            try:
                return list(await asyncio.gather(syncer.full_resync(), syncer.full_resync()))
            finally:
                syncer.close()

    sandbox.change_item("SF0000001", "refunded")
    assert asyncio.run(go()) == [1140, 1140]
    assert overlap == [1, 1]
    with opened_gate(site.config) as gate:
        assert gate.check("SF0000001", lane, now).detail == "refunded"
    assert not site.cache_path.with_name("cache.db.new").exists()


def test_a_failed_catch_up_still_swaps_the_rebuilt_file_in(site: Site, sandbox, caplog) -> None:
    """The platform refuses every request once the listing is done: the catch-up fails, is
    logged, and the whole rebuilt file is swapped in all the same (not minutes of listing
    thrown away); the next delta then brings what the catch-up missed."""
    lane = site.config.lane("main")
    now = noon(sandbox)
    faulted: list[bool] = []

    def refuse_after_the_listing(p: SyncProgress) -> None:
        if p.phase == "full" and p.pages == 2 and not faulted:
            sandbox.change_item("SF0000003", "refunded")
            sandbox.set_faults(trial_expired=True)
            faulted.append(True)

    async def go() -> tuple[int, int]:
        async with site.client() as client:
            await first_fill(site, client)
            sandbox.change_item("SF0000001", "refunded")  # only a rebuild or a delta brings it
            syncer = site.syncer(client, on_progress=refuse_after_the_listing)
            try:
                total = await syncer.full_resync()
                sandbox.clear_faults()
                return total, await syncer.sync_tickets(EVENT)
            finally:
                syncer.close()

    total, delta = asyncio.run(go())
    assert total == 1140 and faulted == [True]
    assert "catching up with what changed while it listed failed" in caplog.text
    assert not site.cache_path.with_name("cache.db.new").exists()
    with opened_gate(site.config) as gate:
        assert gate.check("SF0000001", lane, now).detail == "refunded"  # the rebuilt file
        assert gate.check("SF0000003", lane, now).detail == "refunded"  # the delta after it
    assert delta >= 1


def test_a_listing_without_list_end_time_is_not_listed_again_to_catch_up(
        site: Site, sandbox) -> None:
    """No cursor to catch up from: a pass from none would list the whole event again (twice,
    at 1M items another ~17 minutes each). The rebuild asks for its listing's pages only."""
    pages_asked: list[bool] = []

    async def go() -> int:
        async with site.client() as client:
            await first_fill(site, client)
            original = client.entry_tickets

            async def without_end_time(*args: Any, **kw: Any) -> Any:
                pages_asked.append(True)
                return dataclasses.replace(await original(*args, **kw), list_end_time=None)

            client.entry_tickets = without_end_time  # type: ignore[method-assign]
            syncer = site.syncer(client)
            try:
                return await syncer.full_resync()
            finally:
                syncer.close()

    assert asyncio.run(go()) == 1140
    assert len(pages_asked) == 2  # its two 1000-item pages, nothing more


def test_a_missed_nightly_rebuild_is_told_by_the_served_events_last_full_listing(
        site: Site, sandbox) -> None:
    """`Syncer.rebuild_missed`, which the daemon and the venue leader ask at start: a fresh
    first listing is a full one; an event no longer served, with its old record, does not
    count; a served event's full listing older than the last nightly time, or none, does."""
    def set_last_full(event_id: int, value: str | None) -> None:
        with sqlite3.connect(site.cache_path) as db:
            db.execute("INSERT INTO sync_state (event_id, cursor, last_sync, last_full)"
                       " VALUES (?, NULL, ?, ?) ON CONFLICT(event_id) DO UPDATE SET"
                       " last_full = excluded.last_full", (event_id, value, value))

    async def missed() -> str | None:
        async with site.client() as client:
            syncer = site.syncer(client)
            try:
                return await syncer.rebuild_missed()
            finally:
                syncer.close()

    async def fill() -> None:
        async with site.client() as client:
            await first_fill(site, client)

    assert asyncio.run(missed()) is None  # nothing synced yet
    asyncio.run(fill())
    assert asyncio.run(missed()) is None
    two_nights_ago = utc_iso(datetime.now(UTC) - timedelta(days=2))
    set_last_full(EVENT + 1, two_nights_ago)  # an event not served (events.ids)
    assert asyncio.run(missed()) is None
    set_last_full(EVENT, two_nights_ago)
    assert asyncio.run(missed()) == f"the last full rebuild on record was at {two_nights_ago}"
    set_last_full(EVENT, None)
    assert asyncio.run(missed()) == "an event in the cache never had a full listing"


def test_a_long_listing_catches_up_once_more_outside_the_lock(site: Site, sandbox) -> None:
    """After a listing longer than a delta interval the rebuild catches up outside the live
    file's lock first (so the live deltas wait only for the last changes), then under it;
    after a short one only under it (a request per event less of the rate budget)."""
    def catch_ups(delta_interval_s: float) -> int:
        passes: list[tuple[str, float | None]] = []

        def watch(p: SyncProgress) -> None:
            if p.phase == "tickets" and (p.phase, p.started) not in passes:
                passes.append((p.phase, p.started))

        config = dataclasses.replace(
            site.config, sync={**site.config.sync, "delta_interval_s": delta_interval_s})

        async def go() -> int:
            async with site.client() as client:
                syncer = Syncer(config, client, site.cache_path, on_progress=watch)
                try:
                    return await syncer.full_resync()
                finally:
                    syncer.close()

        assert asyncio.run(go()) == 1140
        return len(passes)

    async def fill() -> None:
        async with site.client() as client:
            await first_fill(site, client)

    asyncio.run(fill())
    sandbox.set_faults(async_delay_s=0.6)  # the listing: two pages, 1.2 s at least
    assert catch_ups(delta_interval_s=60.0) == 1
    assert catch_ups(delta_interval_s=0.5) == 2
