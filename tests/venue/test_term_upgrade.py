"""The leader term across a rolling upgrade of a venue's gates (agent.venue.term).

One version wrote the term as `Venue-Leader-Term: <epoch>/<revision>`; every gate still running
the code of before parsed it as an integer, failed, and dropped the upgraded leader's whole
catalog as stale until it was upgraded too: refunds and blocks never applied there (a
fail-open). The term is now the bare revision every version reads, plus `Venue-Leader-Epoch`.

The readers and writers of before are copied verbatim from git history below (each says from
which commit), so these tests hold the new code to what the gates still running it do. The
messages go through a real nats-server; the leaders' passes are the real `Syncer` against the
sandbox; the gates' caches are real SQLite files."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.js.errors import NotFoundError

from agent.sandbox.harness import Sandbox, start_sandbox
from agent.store.cache import TicketCache
from agent.venue import catalog
from agent.venue.catalog import PUBLISH_WINDOW, CatalogPublisher
from agent.venue.election import connect, lease_bucket
from agent.venue.lease import LEASE_KEY, Lease, current_leader
from agent.venue.node import NodeProcess
from agent.venue.term import (
    EPOCH_HEADER,
    TERM_HEADER,
    Stamp,
    Term,
    TermUnreadable,
    newer_or_same,
    read_stamp,
    stamp_headers,
)
from tests.platform.sync.conftest import EVENT, Site, make_site
from tests.venue.test_catalog import follow, items, leader_sync

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with start_sandbox(tickets=40, async_delay_s=0.02, rpm=1000) as sb:
        yield sb


# -- the code of before, verbatim ------------------------------------------------------------

def old_parse(msg: Any) -> int:
    """The reader of before: `CatalogFollower.subscribe.on_message`'s parse, copied verbatim
    from agent/venue/catalog.py at b064c6f (the last commit before 7f5daca changed the header);
    `msg` is a real message from the bus."""
    headers = msg.headers or {}
    try:
        term = int(headers.get(TERM_HEADER, "0"))
    except ValueError:
        term = -1
    return term


def old_keeps(term: int, newest: int) -> bool:
    """Its fence: `CatalogFollower._handle`'s `if term < self.term:` drop (b064c6f)."""
    return not term < newest


class PublisherOfBefore(CatalogPublisher):
    """A leader of before: `CatalogPublisher._send` copied verbatim from b064c6f."""

    async def _send(self, items: list[tuple[str, bytes]]) -> None:
        term = str(self.lease.guard())  # not leading (any more): the pass stops here
        headers = {TERM_HEADER: term}
        for start in range(0, len(items), PUBLISH_WINDOW):
            chunk = items[start:start + PUBLISH_WINDOW]
            await asyncio.gather(*(self.js.publish(s, b, headers=headers) for s, b in chunk))
            self.published += len(chunk)


class PublisherOfLastVersion(CatalogPublisher):
    """A leader of the one version that wrote `<epoch>/<revision>`: `_send` copied verbatim
    from 7f5daca, with `Term.header()` (`f"{self.epoch}/{self.revision}"`) inlined."""

    async def _send(self, items: list[tuple[str, bytes]]) -> None:
        term = self.lease.stamp()  # not leading (any more): the pass stops here
        headers = {TERM_HEADER: f"{term.epoch}/{term.revision}"}
        for start in range(0, len(items), PUBLISH_WINDOW):
            chunk = items[start:start + PUBLISH_WINDOW]
            await asyncio.gather(*(self.js.publish(s, b, headers=headers) for s, b in chunk))
            self.published += len(chunk)


async def _next_leader(previous: Lease, holder: str) -> Lease:
    """`previous`'s lease lost (deleted, as its expiry would; its local grant still valid):
    `holder` wins the next one in the same bucket."""
    await previous.kv.delete(LEASE_KEY)
    lease = Lease(previous.kv, holder, 30.0)
    assert await lease.acquire("now") and lease.term > previous.term
    return lease


async def _sync_as(publisher: type[CatalogPublisher], site: Site, js: Any, venue: str,
                   lease: Lease) -> None:
    """tests.venue.test_catalog.leader_sync with a leader of another version publishing."""
    observer = publisher(js, venue, lease)
    async with site.client() as client:
        syncer = site.syncer(client, observer=observer)
        try:
            await syncer.refresh_events()
            await syncer.sync_tickets(EVENT)
        finally:
            syncer.close()


async def _stream_messages(js: Any, venue: str) -> list[Any]:
    """Every message the catalog stream holds (the last one per subject)."""
    name = catalog.stream_name(venue)
    info = await js.stream_info(name)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            found.append(await js.get_msg(name, seq))
        except NotFoundError:  # replaced by a later message on its subject
            continue
    return found


async def _lead(js: Any, venue: str, holder: str) -> Lease:
    """A leader whose term's revision is past 1 (a parse to 0 or -1 would show)."""
    kv = await lease_bucket(js, venue, 30.0, 1)
    for _ in range(3):
        await kv.put("other", b"x")
    lease = Lease(kv, holder, 30.0)
    assert await lease.acquire("now")
    return lease


