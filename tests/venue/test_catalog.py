"""Sync once, fan out: the leader's real `Syncer` against the sandbox publishes on a real
nats-server; other gates build and update their SQLite caches from the bus alone."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.core.model import PERSONAL_FIELDS, EntryPage, parse_item
from agent.runtime.pairing import PairingStation
from agent.sandbox.harness import Sandbox, start_sandbox
from agent.store.cache import TicketCache
from agent.venue import catalog
from agent.venue.election import connect, lease_bucket
from agent.venue.leader import VenueRole
from agent.venue.leader_sync import LeaderSync
from agent.venue.lease import Lease, NotLeader
from agent.venue.node import NodeProcess
from agent.venue.passrequest import PassRequest
from agent.venue.term import Term, stamp_headers
from tests.platform.sync.conftest import EVENT, Site, make_site

pytestmark = pytest.mark.e2e
TICKETS = 3000


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with start_sandbox(tickets=TICKETS, async_delay_s=0.02, rpm=1000) as sb:
        yield sb


def requests_made(sb: Sandbox) -> int:
    return sum(sb.received()["perEndpoint"].values())


def items(path: Path) -> dict[int, tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return {r[0]: r[1:] for r in conn.execute(
            "SELECT id, barcode, nfc_id, status, raw FROM items WHERE event_id = ?", (EVENT,))}
    finally:
        conn.close()


async def lead(js: Any, venue: str, holder: str = "leader") -> Lease:
    lease = Lease(await lease_bucket(js, venue, 30.0, 1), holder, 30.0)
    assert await lease.acquire("now")
    return lease


async def leader_sync(site: Site, js: Any, venue: str, lease: Lease, full: bool = False) -> int:
    publisher = catalog.CatalogPublisher(js, venue, lease)
    async with site.client() as client:
        syncer = site.syncer(client, observer=publisher)
        try:
            await syncer.refresh_events()
            await syncer.sync_tickets(EVENT, full=full)
        finally:
            syncer.close()
    return publisher.published


async def follow(js: Any, venue: str, path: Path) -> dict[str, Any]:
    cache = TicketCache(path)
    try:
        follower = catalog.CatalogFollower(js, venue, cache)
        await follower.catch_up(60)
        return follower.get_status()
    finally:
        cache.close()


def test_one_leader_sync_builds_every_gate_cache_with_no_request(
        shared_venue_node: NodeProcess, sandbox: Sandbox, tmp_path: Path) -> None:
    venue = "fanout"
    leader = make_site(tmp_path / "leader", sandbox, rpm=1000)

    async def scenario() -> tuple[int, int, int, list[dict[str, Any]]]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            await catalog.ensure_stream(js, venue, 1)
            lease = await lead(js, venue)
            before = requests_made(sandbox)
            await leader_sync(leader, js, venue, lease)
            leader_requests = requests_made(sandbox) - before
            before = requests_made(sandbox)
            statuses = [await follow(js, venue, tmp_path / f"gate{i}" / "cache.db")
                        for i in range(2)]
            gate_requests = requests_made(sandbox) - before
            # a delta pass after a change on the platform reaches the gates too
            code = next(iter(items(leader.cache_path).values()))[0]
            sandbox.change_item(code, "refunded")
            await leader_sync(leader, js, venue, lease)
            for i in range(2):
                statuses.append(await follow(js, venue, tmp_path / f"gate{i}" / "cache.db"))
            return leader_requests, gate_requests, len(statuses), statuses
        finally:
            await nc.close()

    for i in range(2):
        (tmp_path / f"gate{i}").mkdir()
    leader_requests, gate_requests, _n, statuses = asyncio.run(scenario())
    # a whole venue's sync costs one device's: events, zones, and ceil(items / 1000) pages
    # (plus the async listing's polls)
    assert 3 <= leader_requests <= 3 + 2 * (TICKETS // 1000 + 1)
    assert gate_requests == 0
    want = items(leader.cache_path)
    assert len(want) > TICKETS * 0.9
    for i in range(2):
        got = items(tmp_path / f"gate{i}" / "cache.db")
        assert got == want
    assert any(v[2] == "refunded" for v in items(tmp_path / "gate0" / "cache.db").values())
    assert statuses[0]["passes_applied"] >= 1 and statuses[0]["stale_dropped"] == 0
    # no personal data the gate does not keep crossed the bus (the sandbox sends it)
    raw = orjson.loads(next(iter(want.values()))[3])
    assert set(PERSONAL_FIELDS).isdisjoint(raw.get("stable") or {})
    assert raw["stable"]["customerName"]  # what the gate keeps is kept
    cache = TicketCache(tmp_path / "gate1" / "cache.db")
    try:
        assert [e.id for e in cache.events()] and cache.zones(EVENT)
        state = cache.sync_state(EVENT)
        assert state is not None and state["cursor"]  # a later leader deltas from here
    finally:
        cache.close()


def test_a_pass_is_applied_whole_and_older_terms_are_dropped(
        shared_venue_node: NodeProcess, sandbox: Sandbox, tmp_path: Path) -> None:
    venue = "atomic"
    leader = make_site(tmp_path / "leader", sandbox, rpm=1000)
    gate = tmp_path / "gate" / "cache.db"
    gate.parent.mkdir()
    subject = f"{catalog.prefix(venue)}"

    async def scenario() -> list[int]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            await catalog.ensure_stream(js, venue, 1)
            lease = await lead(js, venue)
            await leader_sync(leader, js, venue, lease)
            await follow(js, venue, gate)
            sizes = [len(items(gate))]
            some = list(items(leader.cache_path).items())[:3]
            new_ids = [9_000_001, 9_000_002]
            # a pass in progress: two new items, no marker yet -> not applied
            for new_id in new_ids:
                raw = {**orjson.loads(some[0][1][3]), "id": new_id}
                await js.publish(f"{subject}.i.{EVENT}.{new_id}", orjson.dumps(raw),
                                 headers=stamp_headers(lease.stamp()))
            await follow(js, venue, gate)
            sizes.append(len(items(gate)))
            # an old leader's late message (older term) is dropped, the marker applies the pass
            stale = {**orjson.loads(some[1][1][3]), "id": 9_000_003}
            await js.publish(f"{subject}.i.{EVENT}.9000003", orjson.dumps(stale),
                             headers=stamp_headers(Term(lease.epoch, lease.term - 1)))
            await js.publish(f"{subject}.pass.{EVENT}", orjson.dumps(
                {"endTime": None, "full": False, "at": "x"}),
                headers=stamp_headers(lease.stamp()))
            status = await follow(js, venue, gate)
            sizes.append(len(items(gate)))
            sizes.append(status["stale_dropped"])
            return sizes
        finally:
            await nc.close()

    first, during, after, dropped = asyncio.run(scenario())
    assert during == first  # half a pass: nothing of it
    assert after == first + 2  # the whole pass, not the stale item
    assert dropped == 1


def test_a_big_pass_is_written_in_chunks_and_a_restart_resumes_after_the_last(
        shared_venue_node: NodeProcess, sandbox: Sandbox, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A gate joining late reads the whole catalog before the first pass marker. It holds at
    most `FLUSH_ITEMS` item messages (here 500) before writing them with the position they
    reached, so its memory does not grow with the venue (about 4 KB an item: ~4 GB at 1M
    items, when the whole pass was held). A follower stopped mid-way (a restart) resumes from
    the last chunk's position; the cache ends the leader's, with the pass's cursor."""
    monkeypatch.setattr(catalog, "FLUSH_ITEMS", 500)
    venue = "chunks"
    leader = make_site(tmp_path / "leader", sandbox, rpm=1000)
    gate = tmp_path / "gate" / "cache.db"
    gate.parent.mkdir()
    most: list[int] = []

    class Watched(catalog.CatalogFollower):
        def _buffer(self, event_id: int, item_id: int, item: Any) -> None:
            super()._buffer(event_id, item_id, item)
            most.append(self._buffered)

    class Died(Exception):
        pass

    class DiesAfterTwoChunks(Watched):
        def _flush(self, seq: int) -> None:
            super()._flush(seq)
            if self.counters["chunks_applied"] == 2:
                raise Died

    async def scenario() -> tuple[int, dict[str, Any], dict[str, Any]]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            await catalog.ensure_stream(js, venue, 1)
            await leader_sync(leader, js, venue, await lead(js, venue))
            cache = TicketCache(gate)
            try:  # the process dies right after its second chunk is committed
                first = DiesAfterTwoChunks(js, venue, cache)
                with pytest.raises(Died):
                    await first.catch_up(60)
                stopped = {"position": first.position, "items": len(items(gate)),
                           "chunks": first.counters["chunks_applied"]}
            finally:
                cache.close()
            cache = TicketCache(gate)
            try:
                again = Watched(js, venue, cache)
                resumed_at = again.position
                await again.catch_up(60)
                return resumed_at, stopped, again.get_status()
            finally:
                cache.close()
        finally:
            await nc.close()

    resumed_at, stopped, status = asyncio.run(scenario())
    assert max(most) == 500  # never more buffered than a chunk
    assert stopped["chunks"] == 2 and stopped["items"] == 1000 and stopped["position"] > 1000
    assert resumed_at == stopped["position"]  # read on from the second chunk's end
    want = items(leader.cache_path)
    assert items(gate) == want and len(want) > TICKETS * 0.9
    assert status["passes_applied"] >= 1
    with sqlite3.connect(gate) as db:
        assert db.execute("SELECT cursor FROM sync_state WHERE event_id = ?",
                          (EVENT,)).fetchone()[0]


