"""The venue's KV buckets deleted under running gates (`nats kv rm`, a node's data wiped):
budget, quarantine, batches and heartbeats, as the streams and the lease bucket before them
(agent.venue.stream_identity `StreamWatch`: gone 5 s, or made again, ends the session; its
setup makes the bucket again and deals with what was lost, agent.venue.lost_streams
`adopt_buckets`). Real `VenueRole`s and gates on a real nats-server, uploading to the
sandbox, real SQLite files.

Before: nothing looked at these buckets. A bucket deleted and not made again failed every
write for good (no platform request without the budget's log, no upload without the
batches, no heartbeat); one made again empty by another gate's session said "nobody spent
anything" to the next leader (a failover then spent the company's budget a second time: 429
for every device of the company) and "nothing quarantined" (the rows the platform refused,
never to be dropped, gone)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.ops.status import evaluate
from agent.sandbox.harness import Sandbox, start_sandbox
from agent.store.journal import Journal
from agent.store.venue import VENUE_FILE, VenueStore
from agent.venue import budget, quarantine, stream_identity, uplink
from agent.venue.election import connect
from agent.venue.heartbeat import bucket_names
from agent.venue.leader import VenueRole
from agent.venue.node import NodeProcess
from agent.venue.streams import kv_stream
from tests.platform.sync.conftest import (
    Site,
    backlog,
    fill_journal,
    make_site,
    pending_row,
    uploaded_uuids,
)
from tests.venue.rig import venue_devices, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.usefixtures("quick_stream_watch")]
RPM = 100


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with start_sandbox(tickets=50, async_delay_s=0.02, rpm=1000) as sb:
        yield sb


def _site(root: Path, sandbox: Sandbox, node: NodeProcess, venue: str, device: str,
          leads: bool) -> Site:
    site = make_site(root / device, sandbox, name=device, rpm=RPM, extra=(
        f'\n[sync]\nupload_batch_size = 5\nupload_interval_s = 1\n\n[venue]\n'
        f'name = "{venue}"\nservers = ["{node.url}"]\ndevice = "{device}"\n'
        f'lease_ttl_s = 4\nleader = {"true" if leads else "false"}\n'))
    site.config.store_dir.mkdir(parents=True, exist_ok=True)
    return site


def _journal_rows(site: Site, rows: list[Any]) -> None:
    journal = Journal(site.config.store_dir / "journal.db")
    try:
        fill_journal(journal, rows)
    finally:
        journal.close()


class Venue:
    """Roles running on one loop, a bus connection of the test's own, and the status reason
    codes any role showed meanwhile."""

    def __init__(self, sites: list[Site], sandbox: Sandbox, node: NodeProcess,
                 ack_wait_s: float = 10.0):
        """`ack_wait_s`: VenueRole's (how long a fetched batch not acked waits before the bus
        hands it to the next term)."""
        self.sites, self.sandbox, self.node = sites, sandbox, node
        self.roles = [VenueRole(site.config, sandbox.token, ack_wait_s=ack_wait_s)
                      for site in sites]
        self.stop = asyncio.Event()
        self.seen: set[str] = set()
        self.js: Any = None

    async def __aenter__(self) -> Venue:
        self.nc, self.js = await connect({"servers": [self.node.url]}, 5.0)
        self.runners = [asyncio.create_task(role.run(self.stop)) for role in self.roles]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.runners), 30)
        await self.nc.close()

    async def until(self, check: Callable[[], Awaitable[bool]], timeout: float,
                    what: str) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await check():
            for role in self.roles:
                _health, reasons = evaluate({"venue": {"connected": True,
                                                       "leader": role.get_status()}},
                                            datetime.now(UTC), 3600)
                self.seen.update(r.code for r in reasons)
            assert asyncio.get_running_loop().time() < deadline, what
            await asyncio.sleep(0.1)

    async def held(self, venue: str) -> set[str]:
        """Scan uuids in the quarantine bucket (none while it does not exist)."""
        kv = await quarantine.existing_bucket(self.js, venue)
        if kv is None:
            return set()
        try:
            return {e["row"]["uuid"] for e in await quarantine.listing(kv)}
        except Exception:  # noqa: BLE001 - the bucket is being made again
            return set()

    def leads(self, role: VenueRole) -> bool:
        return role.lead.uploader is not None and role.election is not None \
            and role.election.lease.valid()


def test_the_quarantine_deleted_under_the_venue_is_filled_again_from_the_journals(
        tmp_path: Path, venue_node: NodeProcess, sandbox: Sandbox) -> None:
    """The platform refused two rows (unknown barcodes): quarantined on the bus, never to be
    dropped. The bucket deleted, the venue's sessions end and make it again, the member hands
    every scan it handed over since the lost bucket was made over again: the platform keeps
    the rows it has once (scan uuid), refuses the two again, and they are quarantined again."""
    venue = "heldq"
    lead = _site(tmp_path, sandbox, venue_node, venue, "lead", True)
    member = _site(tmp_path, sandbox, venue_node, venue, "member", False)
    now = datetime.now(UTC).replace(microsecond=0)
    good = backlog(10, now)
    poison = [pending_row(f"NOPE{i}", now) for i in range(2)]
    _journal_rows(member, good[:5] + [poison[0]] + good[5:] + [poison[1]])
    want_held = {p.uuid for p in poison}

    async def scenario() -> dict[str, Any]:
        async with Venue([lead, member], sandbox, venue_node) as v:
            async def quarantined() -> bool:
                return await v.held(venue) == want_held
            await v.until(quarantined, 60, "the two refused rows quarantined")
            await v.js.delete_key_value(quarantine.bucket_name(venue))  # `nats kv rm`
            await v.until(quarantined, 60, "the two refused rows quarantined again")
            await v.until(lambda: _true(not v.roles[1].losses.buckets_lost), 30, "cleared")
            return v.roles[1].get_status()

    status = asyncio.run(scenario())
    applied = Counter(uploaded_uuids(sandbox))
    assert set(applied) == {r.uuid for r in good} and max(applied.values()) == 1
    refused = Counter(u["uuid"] for u in sandbox.received()["uploads"]
                      if u.get("skipped") == "refused 422")
    assert all(refused[p.uuid] == 2 for p in poison), refused  # once per bucket
    assert status["buckets_made_again"] >= 1 and status["buckets_lost"] == {}


async def _true(value: bool) -> bool:
    return value


def test_a_budget_log_lost_under_the_leader_counts_the_whole_budget_as_spent(
        tmp_path: Path, venue_node: NodeProcess, sandbox: Sandbox) -> None:
    """The budget bucket deleted under the leader: the bucket made again is empty, while the
    requests of the last minute still count at the platform. The next term (here the same
    device's: its session ended and it leads again) takes the company's whole budget as
    spent then, and a gate restarted meanwhile does too (venue.db keeps the lost bucket's
    creation time until the lost requests no longer count)."""
    venue = "spent"
    lead = _site(tmp_path, sandbox, venue_node, venue, "lead", True)
    stream = kv_stream(budget.bucket_name(venue))
    db = lead.config.store_dir / VENUE_FILE

    async def leading_again(v: Venue, role: VenueRole) -> None:
        async def seeded() -> bool:
            return v.leads(role) and role.counters["seeded_requests"] >= RPM
        await v.until(seeded, 60, "leading again, the lost log's budget counted")

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], int, set[str]]:
        async with Venue([lead], sandbox, venue_node) as v:
            role = v.roles[0]
            await v.until(lambda: _true(v.leads(role) and role.lead.fence is not None
                                        and bool(role.lead.fence.sent)), 60, "leading, requests")
            first = role.election.lease.stamp() if role.election else None
            await v.js.delete_key_value(budget.bucket_name(venue))  # `nats kv rm`
            await leading_again(v, role)
            assert role.election is not None and role.election.lease.stamp() != first
            assert role.lead.client is not None
            governor = role.lead.client.governor.get_status()
            status = role.get_status()
            seen = set(v.seen)
        # the daemon restarts within the minute: the loss is found again from venue.db
        async with Venue([lead], sandbox, venue_node) as again:
            await leading_again(again, again.roles[0])
            assert again.roles[0].lead.client is not None
            restarted = again.roles[0].lead.client.governor.get_status()["remaining"]
            info = await again.js.stream_info(stream)
        recorded = VenueStore(db)
        try:
            assert recorded.stream_created(stream) != stream_identity.created_of(info)
        finally:
            recorded.close()
        return governor, status, restarted, seen

    governor, status, restarted, seen = asyncio.run(scenario())
    assert governor["remaining"] == 0 and restarted == 0  # nothing may be sent yet
    assert stream in status["buckets_lost"] and status["budget_unknown_for_s"] > 0
    assert "venue_bucket_lost" in seen


def test_the_batches_deleted_under_the_leader_are_made_again_and_uploads_go_on(
        tmp_path: Path, venue_node: NodeProcess, sandbox: Sandbox) -> None:
    """The leader stores each batch in `VENUE_<name>_BATCHES` before sending it. Deleted
    under it, every later batch's store failed, for good: no scan of the venue reached the
    platform again until its term changed. Now the session ends and the next term makes it
    again (a batch fetched meanwhile and not acked is sent by the next term under a new
    request uuid: the platform keeps each scan once). (A batch whose store failed was still
    sent by the next round, but never acked: its messages stayed on the bus for good.)"""
    venue = "batchq"
    lead = _site(tmp_path, sandbox, venue_node, venue, "lead", True)
    member = _site(tmp_path, sandbox, venue_node, venue, "member", False)
    now = datetime.now(UTC).replace(microsecond=0)
    scans = backlog(14, now)
    first, later = scans[:8], scans[8:]
    _journal_rows(member, first)

    async def uploaded(want: list[Any]) -> bool:
        got = await asyncio.to_thread(uploaded_uuids, sandbox)
        return {r.uuid for r in want} <= set(got)

    async def scenario() -> dict[str, Any]:
        # a batch fetched while the bucket is gone waits ack_wait_s for the next term (10 s
        # by default: 2 s is still far longer than a batch of 5 takes to the sandbox)
        async with Venue([lead, member], sandbox, venue_node, ack_wait_s=2.0) as v:
            await v.until(lambda: uploaded(first), 60, "the first scans at the platform")
            await v.js.delete_key_value(uplink.batches_bucket(venue))  # `nats kv rm`
            await asyncio.to_thread(_journal_rows, member, later)  # batches to store
            await v.until(lambda: uploaded(first + later), 60, "every scan at the platform")

            async def settled() -> bool:  # the bucket made again, every message acked
                try:
                    await v.js.stream_info(kv_stream(uplink.batches_bucket(venue)))
                except Exception:  # noqa: BLE001 - not found (yet)
                    return False
                up = v.roles[0].lead.uploader
                return up is not None and await up.lag() == 0 \
                    and not any(up.members.values())
            await v.until(settled, 60, "the batches bucket made again, nothing left unacked")
            return v.roles[0].get_status()

    status = asyncio.run(scenario())
    applied = Counter(uploaded_uuids(sandbox))
    assert set(applied) == {r.uuid for r in first + later} and max(applied.values()) == 1
    assert status["buckets_made_again"] >= 1


def test_heartbeat_buckets_deleted_under_the_gates_are_opened_again(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """`gates_<venue>` and `roster_<venue>` deleted: every beat failed and every watcher was
    silent until the gates restarted (every gate shown stale, no new measurement of the
    clocks). Now each gate's heartbeat link finds them gone, makes them again and watches
    them: a beat put afterwards reaches the other gate."""
    with venue_devices(tmp_path, [venue_node.url], 2, 1) as (a, b):
        for device in (a, b):
            device.calibrate()

        async def delete() -> None:
            nc, js = await connect({"servers": [venue_node.url]}, 5.0)
            try:
                for name in bucket_names("hall"):
                    await js.delete_key_value(name)
            finally:
                await nc.close()

        asyncio.run(delete())

        def b_seen_again() -> bool:
            b.bus.beat(orjson.dumps({"device": "g2", "again": True}))
            return any(r["device"] == "g2" and r.get("again") and r["state"] == "online"
                       for r in a.bus.board.rows())
        wait_until(b_seen_again, 40, "b's beat after the buckets were made again, at a")

        async def exist() -> list[str]:
            nc, js = await connect({"servers": [venue_node.url]}, 5.0)
            try:
                return [(await js.stream_info(kv_stream(n))).config.name
                        for n in bucket_names("hall")]
            finally:
                await nc.close()

        assert asyncio.run(exist()) == [kv_stream(n) for n in bucket_names("hall")]
