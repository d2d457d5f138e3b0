"""A refusal journaled under a granted claim's uuid reaches the venue's stream, and every reader
takes it as a refusal.

A claim the venue granted whose journal transaction then refused (another lane of the gate
admitted the ticket in between) is journaled as a plain refusal under the claim's uuid. It was
published with `Nats-Msg-Id` = that uuid, the claim's own, so JetStream dropped it as a
duplicate within its window: other gates saw the claim and its void, never the refusal. Now it
goes out as `<uuid>/refused` (agent.venue.messages `scan_msg_id`). Real gates over real SQLite
files and a real nats-server (tests/venue/rig.py).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from agent import demo_data
from agent.store.venue import REFUSED_AFTER_CLAIM, Applied, BusScan, VenueStore
from agent.venue import messages
from agent.venue.election import connect
from agent.venue.node import NodeProcess
from tests.venue.rig import VenueDevice, venue_devices, wait_until
from tests.venue.test_refused_after_grant import refused_after_grant

STREAM = messages.stream_name("hall")


def _on_stream(url: str, uuid: str) -> list[tuple[str, dict[str, Any]]]:
    """(Nats-Msg-Id, body) of every message of the venue's stream about scan `uuid`."""
    async def run() -> list[tuple[str, dict[str, Any]]]:
        nc, js = await connect({"servers": [url]}, 5.0)
        try:
            state = (await js.stream_info(STREAM)).state
            found = []
            for seq in range(state.first_seq, state.last_seq + 1):
                msg = await js.get_msg(STREAM, seq)
                body = orjson.loads(msg.data)
                if body["uuid"] == uuid:
                    found.append(((msg.headers or {}).get("Nats-Msg-Id", ""), body))
            return found
        finally:
            await nc.close()

    return asyncio.run(run())


def _published(dev: VenueDevice, seq: int) -> None:
    store = dev.venue_store()
    try:
        wait_until(lambda: store.published_through() >= seq, 20, "the publisher passed it")
    finally:
        store.close()


def test_a_refusal_after_a_grant_is_on_the_stream_and_read_as_a_refusal(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    code = demo_data.bulk_barcode(0)
    with venue_devices(tmp_path, [venue_node.url], 2, tickets=5) as (one, two):
        refusal = refused_after_grant(one, code)
        uuid = refusal["uuid"]
        _published(one, refusal["seq"])
        # the claim, its void, and the refusal: three records of the one scan on the stream
        wait_until(lambda: len(_on_stream(venue_node.url, uuid)) == 3, 20,
                   "the claim, its void and the refusal on the stream")
        by_id = dict(_on_stream(venue_node.url, uuid))
        assert set(by_id) == {uuid, f"void-{uuid}", f"{uuid}/refused"}
        assert (by_id[uuid]["admit"], by_id[uuid]["claim"]) == (True, True)
        assert by_id[f"void-{uuid}"]["type"] == "void"
        refused = by_id[f"{uuid}/refused"]
        assert (refused["type"], refused["admit"], refused["status"]) == \
            ("scan", False, "alreadyIn")
        assert refused["device"] == one.name
        # the other gate: the claim does not stand (the other lane's admit, made without a
        # venue link of its own, is this rig's and the sweep's business: not looked at here)
        wait_until(lambda: two.bus.applied_seq >= two.bus.stream_last_seq > 0, 10, "applied")
        store = two.venue_store()
        try:
            wait_until(lambda: store.conn.execute(
                "SELECT admit, voided FROM venue_scans WHERE uuid = ?", (uuid,)).fetchall()
                == [(1, 1)], 10, "the claim voided at the other gate")
            assert store.standing([uuid]) == set() and store.conflict_count() == 0
        finally:
            store.close()
        # published again (the publisher's cursor lost): stored once
        store = one.venue_store()
        try:
            store.conn.execute("DELETE FROM venue_cursor")
        finally:
            store.close()
        one.bus.wake()
        _published(one, refusal["seq"])
        assert len(_on_stream(venue_node.url, uuid)) == 3


def test_a_refusal_ends_its_claim_in_venue_db_even_before_the_void(tmp_path: Path) -> None:
    """The void can come late (the bus was away when the lane voided: the sweep sends it), or
    never to a gate whose sender crashed before it: the refusal alone ends the claim here.
    A gate of before ignores the refusal (one row per uuid) and waits for the void, which the
    sweep still sends (`claims_after` lists the claim)."""
    store = VenueStore(tmp_path / "venue.db")
    subject = "venue.hall.t.1.7"

    def scan(seq: int, uuid: str, admit: bool, device: str = "g1") -> Applied:
        body = messages.encode_scan(BusScan(
            uuid=uuid, device=device, lane="l", event_id=1, item_id=7, zone_id=2,
            zone_is_default=False, direction="in", admit=admit,
            status="valid" if admit else "alreadyIn", scanned_on="2026-12-07T05:00:00Z",
            max_entries=1, claim=admit, clock_offset_s=0.0))
        return messages.decode(seq, subject, body, datetime.now(UTC))

    try:
        store.apply("S", [scan(1, "claim", True)], "now")
        assert store.standing(["claim"]) == {"claim"}
        # another device's refusal under that uuid is not this claim's: nothing changes
        store.apply("S", [scan(2, "claim", False, device="g2")], "now")
        assert store.standing(["claim"]) == {"claim"}
        store.apply("S", [scan(3, "claim", False)], "now")
        assert store.standing(["claim"]) == set()
        assert store.zone_scans(1, 7) == [] and store.occupancy() == []
        assert [c["uuid"] for c in store.claims_after("g1", 0)] == ["claim"]  # for the sweep
        (voided,) = store.conn.execute("SELECT voided FROM venue_scans WHERE uuid = 'claim'")
        assert voided == (REFUSED_AFTER_CLAIM,)
        store.apply("S", [Applied(4, subject, void_uuid="claim")], "now")
        assert store.claims_after("g1", 0) == []  # voided: nothing left for the sweep
        # a refusal with no claim before it (a stream made again): kept, never an admit
        store.apply("S", [scan(5, "alone", False)], "now")
        assert store.standing(["alone"]) == set() and store.zone_scans(1, 7) == []
        assert store.conn.execute(
            "SELECT admit FROM venue_scans WHERE uuid = 'alone'").fetchall() == [(0,)]
    finally:
        store.close()


def test_the_sweep_still_voids_a_claim_its_refusal_ended(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """The gate stopped after publishing the refusal, before the void (here: the void never
    sent): gates of before hold the claim until a void, so the restarted gate's sweep still
    voids it although its own venue.db already takes it as refused."""
    code = demo_data.bulk_barcode(1)
    with venue_devices(tmp_path, [venue_node.url], 1, tickets=5) as (one,):
        one.bus.void_now = lambda claim, reason: None  # type: ignore[method-assign]
        refusal = refused_after_grant(one, code)
        uuid = refusal["uuid"]
        _published(one, refusal["seq"])
        store = one.venue_store()
        try:
            wait_until(lambda: store.conn.execute(
                "SELECT voided FROM venue_scans WHERE uuid = ?", (uuid,)).fetchall()
                == [(REFUSED_AFTER_CLAIM,)], 10, "the refusal applied")
        finally:
            store.close()
        assert f"void-{uuid}" not in dict(_on_stream(venue_node.url, uuid))
        one.restart_bus()  # an earlier process's claim: looked at at once
        wait_until(lambda: f"void-{uuid}" in dict(_on_stream(venue_node.url, uuid)), 30,
                   "the claim voided on the stream")