# -- tests -------------------------------------------------------------------------------------

def test_a_gate_of_before_reads_an_upgraded_leaders_terms(
        shared_venue_node: NodeProcess, sandbox: Sandbox, tmp_path: Path) -> None:
    """Every message an upgraded leader publishes, read back from the stream, parses with the
    reader of before to the leader's revision, which its fence keeps."""
    venue = "rolling-old-reader"
    leader = make_site(tmp_path / "leader", sandbox, rpm=1000)

    async def scenario() -> tuple[Term, list[Any]]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            await catalog.ensure_stream(js, venue, 1)
            lease = await _lead(js, venue, "upgraded")
            await leader_sync(leader, js, venue, lease)
            return lease.stamp(), await _stream_messages(js, venue)
        finally:
            await nc.close()

    term, messages = asyncio.run(scenario())
    assert len(messages) > 3 and term.epoch > 0 and term.revision > 1
    stored_by_gate_of_before = term.revision - 1  # the venue's previous leader
    for msg in messages:
        assert old_parse(msg) == term.revision, msg.headers
        assert old_keeps(old_parse(msg), stored_by_gate_of_before)
        assert read_stamp(msg.headers) == Stamp(term.revision, term.epoch)


def test_an_upgraded_gate_follows_leaders_of_every_version_and_fences_them(
        shared_venue_node: NodeProcess, sandbox: Sandbox, tmp_path: Path) -> None:
    """A rolling upgrade in one lease bucket: an upgraded leader, then (its lease lost, its
    process frozen) a leader of before, then one of the last version. An upgraded gate
    applies the refund the leader of before publishes, and drops the frozen upgraded
    leader's late pass that would undo it."""
    venue = "rolling-new-reader"
    site = make_site(tmp_path / "leader", sandbox, rpm=1000)
    gate = tmp_path / "gate" / "cache.db"
    gate.parent.mkdir()

    async def scenario() -> tuple[str, list[dict[str, Any]], list[dict[str, str]]]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            await catalog.ensure_stream(js, venue, 1)
            upgraded = await _lead(js, venue, "upgraded")
            await leader_sync(site, js, venue, upgraded)
            seen = [await follow(js, venue, gate)]
            code = next(iter(items(gate).values()))[0]

            async def publish(publisher: type[CatalogPublisher], lease: Lease,
                              status: str) -> None:
                sandbox.change_item(code, status)
                await _sync_as(publisher, site, js, venue, lease)
                seen.append(await follow(js, venue, gate))

            # the upgraded leader freezes (its local grant still valid); its lease expires
            # and a gate of before wins the next one in the same bucket
            before = await _next_leader(upgraded, "before")
            await publish(PublisherOfBefore, before, "refunded")
            assert upgraded.valid()  # its late pass says what the platform said before
            await publish(CatalogPublisher, upgraded, "valid")
            # the leader of before goes; one of the last version leads next
            last = await _next_leader(before, "last-version")
            await publish(PublisherOfLastVersion, last, "blocked")
            headers = [dict((await _stream_messages(js, venue))[-1].headers or {})]
            return code, seen, headers
        finally:
            await nc.close()

    code, seen, headers = asyncio.run(scenario())
    status = {barcode: st for barcode, _nfc, st, _raw in items(gate).values()}
    assert status[code] == "blocked", status[code]
    first, of_before, late, of_last = seen
    assert first["passes_applied"] >= 1 and first["stale_dropped"] == 0
    assert of_before["passes_applied"] >= 1 and of_before["stale_dropped"] == 0, of_before
    assert late["stale_dropped"] >= 1 and late["passes_applied"] == 0, late
    assert of_last["passes_applied"] >= 1 and of_last["stale_dropped"] == 0, of_last
    assert "/" in headers[0][TERM_HEADER]  # it really was the last version's form
    assert of_last["term_unreadable"] == 0


