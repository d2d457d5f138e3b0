"""The lease bucket deleted and made again (an operator's `nats kv rm`, a node's data wiped):
its revisions, the leader terms, start again at 1 (real nats-server, the real `Syncer` against
the sandbox, a real SQLite cache following the catalog).

Before terms carried the bucket's creation time (agent.venue.lease `Term`), every gate had
stored the old leader's term and dropped every catalog message of the new leader as stale, for
good: a ticket refunded on the platform after the loss stayed valid at every gate (admitted:
fail open)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.sandbox.harness import Sandbox, start_sandbox
from agent.store.cache import MIGRATIONS, TicketCache
from agent.store.sqlite import migrate, open_database
from agent.venue import catalog
from agent.venue.election import connect, lease_bucket
from agent.venue.leader import VenueRole
from agent.venue.lease import Lease, bucket_name
from agent.venue.node import NodeProcess
from agent.venue.term import Term
from tests.platform.sync.conftest import make_site
from tests.venue.test_catalog import follow, items, leader_sync

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("quick_stream_watch")]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with start_sandbox(tickets=40, async_delay_s=0.02, rpm=1000) as sb:
        yield sb


async def _lead(js: Any, venue: str, holder: str) -> Lease:
    lease = Lease(await lease_bucket(js, venue, 30.0, 1), holder, 30.0)
    assert await lease.acquire("now")
    return lease


def test_a_new_leader_after_the_lease_bucket_was_made_again_is_followed(
        venue_node: NodeProcess, sandbox: Sandbox, tmp_path: Path) -> None:
    venue = "relet"
    leader = make_site(tmp_path / "leader", sandbox, rpm=1000)
    gate = tmp_path / "gate" / "cache.db"
    gate.parent.mkdir()

    async def scenario() -> tuple[str, dict[str, Any], dict[str, Any]]:
        nc, js = await connect({"servers": [venue_node.url]}, 5.0)
        try:
            await catalog.ensure_stream(js, venue, 1)
            old = await _lead(js, venue, "old")
            for _ in range(3):  # a few renewals: the old bucket's revisions are past 1
                assert await old.renew()
            await leader_sync(leader, js, venue, old)
            await follow(js, venue, gate)
            code = next(iter(items(gate).values()))[0]
            # the bucket is deleted and made again; the old leader is frozen, its local grant
            # still valid: whatever it still publishes must be dropped
            await js.delete_key_value(bucket_name(venue))
            new = await _lead(js, venue, "new")
            sandbox.change_item(code, "refunded")
            await leader_sync(leader, js, venue, new)
            after_new = await follow(js, venue, gate)
            sandbox.change_item(code, "valid")  # what the frozen leader's late pass says
            assert old.valid()
            await leader_sync(leader, js, venue, old)
            after_old = await follow(js, venue, gate)
            return code, after_new, after_old
        finally:
            await nc.close()

    code, after_new, after_old = asyncio.run(scenario())
    status = {barcode: st for barcode, _nfc, st, _raw in items(gate).values()}
    assert status[code] == "refunded"  # the new leader's pass applied, the old one's not
    assert after_new["stale_dropped"] == 0 and after_new["passes_applied"] >= 1
    assert after_old["stale_dropped"] >= 1 and after_old["passes_applied"] == 0


class MadeAgainAfterCreate:
    """The lease bucket, deleted and made again (for real, on the server) right after the
    create that wins it: the moment no reading of the bucket's creation time can show."""

    def __init__(self, kv: Any, js: Any, venue: str):
        self.kv, self.js, self.venue = kv, js, venue

    async def create(self, key: str, value: bytes) -> int:
        revision = int(await self.kv.create(key, value))
        await self.js.delete_key_value(bucket_name(self.venue))
        await lease_bucket(self.js, self.venue, 30.0, 1)
        return revision

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kv, name)


