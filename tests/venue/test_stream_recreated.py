"""The venue's stream deleted, or deleted and made again, under running gates (real
nats-server, real gates over real SQLite: tests/venue/rig.py).

Before agent.venue.stream_identity a gate kept its old venue.db position and subject
sequences: every claim conflicted and ended in the offline policy, and the new stream's first
messages were never applied; a stream only deleted left every claim "unavailable" for good."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from agent import demo_data
from agent.sandbox.harness import start_sandbox
from agent.store.venue import Applied, BusScan, VenueStore
from agent.venue import catalog, messages
from agent.venue.bus import DUPLICATE_WINDOW_S
from agent.venue.election import connect
from agent.venue.leader import VenueRole
from agent.venue.node import NodeProcess
from agent.venue.stream_identity import replaced
from tests.platform.sync.conftest import make_site
from tests.venue.rig import VenueDevice, venue_devices, wait_until

pytestmark = pytest.mark.usefixtures("quick_stream_watch")  # streams lost for good

STREAM = messages.stream_name("hall")


def _delete(url: str, make_again: bool) -> None:
    async def run() -> None:
        nc, js = await connect({"servers": [url]}, 5.0)
        try:
            await js.delete_stream(STREAM)
            if make_again:  # by an operator or another gate, at once
                await js.add_stream(StreamConfig(
                    name=STREAM, subjects=[messages.stream_subjects("hall")],
                    storage=StorageType.FILE, num_replicas=1,
                    duplicate_window=DUPLICATE_WINDOW_S))
        finally:
            await nc.close()

    asyncio.run(run())


def _admit_uuid(device: VenueDevice, code: str) -> str:
    rows = [r for r in device.journal_rows() if r["code"] == code and r["admit"]]
    assert len(rows) == 1, rows
    return str(rows[0]["uuid"])


def _knows(device: VenueDevice, uuid: str) -> bool:
    store = device.venue_store()
    try:
        return bool(store.standing([uuid]))
    finally:
        store.close()


def _scan(device: VenueDevice, code: str) -> tuple[bool, str]:
    gate = device.gate()
    result = gate.scan(code, gate.config.lane("north-in"), datetime.now(UTC))
    return result.decision.admit, result.decision.status


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("make_again", [True, False], ids=["made-again", "deleted"])
def test_gates_recover_a_stream_deleted_under_them(tmp_path: Path, venue_node: NodeProcess,
                                                   make_again: bool) -> None:
    before, after = demo_data.bulk_barcode(1), demo_data.bulk_barcode(2)
    with venue_devices(tmp_path, [venue_node.url], 2, tickets=5) as (one, two):
        assert _scan(one, before) == (True, "valid")
        old = _admit_uuid(one, before)
        wait_until(lambda: _knows(two, old), 10, "the first admit applied at the other gate")
        _delete(venue_node.url, make_again)
        meanwhile = demo_data.bulk_barcode(3)  # decided by policy (local) while it is lost:
        assert _scan(one, meanwhile)[0]  # its publishing fails until the stream is back
        # each gate sees it (made again: another creation time; deleted: gone for 5 s, then
        # its setup makes it again), resets venue.db and publishes its own scans again
        wait_until(lambda: all(d.bus.stream_restarts >= 1 and d.bus.ready
                               for d in (one, two)), 40, "both gates on the new stream")
        wait_until(lambda: _knows(two, old), 20, "the admit before the loss on the new stream")
        assert _scan(two, before) == (False, "alreadyIn")  # never admitted twice
        wait_until(lambda: _knows(two, _admit_uuid(one, meanwhile)), 20, "the scan meanwhile")
        granted = two.bus.counters["claims_granted"]
        assert _scan(two, after) == (True, "valid")
        assert two.bus.counters["claims_granted"] == granted + 1  # claimed, not by policy
        new = _admit_uuid(two, after)
        wait_until(lambda: _knows(one, new), 10, "the new stream's messages applied")
        assert _scan(one, after) == (False, "alreadyIn")
        assert two.bus.counters["claims_timed_out"] == 0  # (one's scan meanwhile may have)


def test_venue_db_restarts_for_a_new_stream_and_keeps_its_scans_and_conflicts(
        tmp_path: Path) -> None:
    assert replaced(None, "t1", 5, 0) is None and replaced("t1", "t1", 9, 5) is None
    assert "no record" in (replaced(None, "t1", 5, 5) or "")  # cannot tell (test_no_record)
    assert "made again" in (replaced("t1", "t2", 9, 5) or "")
    assert "below the position" in (replaced(None, "t1", 2, 5) or "")  # a venue.db of before
    store = VenueStore(tmp_path / "venue.db")
    subject = "venue.hall.t.1.7.g1"
    try:
        def admit(seq: int, uuid: str, device: str = "g1", second: int = 0) -> Applied:
            return Applied(seq, subject, BusScan(
                uuid=uuid, device=device, lane="l", event_id=1, item_id=7, zone_id=2,
                zone_is_default=False, direction="in", admit=True, status="valid",
                scanned_on=f"2026-12-06T20:00:{second or seq:02d}Z", max_entries=1))

        def seqs() -> dict[str, int]:
            return dict(store.conn.execute("SELECT uuid, stream_seq FROM venue_scans"))

        store.set_stream_created("S", "t1")
        assert store.apply("S", [admit(1, "a"), admit(2, "b")], "now") == ["b"]  # a conflict
        store.set_published_through(40)
        store.restart_stream("S", "t2", republish_through=38)
        assert (store.position("S"), store.subject_seq(subject)) == (0, 0)
        # the journal from its start, granted claims through seq 38 too (in the reset's
        # transaction: a restart after it still sends them)
        assert store.published_through() == 0 and store.cursors() == (0, 38)
        assert store.stream_created("S") == "t2" and store.conflict_count() == 1
        # the old scans are kept, in their order, below every sequence of the new stream
        assert store.standing(["a", "b"]) == {"a", "b"} and seqs() == {"a": -2, "b": -1}
        assert [s.uuid for s in store.zone_scans(1, 7)] == ["a", "b"]
        assert [c["uuid"] for c in store.claims_after("g1", -(2**63))] == ["a", "b"]
        # the new stream: a's republished copy counted once (its subject sequence taken),
        # a void of b found by uuid, a new admit after them; no new conflict from a copy
        void = Applied(2, subject, void_uuid="b")
        assert store.apply("S", [admit(1, "a"), void, admit(3, "c", "g2", 30)], "now") == ["c"]
        assert seqs() == {"a": -2, "b": -1, "c": 3} and store.subject_seq(subject) == 3
        assert store.standing(["a", "b", "c"]) == {"a", "c"}
        assert store.claims_after("g1", 0) == []  # the sweep reads from SWEEP_FROM for these
        # made again once more: every row moves below the lowest, none collides
        store.restart_stream("S", "t3")
        assert seqs() == {"a": -8, "b": -7, "c": -3}
        assert [s.uuid for s in store.zone_scans(1, 7)] == ["a", "c"]
        assert [r["admitted"] for r in store.occupancy()] == [1]
        store.restart_stream("S", "t4")  # nothing new since: nothing moves
        assert seqs() == {"a": -8, "b": -7, "c": -3}
    finally:
        store.close()


@pytest.mark.e2e
@pytest.mark.slow
def test_a_gate_still_refuses_an_admit_of_the_lost_stream_before_it_is_republished(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """venue.db's scans were deleted with the stream: until the admitting gate republished its
    journal (every 2 s, or later if it is down), another gate admitted the ticket again, and
    the new stream granted its claim (an empty subject)."""
    code = demo_data.bulk_barcode(1)
    with venue_devices(tmp_path, [venue_node.url], 2, tickets=5) as (one, two):
        assert _scan(one, code) == (True, "valid")
        old = _admit_uuid(one, code)
        wait_until(lambda: _knows(two, old), 10, "the admit applied at the other gate")
        one.bus.stop()  # down: it republishes nothing until it is back
        # a claim of one's on the old stream whose admit never reached its journal (a crash
        # between the two), applied at both gates, not swept yet: kept, it must still be voided
        phantom = "00000000-0000-4000-8000-00000000dead"
        for device in (one, two):
            _applied_claim(device, phantom, one.name, 999_999)  # no ticket of the test
        _delete(venue_node.url, True)
        wait_until(lambda: two.bus.stream_restarts >= 1 and two.bus.ready, 40,
                   "the other gate on the new stream")
        granted = two.bus.counters["claims_granted"]
        assert _scan(two, code) == (False, "alreadyIn")  # not a second admit
        assert old not in _uuids_on_stream(venue_node.url)  # one has republished nothing
        fresh = demo_data.bulk_barcode(2)  # the new stream takes claims
        assert _scan(two, fresh) == (True, "valid")
        assert two.bus.counters["claims_granted"] == granted + 1
        one.restart_bus()  # back: it republishes its journal on the new stream
        wait_until(lambda: old in _uuids_on_stream(venue_node.url), 20, "one republished")
        wait_until(lambda: two.bus.applied_seq >= 2, 10, "the republished copy applied")
        store = two.venue_store()
        try:  # counted once, still in its place before the new stream's scans, no conflict
            assert [s.uuid for s in store.zone_scans(demo_data.EVENT_ID, _item_of(two, code))] \
                == [old]
            assert store.conflict_count() == 0
        finally:
            store.close()
        assert _scan(one, fresh) == (False, "alreadyIn")
        # the kept claim with no admit: voided by one's sweep on the new stream, at both gates
        wait_until(lambda: not _knows(one, phantom) and not _knows(two, phantom), 20,
                   "the claim without an admit voided")


def _applied_claim(device: VenueDevice, uuid: str, by: str, item_id: int) -> None:
    """venue.db as it is when it applied a claim of `by` from the stream (row only)."""
    store = device.venue_store()
    try:
        store.conn.execute(
            "INSERT INTO venue_scans (stream_seq, uuid, device, lane, event_id, item_id, zone_id,"
            " direction, admit, status, scanned_on, max_entries) VALUES"
            " (1000, ?, ?, 'north-in', ?, ?, NULL, 'in', 1, 'valid', ?, 1)",
            (uuid, by, demo_data.EVENT_ID, item_id, datetime.now(UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ")))
    finally:
        store.close()


def _uuids_on_stream(url: str) -> list[str]:
    """The scan (or void) uuids of every message the venue's stream holds, in order."""
    async def run() -> list[str]:
        nc, js = await connect({"servers": [url]}, 5.0)
        try:
            state = (await js.stream_info(STREAM)).state
            if not state.messages:
                return []
            return [orjson.loads((await js.get_msg(STREAM, seq)).data)["uuid"]
                    for seq in range(state.first_seq, state.last_seq + 1)]
        finally:
            await nc.close()

    return asyncio.run(run())