def test_unreadable_terms_are_refused_counted_and_said(
        shared_venue_node: NodeProcess, tmp_path: Path) -> None:
    """Headers no writer makes: each message is refused (never applied on a guess), counted
    and its reason kept; a good pass after them still applies."""
    venue = "rolling-unreadable"
    gate = tmp_path / "gate" / "cache.db"
    gate.parent.mkdir()
    item = {"id": 7_000_001, "const": {"barcode": "UNREADABLE-TERM"}}
    bad = [{TERM_HEADER: "x"}, {TERM_HEADER: "12", EPOCH_HEADER: "soon"},
           {EPOCH_HEADER: "5"}, {TERM_HEADER: "5/12", EPOCH_HEADER: "6"},
           {TERM_HEADER: "-3"}, {TERM_HEADER: "+12"}]

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            await catalog.ensure_stream(js, venue, 1)
            subject = catalog.prefix(venue)
            for event, headers in enumerate(bad, 100):  # each a whole pass of one item
                await js.publish(f"{subject}.i.{event}.{item['id']}", orjson.dumps(item),
                                 headers=headers)
                await js.publish(f"{subject}.pass.{event}", orjson.dumps(
                    {"endTime": None, "full": False, "at": "x"}), headers=headers)
            refused = await follow(js, venue, gate)
            good = stamp_headers(Term(5, 12))
            await js.publish(f"{subject}.i.{EVENT}.{item['id']}", orjson.dumps(item),
                             headers=good)
            await js.publish(f"{subject}.pass.{EVENT}", orjson.dumps(
                {"endTime": None, "full": False, "at": "x"}), headers=good)
            return refused, await follow(js, venue, gate)
        finally:
            await nc.close()

    refused, after = asyncio.run(scenario())
    assert refused["term_unreadable"] == 2 * len(bad) and refused["passes_applied"] == 0
    assert "'+12'" in refused["term_refused"], refused["term_refused"]
    assert refused["stale_dropped"] == 0 and refused["bad_messages"] == 0
    # read again (the position moves with what is applied only) and refused again
    assert after["passes_applied"] == 1 and after["term_unreadable"] == 2 * len(bad)
    cache = TicketCache(gate)
    try:
        assert cache.catalog_position(catalog.stream_name(venue))[1:] == (5, 12)
    finally:
        cache.close()
    assert [barcode for barcode, *_ in items(gate).values()] == ["UNREADABLE-TERM"]


def old_leader_record(value: bytes) -> tuple[str, int, str]:
    """How a gate of before read the lease record: `current_leader`'s parse, copied verbatim
    from agent/venue/lease.py at ca7e870 (unchanged until this change), returning its fields
    instead of that version's `LeaderInfo`."""
    body = orjson.loads(value)
    return str(body["holder"]), int(body["term"]), str(body["since"])


def test_the_lease_record_reads_the_same_in_every_version(
        shared_venue_node: NodeProcess) -> None:
    """The term also travels in the lease record every gate's status reads: the revision stays
    `term` (what a gate of before reads), the epoch is a key of its own; a record a leader of
    before wrote has none (its epoch unknown: None, never made up)."""
    venue = "rolling-record"

    async def scenario() -> tuple[Lease, bytes, Any, Any]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            lease = await _lead(js, venue, "upgraded")
            entry = await lease.kv.get(LEASE_KEY)
            upgraded = await current_leader(lease.kv)
            await lease.kv.update(LEASE_KEY, orjson.dumps(  # as a leader of before writes it
                {"holder": "before", "term": lease.term + 5, "since": "now"}),
                last=lease.revision)
            return lease, entry.value, upgraded, await current_leader(lease.kv)
        finally:
            await nc.close()

    lease, value, upgraded, of_before = asyncio.run(scenario())
    assert old_leader_record(value) == ("upgraded", lease.term, "now")
    assert upgraded.term == lease.term and upgraded.epoch == lease.epoch > 0
    assert of_before.holder == "before" and of_before.epoch is None


def test_stamps_read_every_form_and_rank_as_the_fence_needs() -> None:
    assert stamp_headers(Term(1733500000123456, 7)) == {
        TERM_HEADER: "7", EPOCH_HEADER: "1733500000123456"}
    assert read_stamp(stamp_headers(Term(9, 7))) == Stamp(7, 9)
    assert read_stamp({TERM_HEADER: "9/7"}) == Stamp(7, 9)  # the last version's form
    assert read_stamp({TERM_HEADER: "9/7", EPOCH_HEADER: "9"}) == Stamp(7, 9)
    assert read_stamp({TERM_HEADER: "42"}) == Stamp(42, None)  # a leader of before
    assert read_stamp(None) == read_stamp({}) == Stamp(0, None)
    for headers in ({TERM_HEADER: "1/2/3"}, {TERM_HEADER: "1/"}, {TERM_HEADER: "/1"},
                    {TERM_HEADER: "1_000"}, {TERM_HEADER: "١"}, {TERM_HEADER: ""},
                    {TERM_HEADER: "1" * 20}, {TERM_HEADER: "3", EPOCH_HEADER: ""}):
        with pytest.raises(TermUnreadable):
            read_stamp(headers)
    newest = Term(9, 40)
    # with an epoch: (epoch, revision), a later bucket first
    assert newer_or_same(Stamp(39, 9), newest) is None
    assert newer_or_same(Stamp(40, 9), newest) == newest
    assert newer_or_same(Stamp(1, 10), newest) == Term(10, 1)
    # without one (a leader of before): by revision, in the newest term's bucket
    assert newer_or_same(Stamp(39, None), newest) is None
    assert newer_or_same(Stamp(42, None), newest) == Term(9, 42)
    assert newer_or_same(Stamp(41, 9), Term(9, 42)) is None  # so a late 41 stays dropped
    # a stored term of before epochs (migration 0007: epoch 0) is below every epoch
    assert newer_or_same(Stamp(1, 10), Term(0, 500)) == Term(10, 1)
    assert newer_or_same(Stamp(501, None), Term(0, 500)) == Term(0, 501)