def test_a_grant_in_a_bucket_made_again_meanwhile_is_not_trusted(
        venue_node: NodeProcess) -> None:
    """The old bucket's revision with the new bucket's creation time would be a term above
    the new bucket's real leader: the acquire reads the creation time before and after."""
    venue = "remade"

    async def scenario() -> tuple[bool, str | None, bool, Term]:
        nc, js = await connect({"servers": [venue_node.url]}, 5.0)
        try:
            kv = await lease_bucket(js, venue, 30.0, 1)
            for _ in range(3):  # the old bucket's revisions are past 1
                await kv.put("other", b"x")
            lease = Lease(MadeAgainAfterCreate(kv, js, venue), "gate", 30.0)
            granted = await lease.acquire("now")  # won in the old bucket (revision 4)
            why = lease.last_error
            rival = Lease(kv, "rival", 30.0)
            assert await rival.acquire("now")  # the new bucket's leader (revision 1)
            lease.kv = kv
            again = await lease.acquire("now")  # the new bucket's key is the rival's
            return granted, why, again, rival.stamp()
        finally:
            await nc.close()

    granted, why, again, rival = asyncio.run(scenario())
    assert not granted and "made again" in (why or "") and not again
    assert rival.revision == 1


def test_terms_order_by_bucket_first_and_stored_terms_of_before_rank_lowest(tmp_path: Path) -> None:
    assert Term(2, 1) > Term(1, 900) > Term(1, 899) > Term(0, 10**6) > Term(0, 0)
    # a cache of before keeps its term, as the lowest epoch (migration 0007)
    path = tmp_path / "cache.db"
    db = open_database(path, synchronous="NORMAL")
    migrate(db, [m for m in MIGRATIONS if m[0] != "0007_catalog_term_epoch"])
    db.conn.execute("INSERT INTO venue_catalog (stream, last_seq, term) VALUES ('C', 9, 500)")
    db.conn.close()
    cache = TicketCache(path)
    try:
        assert cache.catalog_position("C") == (9, 0, 500)
        with cache.transaction():  # a later bucket's term wins over a larger revision
            cache.set_catalog_position("C", 10, (5, 1))
        assert cache.catalog_position("C") == (10, 5, 1)
        with cache.transaction():  # an older term never replaces the newest seen
            cache.set_catalog_position("C", 11, (0, 900))
        assert cache.catalog_position("C") == (11, 5, 1)
    finally:
        cache.close()
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM venue_catalog").fetchone() == (1,)


@pytest.mark.slow
def test_a_running_leader_leads_again_in_a_lease_bucket_deleted_under_it(
        venue_node: NodeProcess, sandbox: Sandbox, tmp_path: Path) -> None:
    """`nats kv rm` of the lease bucket under running gates: nothing made it again within a
    session, so every create failed and the venue had no leader until the gates restarted.
    Now the session ends, its setup makes the bucket again, the gate leads in it, and its
    catalog (the follower of the same gate) takes the new bucket's term."""
    site = make_site(tmp_path / "leader", sandbox, rpm=1000, extra=(
        f'\n[sync]\ndelta_interval_s = 1\n\n[venue]\nname = "relead"\n'
        f'servers = ["{venue_node.url}"]\ndevice = "solo"\nlease_ttl_s = 4\n'))
    site.config.store_dir.mkdir(parents=True, exist_ok=True)

    async def scenario() -> tuple[Term, Term, dict[str, Any]]:
        nc, js = await connect({"servers": [venue_node.url]}, 5.0)
        role = VenueRole(site.config, sandbox.token)
        stop = asyncio.Event()
        runner = asyncio.create_task(role.run(stop))

        def term_now() -> Term | None:
            lease = role.election.lease if role.election is not None else None
            return lease.stamp() if lease is not None and lease.valid() else None

        async def until(check: Any, what: str) -> None:
            deadline = asyncio.get_running_loop().time() + 40
            while not check():
                assert asyncio.get_running_loop().time() < deadline, what
                await asyncio.sleep(0.1)

        try:
            await until(lambda: term_now() is not None and role.follower is not None
                        and role.follower.term == term_now(), "leading, its catalog followed")
            first = term_now()
            assert first is not None
            await js.delete_key_value(bucket_name("relead"))  # and nobody makes it again

            def leads_anew() -> bool:
                now = term_now()
                return now is not None and now > first and role.follower is not None \
                    and role.follower.term == now
            await until(leads_anew, "leading in a new bucket, its catalog followed")
            later = term_now()
            assert later is not None and role.follower is not None
            return first, later, role.follower.get_status()
        finally:
            stop.set()
            await asyncio.wait_for(runner, 30)
            await nc.close()

    first, later, status = asyncio.run(scenario())
    assert later.epoch > first.epoch and status["stale_dropped"] == 0