def test_a_pairing_at_a_station_reaches_every_gate_at_once(
        shared_venue_node: NodeProcess, sandbox: Sandbox, tmp_path: Path) -> None:
    venue = "pairing"
    station_site = make_site(tmp_path / "station", sandbox, rpm=1000, extra=f"""
[venue]
name = "{venue}"
servers = ["{shared_venue_node.url}"]
device = "station"
""")
    gate = tmp_path / "gate" / "cache.db"
    gate.parent.mkdir()

    async def fill() -> None:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            await catalog.ensure_stream(js, venue, 1)
            await leader_sync(station_site, js, venue, await lead(js, venue))
            await follow(js, venue, gate)
        finally:
            await nc.close()

    asyncio.run(fill())
    barcode = next(iter(items(gate).values()))[0]
    with PairingStation(station_site.config) as station:
        result = station.pair(barcode, "04:A1:B2:C3:D4:E5:F6")
    status = asyncio.run(_follow_url(shared_venue_node.url, venue, gate))
    cache = TicketCache(gate)
    try:
        hits = cache.find_nfc(result.nfc_id)
        assert [h.item.id for h in hits] == [result.item_id]
        assert status["pairings"] == 1
    finally:
        cache.close()


async def _follow_url(url: str, venue: str, path: Path) -> dict[str, Any]:
    nc, js = await connect({"servers": [url]}, 5.0)
    try:
        return await follow(js, venue, path)
    finally:
        await nc.close()


