"""Ticket sync against the sandbox: first fill, deltas, interrupted passes, full resync + swap."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from pathlib import Path

import pytest

from agent.errors import Forbidden
from agent.platform.sync import SyncProgress, discard_unfinished_rebuild
from agent.runtime.opening import opened_gate
from agent.store.cache import TicketCache
from tests.platform.sync.conftest import EVENT, Site, cached_ids, expected_ids, noon


def sync_state(cache_path: Path) -> dict | None:
    """The pass bookkeeping as another process would see it (own connection)."""
    conn = sqlite3.connect(cache_path)
    try:
        row = conn.execute("SELECT cursor, pending_cursor FROM sync_state WHERE event_id = ?",
                           (EVENT,)).fetchone()
    finally:
        conn.close()
    return None if row is None else {"cursor": row[0], "pending": row[1]}


async def first_fill(site: Site, client, **kw) -> int:
    syncer = site.syncer(client, **kw)
    try:
        await syncer.refresh_events()
        return await syncer.sync_tickets(EVENT)
    finally:
        syncer.close()


def test_first_pass_fills_the_cache_in_1000_item_pages_and_stores_the_cursor_last(site):
    seen: list[tuple[int, int, dict | None]] = []

    def watch(p: SyncProgress) -> None:
        if p.phase == "full" and p.pages:  # reported after each page's transaction
            seen.append((p.pages, p.items, sync_state(site.cache_path)))

    async def go():
        async with site.client() as client:
            return await first_fill(site, client, on_progress=watch), client.governor.granted

    applied, granted = asyncio.run(go())
    want = expected_ids(1200)
    assert applied == len(want) == 1140
    assert sorted(cached_ids(site.cache_path)) == sorted(want)
    # 1000 items on the first page: only async mode allows more than 100.
    assert [(pages, items) for pages, items, _ in seen] == [(1, 1000), (2, 1140)]
    assert seen[0][2]["cursor"] is None and seen[0][2]["pending"]  # mid-pass: no cursor yet
    assert seen[1][2]["cursor"] is None  # the last page is applied before the cursor is set
    final = sync_state(site.cache_path)
    assert final["cursor"] and final["pending"] is None
    # events + zones + two pages; async polls are not budgeted
    assert granted["REFRESH"] == 4 and granted["DELTA_SYNC"] == 0


def test_a_delta_brings_refunds_new_pairings_and_replaced_barcodes(site, sandbox):
    lane = site.config.lane("main")
    now = noon(sandbox)
    store = sandbox.state.store

    async def go():
        async with site.client() as client:
            await first_fill(site, client)
            with opened_gate(site.config) as gate_before:
                before = {code: gate_before.check(code, lane, now).status
                          for code in ("SF0000001", "0x04A10000000B", "SF0000012")}
            # Box office: refund one ticket; the tag of SF0000011 moves to SF0000012;
            # SF0000002's barcode is replaced by a new one.
            sandbox.change_item("SF0000001", "refunded")
            await client.pair_tag("SF0000012", "0x04A10000000B", EVENT, False, str(uuid.uuid4()))
            with sandbox.state.lock:
                item = store.item(EVENT, 2)
                item["const"]["barcode"] = "SF-NEW-0002"
                item["variable"] = {"status": "sold", "historicBarcodes": ["SF0000002"]}
                store.put(EVENT, item, sandbox.state.clock.now())
            syncer = site.syncer(client)
            try:
                applied = await syncer.sync_tickets(EVENT)
            finally:
                syncer.close()
            return before, applied, dict(client.governor.granted)

    before, applied, granted = asyncio.run(go())
    assert before == {"SF0000001": "valid", "0x04A10000000B": "valid", "SF0000012": "valid"}
    assert applied == 4  # refunded, both items of the pairing, the replaced barcode
    assert granted["DELTA_SYNC"] == 1  # one small delta page
    with opened_gate(site.config) as gate:
        refused = gate.check("SF0000001", lane, now)
        assert (refused.admit, refused.status, refused.detail) == (False, "denied", "refunded")
        tag = gate.check("0x04A10000000B", lane, now)
        assert tag.admit and tag.item_id == 100012  # the newest pairing wins
        old = gate.check("SF0000002", lane, now)
        assert (old.admit, old.detail) == (False, "historicBarcode")
        assert gate.check("SF-NEW-0002", lane, now).admit


LINK_STYLES = ("absolute", "path", "other_host")


@pytest.mark.parametrize("style", LINK_STYLES)
def test_every_page_is_followed_however_the_links_are_written(site, sandbox, style):
    """Bare paths, absolute URLs on the base URL, and URLs naming another host and scheme (the
    spec's examples; a TLS-terminating proxy): each is a page position asked of the base URL."""
    sandbox.set_faults(link_style=style)
    changed = [f"SF{i:07d}" for i in range(0, 1200, 9) if i % 20 != 7][:120]

    async def go():
        async with site.client() as client:
            full = await first_fill(site, client)
            sandbox.advance_clock(5)
            for code in changed:
                sandbox.change_item(code, "locked")
            sandbox.reset_received()
            syncer = site.syncer(client)
            try:
                return full, await syncer.sync_tickets(EVENT)
            finally:
                syncer.close()

    full, delta = asyncio.run(go())
    assert full == 1140 and sorted(cached_ids(site.cache_path)) == sorted(expected_ids(1200))
    assert delta == 120  # two pages of 100
    assert sandbox.received()["perEndpoint"]["GET /entry/tickets"] == 2
    with opened_gate(site.config) as gate:
        assert gate.check(changed[-1], site.config.lane("main"), noon(sandbox)).detail == \
            "orderLocked"


@pytest.mark.parametrize("style", LINK_STYLES)
def test_an_interrupted_pass_resumes_without_loss_and_leaves_the_cursor_alone(
        tmp_path, sandbox, style):
    from tests.platform.sync.conftest import make_site

    sandbox.set_faults(link_style=style)
    site = make_site(tmp_path / "g", sandbox, rpm=1000)
    stop_after = {"pages": 0}

    def fault(p: SyncProgress) -> None:
        if stop_after["pages"] and p.phase == "full" and p.pages == stop_after["pages"]:
            sandbox.set_faults(trial_expired=True)  # every following request: 403

    async def go():
        async with site.client() as client:
            syncer = site.syncer(client, on_progress=fault)
            try:
                await syncer.refresh_events()
                await syncer.sync_tickets(EVENT)
                first_cursor = sync_state(site.cache_path)["cursor"]
                sandbox.advance_clock(5)  # so the next pass has a later listEndTime
                sandbox.change_item("SF0000004", "locked")
                stop_after["pages"] = 1
                with pytest.raises(Forbidden):
                    await syncer.sync_tickets(EVENT, full=True)
                stop_after["pages"] = 0
                interrupted = sync_state(site.cache_path)
                sandbox.set_faults(trial_expired=False)
                sandbox.advance_clock(5)
                sandbox.reset_received()
                resumed = await syncer.sync_tickets(EVENT)  # a plain delta run finishes it
                return first_cursor, interrupted, resumed, sync_state(site.cache_path)
            finally:
                syncer.close()

    first_cursor, interrupted, resumed, final = asyncio.run(go())
    assert interrupted["cursor"] == first_cursor  # not advanced by the interrupted pass
    assert interrupted["pending"] and "limit=1000" in interrupted["pending"]
    assert resumed == 1140 - 1000  # only the pages after the interruption
    assert sorted(cached_ids(site.cache_path)) == sorted(expected_ids(1200))
    assert final["pending"] is None and final["cursor"] > first_cursor
    with opened_gate(site.config) as gate:
        assert gate.check("SF0000004", site.config.lane("main"), noon(sandbox)).detail == \
            "orderLocked"


def test_a_stale_resume_link_is_dropped_and_the_pass_redone(site, sandbox):
    async def go():
        async with site.client() as client:
            await first_fill(site, client)
            cache = TicketCache(site.cache_path)
            with cache.transaction():
                # a link from another host whose page the platform no longer accepts (422)
                cache.set_pending(EVENT, "http://elsewhere.example/v1/entry/tickets?limit=100"
                                  "&page=expired&startTime=2026-01-01%2000:00:00", None)
            cache.close()
            syncer = site.syncer(client)
            try:
                return await syncer.sync_tickets(EVENT)
            finally:
                syncer.close()

    assert asyncio.run(go()) == 0  # a normal (empty) delta instead of a wedged sync
    assert sync_state(site.cache_path)["pending"] is None


def test_full_resync_keeps_serving_and_swaps_in_whole(site, sandbox):
    """A lane thread decides continuously during the rebuild; the swap hook closes its cache
    under the lane's lock, as the daemon does. No decision may see a missing or half cache."""
    lane = site.config.lane("main")
    now = noon(sandbox)
    lock = threading.Lock()
    gate = site.gate()
    stop = threading.Event()
    swapped = threading.Event()
    seen: list[tuple[str, int]] = []
    built_beside: list[bool] = []

    def lane_thread() -> None:
        while not stop.is_set():
            with lock:
                status = gate.check("SF0000001", lane, now).detail or "valid"
                count = gate.cache.item_counts().get(EVENT, 0)
            seen.append((status, count))
            if swapped.is_set() and len(seen) > 5 and status == "refunded":
                break

    def swap_hook(do_swap) -> None:
        with lock:
            gate.cache.close()
            do_swap()
            gate.cache = TicketCache(site.cache_path)
        swapped.set()

    def watch(p: SyncProgress) -> None:
        if p.phase == "full" and p.pages:
            built_beside.append(site.cache_path.with_name("cache.db.new").exists())

    async def go():
        async with site.client() as client:
            await first_fill(site, client)
            sandbox.change_item("SF0000001", "refunded")
            worker = threading.Thread(target=lane_thread)
            worker.start()
            syncer = site.syncer(client, on_progress=watch, swap_hook=swap_hook)
            try:
                total = await syncer.full_resync()
            finally:
                syncer.close()
            await asyncio.to_thread(worker.join, 10)
            stop.set()
            return total

    try:
        total = asyncio.run(go())
    finally:
        stop.set()
        gate.close()
    assert total == 1140
    assert built_beside == [True, True]
    assert {count for _, count in seen} == {1140}  # never empty, never half
    statuses = [s for s, _ in seen]
    assert statuses[0] == "valid" and statuses[-1] == "refunded"
    first_new = statuses.index("refunded")
    assert set(statuses[first_new:]) == {"refunded"}  # old, then new: one switch
    assert not site.cache_path.with_name("cache.db.new").exists()


def test_a_failed_full_resync_leaves_the_live_cache_and_no_half_file(site, sandbox):
    def fault(p: SyncProgress) -> None:
        if p.phase == "full" and p.pages == 1:
            sandbox.set_faults(trial_expired=True)

    async def go():
        async with site.client() as client:
            await first_fill(site, client)
            syncer = site.syncer(client, on_progress=fault)
            try:
                with pytest.raises(Forbidden):
                    await syncer.full_resync()
            finally:
                syncer.close()

    asyncio.run(go())
    assert not site.cache_path.with_name("cache.db.new").exists()
    assert len(cached_ids(site.cache_path)) == 1140
    assert discard_unfinished_rebuild(site.cache_path) is False