def _item_of(device: VenueDevice, code: str) -> int:
    rows = [r for r in device.journal_rows() if r["code"] == code]
    return int(rows[0]["item_id"])


@pytest.mark.e2e
@pytest.mark.slow
def test_the_catalog_made_again_is_followed_from_its_first_message(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """The leader role's catalog follower kept its old position (and newest term) in the
    cache: a catalog stream made again was followed from the old position + 1, so its first
    messages were never applied."""
    with start_sandbox(tickets=30, async_delay_s=0.02, rpm=1000) as sandbox:
        site = make_site(tmp_path / "leader", sandbox, rpm=1000, extra=(
            f'\n[sync]\ndelta_interval_s = 1\n\n[venue]\nname = "cat"\n'
            f'servers = ["{venue_node.url}"]\ndevice = "solo"\nlease_ttl_s = 4\n'))
        site.config.store_dir.mkdir(parents=True, exist_ok=True)
        stream = catalog.stream_name("cat")

        async def scenario() -> tuple[int, int, int]:
            nc, js = await connect({"servers": [venue_node.url]}, 5.0)
            role = VenueRole(site.config, sandbox.token)
            stop = asyncio.Event()
            runner = asyncio.create_task(role.run(stop))

            async def until(check: Any, what: str) -> None:
                deadline = asyncio.get_running_loop().time() + 40
                while not await check():
                    assert asyncio.get_running_loop().time() < deadline, what
                    await asyncio.sleep(0.1)

            # the stream's last sequence and the follower's position when they were last
            # compared: the leader's next sync pass may add a message right after, so the
            # result is read from this one comparison, not from a second stream info
            seen = {"last": 0, "position": 0}

            async def followed_to_the_end() -> bool:
                try:
                    last = (await js.stream_info(stream)).state.last_seq
                except NotFoundError:  # not made yet
                    return False
                position = role.follower.position if role.follower is not None else 0
                seen.update(last=last, position=position)
                return position == last > 0

            try:
                async def whole_pass_followed() -> bool:  # items, events, zones, pass
                    return await followed_to_the_end() and role.follower is not None \
                        and role.follower.position > 30
                await until(whole_pass_followed, "the first catalog followed")
                old = role.follower.position if role.follower else 0
                config = (await js.stream_info(stream)).config
                await js.delete_stream(stream)
                await js.add_stream(config)  # made again at once, as an operator would
                await until(followed_to_the_end, "the new catalog followed")
                return old, seen["position"], seen["last"]
            finally:
                stop.set()
                await asyncio.wait_for(runner, 30)
                await nc.close()

        old, new, last = asyncio.run(scenario())
        assert 0 < new == last < old  # the new stream's own sequences, from its first message