async def _publish_a_ghost(js: Any, venue: str, lease: Lease, leader: Site,
                           ghost_id: int) -> catalog.CatalogPublisher:
    """An item the platform does not list (a copy of a cached one under `ghost_id`), in the
    leader's cache and published as a delta pass had: what a full pass must remove. Returns
    the leader's publisher."""
    raw = orjson.loads(next(iter(items(leader.cache_path).values()))[3])
    ghost = parse_item({**raw, "id": ghost_id, "barcode": f"GHOST{ghost_id}"})
    assert ghost is not None
    publisher = catalog.CatalogPublisher(js, venue, lease)
    await publisher.page(EVENT, EntryPage([ghost], [ghost.raw], None, 1, None))
    await publisher.pass_done(EVENT, None, False)
    cache = TicketCache(leader.cache_path)
    with cache.transaction():
        cache.put_items(EVENT, [ghost])
    cache.close()
    return publisher


def test_the_leaders_full_pass_removes_items_no_longer_listed_at_every_gate(
        shared_venue_node: NodeProcess, sandbox: Sandbox, tmp_path: Path) -> None:
    """An item a previous pass published that the platform no longer lists (a ghost): the
    leader's daily full pass removes it from its own cache, from every following gate's
    cache (atomically with the pass) and on the stream (its tombstone replaces it: a gate
    joining later never sees it)."""
    venue = "fullpass"
    leader = make_site(tmp_path / "leader", sandbox, rpm=1000)
    ghost_id = 987_654_321

    async def scenario() -> dict[str, Any]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            await catalog.ensure_stream(js, venue, 1)
            lease = await lead(js, venue)
            await leader_sync(leader, js, venue, lease)
            publisher = await _publish_a_ghost(js, venue, lease, leader, ghost_id)
            gate = tmp_path / "gate" / "cache.db"
            await follow(js, venue, gate)
            before = items(gate)
            requests = requests_made(sandbox)
            async with leader.client() as client:
                syncer = leader.syncer(client, observer=publisher)
                try:
                    listed = await syncer.full_in_place()
                finally:
                    syncer.close()
            requests = requests_made(sandbox) - requests
            status = await follow(js, venue, gate)
            late = await follow(js, venue, tmp_path / "late" / "cache.db")
            last = await js.get_msg(catalog.stream_name(venue),
                                    subject=f"{catalog.prefix(venue)}.i.{EVENT}.{ghost_id}")
            return {"before": before, "listed": listed, "status": status, "late": late,
                    "requests": requests, "ghost_msg": last.data,
                    "removed": publisher.removed_items}
        finally:
            await nc.close()

    for name in ("gate", "late"):
        (tmp_path / name).mkdir()
    out = asyncio.run(scenario())
    assert ghost_id in out["before"]  # the gate had it from the bus
    want = items(leader.cache_path)
    assert ghost_id not in want and len(want) == out["listed"]
    assert items(tmp_path / "gate" / "cache.db") == want
    assert items(tmp_path / "late" / "cache.db") == want
    assert out["status"]["items_removed"] == 1 and out["status"]["full_passes_applied"] == 1
    assert out["ghost_msg"] == catalog.TOMBSTONE and out["removed"] == 1  # the bus says so
    assert out["requests"] <= 3 + 2 * (TICKETS // 1000 + 1)  # one device's full sync


def test_a_delta_beside_the_leaders_full_pass_reaches_every_gate_in_order(
        shared_venue_node: NodeProcess, sandbox: Sandbox, tmp_path: Path) -> None:
    """The leader's delta runs between two pages of its daily full pass (agent.platform.sync
    .Syncer.full_in_place takes the live lock page by page) and publishes its pass in between:
    a following gate applies the refund at the delta's marker, not at the full pass's end;
    after the pass every gate's cache is the leader's, the refund kept and the ghost (an item
    the platform does not list) removed."""
    venue = "fullbeside"
    leader = make_site(tmp_path / "leader", sandbox, rpm=1000)
    ghost_id = 987_654_322
    barcode = "SF0002100"  # on the full listing's third page

    async def scenario() -> dict[str, Any]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            await catalog.ensure_stream(js, venue, 1)
            lease = await lead(js, venue)
            await leader_sync(leader, js, venue, lease)
            publisher = await _publish_a_ghost(js, venue, lease, leader, ghost_id)
            gate = tmp_path / "gate" / "cache.db"
            await follow(js, venue, gate)
            assert ghost_id in items(gate)
            mid: dict[str, Any] = {}
            async with leader.client() as client:
                syncer = leader.syncer(client, observer=publisher)
                original = client.entry_tickets
                deltas: list[asyncio.Task[int]] = []

                async def refund_after_the_first_full_page(*args: Any, **kw: Any) -> Any:
                    page = await original(*args, **kw)
                    if kw.get("start_time") is None and not deltas:
                        sandbox.change_item(barcode, "refunded")
                        deltas.append(asyncio.create_task(syncer.sync_tickets(EVENT)))
                    elif kw.get("start_time") is None and deltas[0].done() and not mid:
                        mid["status"] = await follow(js, venue, gate)  # before page 3
                        mid["refund"] = [v[2] for v in items(gate).values() if v[0] == barcode]
                    return page

                client.entry_tickets = refund_after_the_first_full_page  # type: ignore
                try:
                    listed = await syncer.full_in_place()
                    await deltas[0]
                finally:
                    syncer.close()
            return {"listed": listed, "mid": mid, "status": await follow(js, venue, gate),
                    "late": await follow(js, venue, tmp_path / "late" / "cache.db")}
        finally:
            await nc.close()

    for name in ("gate", "late"):
        (tmp_path / name).mkdir()
    out = asyncio.run(scenario())
    assert out["mid"]["refund"] == ["refunded"]  # at the delta's marker, mid-pass
    assert out["mid"]["status"]["full_passes_applied"] == 0
    want = items(leader.cache_path)
    assert ghost_id not in want and [v[2] for v in want.values() if v[0] == barcode] == \
        ["refunded"]
    assert items(tmp_path / "gate" / "cache.db") == want
    assert items(tmp_path / "late" / "cache.db") == want
    assert out["status"]["items_removed"] == 1 and out["status"]["full_passes_applied"] == 1


def test_the_leaders_sync_loop_runs_the_daily_full_pass_and_schedules_the_next(
        shared_venue_node: NodeProcess, sandbox: Sandbox, tmp_path: Path) -> None:
    """The leader's sync loop (agent.venue.leader_sync, a `VenueRole`'s) runs the full pass
    when it is due (here: asked for at once, as `sync.full_resync_at` would at 04:00),
    publishes it as a full pass every gate applies, and schedules the next one a day later."""
    venue = "dailyfull"
    site = make_site(tmp_path / "leader", sandbox, rpm=1000, extra=(
        f'[venue]\nname = "{venue}"\nservers = ["{shared_venue_node.url}"]\n'
        'device = "leader"\n'))

    async def scenario() -> tuple[VenueRole, dict[str, Any]]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            await catalog.ensure_stream(js, venue, 1)
            lease = await lead(js, venue)
            role = VenueRole(site.config, sandbox.token)
            role.lead.passes.full_resync_now()
            async with site.client() as client:
                syncer = site.syncer(client, observer=catalog.CatalogPublisher(js, venue, lease))
                task = asyncio.create_task(role.lead.passes.run(syncer))
                try:
                    deadline = asyncio.get_running_loop().time() + 60
                    while role.lead.passes.last_full is None and not task.done() and \
                            asyncio.get_running_loop().time() < deadline:
                        await asyncio.sleep(0.1)
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    syncer.close()
            return role, await follow(js, venue, tmp_path / "gate" / "cache.db")
        finally:
            await nc.close()

    (tmp_path / "gate").mkdir()
    started = time.time()
    role, status = asyncio.run(scenario())
    passes = role.lead.passes
    assert passes.last_full is not None, role.counters
    want = items(site.cache_path)
    assert passes.last_full["items"] == len(want) > TICKETS * 0.9
    assert passes.next_full is not None and passes.next_full > started + 60  # tomorrow's
    # the loop's next delta marker replaces the full pass's (last message per subject): a
    # gate reading later applies the same items, with that marker
    assert status["passes_applied"] >= 1
    assert items(tmp_path / "gate" / "cache.db") == want


def test_a_requested_pass_is_refused_once_the_lease_is_gone_and_sends_nothing(
        shared_venue_node: NodeProcess, sandbox: Sandbox, tmp_path: Path) -> None:
    """A gate's `gate-agent sync` reaches the leader's subscription (agent.venue.passrequest)
    until its step-down unsubscribes it, while its lease may be gone already. Asked then, the
    device refuses (NotLeader, told to the asking gate) and sends the platform nothing; the
    same request under a valid lease is run (so the refusal is the lease's)."""
    venue = "askedpass"
    site = make_site(tmp_path / "leader", sandbox, rpm=1000)
    request = PassRequest(full=False, events=(EVENT,), device="gate-2")

    async def scenario() -> tuple[str, int, dict[str, Any]]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            await catalog.ensure_stream(js, venue, 1)
            lease = await lead(js, venue)
            passes = LeaderSync(site.config, venue, "leader", {"leader_errors": 0})
            async with site.client() as client:
                syncer = site.syncer(client, observer=catalog.CatalogPublisher(js, venue, lease))
                try:
                    await lease.release()
                    before = requests_made(sandbox)
                    try:
                        await passes.requested(request, syncer, client, lease, js)
                        refusal = "run"
                    except NotLeader as exc:
                        refusal = str(exc)
                    sent = requests_made(sandbox) - before
                    assert await lease.acquire("now")
                    answer = await passes.requested(request, syncer, client, lease, js)
                finally:
                    syncer.close()
            return refusal, sent, answer
        finally:
            await nc.close()

    refusal, sent, answer = asyncio.run(scenario())
    assert sent == 0, refusal
    assert refusal == f"leader does not lead venue {venue} now"
    assert answer["leader"] == "leader" and answer["mode"] == "delta"
    assert answer["applied"] > 0 and answer["requests"] > 0
