"""The pure parts of ordering the venue's scans on the bus server's clock: the scan message's
clock offset (with and without it, and from earlier versions), each scan's bus time, venue.db's
migration 0005 on a file of the previous schema, and reading scans back on this gate's clock.
Real SQLite files; no bus needed (tests/venue/test_scan_order.py runs the gates)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from agent.core.codes import EARLIEST, LATEST, parse_utc_iso, shift_utc_iso, utc_iso
from agent.core.model import ZoneScan
from agent.store.sqlite import migrate, open_database
from agent.store.venue import MIGRATIONS, Applied, BusScan, VenueStore
from agent.venue import messages
from tests.store.test_journal_schema import _dicts

SUBJECT = "venue.hall.t.501.7"
AT = "2026-12-06T12:03:00.000000Z"  # the sender's clock (3 min fast)
STORED = datetime(2026, 12, 6, 12, 0, 0, 250_000, tzinfo=UTC)  # the server's, as it stored it


def bus_scan(uuid: str = "u1", direction: str = "out", scanned_on: str = AT,
             offline: bool = False, offset: float | None = None,
             claim: bool = False, unmeasured: bool = False) -> BusScan:
    return BusScan(uuid=uuid, device="g2", lane="floor-out", event_id=501, item_id=7,
                   zone_id=3, zone_is_default=False, direction=direction, admit=True,
                   status="valid", scanned_on=scanned_on, offline=offline, max_entries=0,
                   tracks_exits=True, clock_offset_s=offset, claim=claim,
                   clock_unmeasured=unmeasured)


def test_the_offset_travels_with_the_scan_and_is_null_before_it_is_measured() -> None:
    scan = bus_scan(offset=180.004, claim=True)
    assert orjson.loads(messages.encode_scan(scan))["clockOffsetS"] == 180.004
    assert orjson.loads(messages.encode_scan(scan))["claim"] is True
    assert messages.decode(4, SUBJECT, messages.encode_scan(scan)).scan == scan
    # never measured: said so (null), not left out (a sender of before) nor 0
    body = orjson.loads(messages.encode_scan(bus_scan(offset=None)))
    assert "clockOffsetS" in body and body["clockOffsetS"] is None
    assert messages.decode(4, SUBJECT, messages.encode_scan(bus_scan(offset=None))).scan \
        == bus_scan(unmeasured=True)
    assert messages.decode(4, SUBJECT, messages.encode_scan(bus_scan(offset=-3))).scan \
        == bus_scan(offset=-3.0)  # a whole number of seconds is a number of seconds too


def test_a_message_of_an_earlier_version_still_decodes() -> None:
    """Exactly the body version 1 wrote before the offset and the claim flag existed: placed
    by the sender's own clock (as every gate did then), never after it was stored."""
    body = {"v": 1, "type": "scan", "uuid": "u1", "device": "g2", "lane": "floor-out",
            "eventId": 501, "itemId": 7, "zoneId": 3, "zoneIsDefault": False,
            "direction": "out", "admit": True, "status": "valid", "scannedOn": AT,
            "offline": False, "maxEntries": 0, "tracksExits": True}
    applied = messages.decode(4, SUBJECT, orjson.dumps(body), STORED)
    assert applied.scan == bus_scan()
    assert applied.bus_time == utc_iso(STORED)  # 12:03 by its clock, stored at 12:00:00.25
    later = datetime(2026, 12, 6, 12, 30, tzinfo=UTC)
    assert messages.decode(4, SUBJECT, orjson.dumps(body), later).bus_time == AT
    # a claim flag that is not `true` is no claim
    for flag in ("yes", 1, None):
        assert not messages.decode(4, SUBJECT, orjson.dumps({**body, "claim": flag})).scan.claim


@pytest.mark.parametrize("bad", [b'"180"', b"true", b"[1]", b'{"s": 1}', b"1e400"])
def test_an_offset_that_is_no_number_of_seconds_is_refused(bad: bytes) -> None:
    """Refused and counted like any message this version cannot read (never guessed at)."""
    data = messages.encode_scan(bus_scan(offset=1.0)).replace(b'"clockOffsetS":1.0',
                                                               b'"clockOffsetS":' + bad)
    with pytest.raises(messages.BadMessage, match="clockOffsetS|infinity"):
        messages.decode(4, SUBJECT, data)


def test_a_null_offset_is_one_not_measured_and_a_missing_one_a_sender_of_before() -> None:
    body = orjson.loads(messages.encode_scan(bus_scan()))
    assert messages.decode(4, SUBJECT, orjson.dumps(body)).scan == bus_scan(unmeasured=True)
    del body["clockOffsetS"]
    assert messages.decode(4, SUBJECT, orjson.dumps(body)).scan == bus_scan()


def test_a_scan_decided_before_any_measurement_is_placed_on_the_safe_side() -> None:
    """Its sender never measured its clock: it happened at some moment before it was stored.
    An entry is placed at the latest (stored), an exit undated (before every dated scan), so
    neither lets the ticket read as outside after a scan that may have come after it. Taken
    by its own clock (as a sender of before is), a gate 3 minutes fast put its exit after an
    entry made elsewhere meanwhile: the ticket read as outside, a pass-back admitted."""
    late = datetime(2026, 12, 6, 12, 30, tzinfo=UTC)
    assert messages.bus_time(bus_scan(direction="out", offline=True, unmeasured=True),
                             late) is None
    assert messages.bus_time(bus_scan(direction="in", offline=True, unmeasured=True),
                             late) == utc_iso(late)
    assert messages.bus_time(bus_scan(direction="in", unmeasured=True), None) is None
    # a claim is stored as it is decided: its timestamp, measured or not
    assert messages.bus_time(bus_scan(direction="out", claim=True, unmeasured=True),
                             STORED) == utc_iso(STORED)
    # the sender of before: its own clock, never after it was stored (as it was)
    assert messages.bus_time(bus_scan(direction="out", offline=True), late) == AT


def test_bus_time_of_online_and_offline_scans() -> None:
    # a claim, stored as it was decided: the server's timestamp, whatever the sender says
    assert messages.bus_time(bus_scan(offset=180.0, claim=True), STORED) == utc_iso(STORED)
    assert messages.bus_time(bus_scan(offset=None, claim=True), STORED) == utc_iso(STORED)
    # offline: published later; its own time taken back to the server's clock by its offset
    late = datetime(2026, 12, 6, 12, 30, tzinfo=UTC)
    assert messages.bus_time(bus_scan(offline=True, offset=180.0), late) \
        == "2026-12-06T12:00:00.000000Z"
    # the publisher's copy of a scan decided online (no claim needed, or sent again after
    # the stream was made again): the same, its timestamp is only when it was sent
    assert messages.bus_time(bus_scan(offset=180.0), late) == "2026-12-06T12:00:00.000000Z"
    assert messages.bus_time(bus_scan(offline=True, offset=-60.5), late) \
        == "2026-12-06T12:04:00.500000Z"
    # no offset measured: its own time, but never after the message was stored
    assert messages.bus_time(bus_scan(offline=True), late) == AT
    assert messages.bus_time(bus_scan(offline=True), STORED) == utc_iso(STORED)
    # no server timestamp known: the corrected own time
    assert messages.bus_time(bus_scan(offline=True, offset=180.0), None) \
        == "2026-12-06T12:00:00.000000Z"
    assert messages.bus_time(bus_scan(offset=180.0, claim=True), None) \
        == "2026-12-06T12:00:00.000000Z"
    # unreadable own time: unknown (derived state takes it as before every dated scan)
    assert messages.bus_time(bus_scan(offline=True, scanned_on="soon", offset=1.0), late) is None
    # an offset beyond datetime's range: clamped, never an error
    assert messages.bus_time(bus_scan(offline=True, offset=1e12), None) == utc_iso(EARLIEST)
    assert messages.bus_time(bus_scan(offline=True, offset=-1e12), late) == utc_iso(late)


def test_shift_utc_iso() -> None:
    assert shift_utc_iso(AT, -180.0) == "2026-12-06T12:00:00.000000Z"
    assert shift_utc_iso(AT, 0.000_25) == "2026-12-06T12:03:00.000250Z"
    assert shift_utc_iso(AT, 0.0) == AT and shift_utc_iso(None, 5.0) is None
    assert shift_utc_iso("not a time", 5.0) is None
    assert shift_utc_iso(AT, 1e12) == utc_iso(LATEST)
    assert shift_utc_iso(AT, -1e12) == utc_iso(EARLIEST)


def applied(seq: int, uuid: str, direction: str, bus_time: str | None,
            scanned_on: str = AT) -> Applied:
    return Applied(seq, SUBJECT, scan=bus_scan(uuid, direction, scanned_on),
                   bus_time=bus_time)


def test_scans_are_read_in_bus_time_order_on_this_gates_clock(tmp_path: Path) -> None:
    """An offline exit that reached the stream last but happened first is not the latest."""
    store = VenueStore(tmp_path / "venue.db")
    try:
        store.apply("S", [applied(1, "in1", "in", "2026-12-06T11:00:00.000000Z"),
                          applied(2, "in2", "in", "2026-12-06T12:10:00.000000Z"),
                          applied(3, "out", "out", "2026-12-06T12:00:00.000000Z"),
                          applied(4, "undated", "out", None)], "now")
        assert store.zone_scans(501, 7) == [
            ZoneScan(3, "out", None, "undated"),
            ZoneScan(3, "in", "2026-12-06T11:00:00.000000Z", "in1"),
            ZoneScan(3, "out", "2026-12-06T12:00:00.000000Z", "out"),
            ZoneScan(3, "in", "2026-12-06T12:10:00.000000Z", "in2")]
        # this clock 90.5 s behind the server's: every time read 90.5 s earlier
        assert [s.scanned_on for s in store.zone_scans(501, 7, -90.5)] == [
            None, "2026-12-06T10:58:29.500000Z", "2026-12-06T11:58:29.500000Z",
            "2026-12-06T12:08:29.500000Z"]
        assert [(r["zone_id"], r["inside"], r["admitted"]) for r in store.occupancy()] \
            == [(3, 1, 1)]
        assert store.conflict_count() == 0  # in, out, in: no entry while inside
    finally:
        store.close()


def test_conflicts_are_found_in_bus_time_order(tmp_path: Path) -> None:
    store = VenueStore(tmp_path / "venue.db")
    try:
        # by stream position (or by the senders' clocks) the exit would come between
        found = store.apply("S", [applied(1, "in1", "in", "2026-12-06T11:00:00.000000Z",
                                          "2026-12-06T11:00:00.000000Z"),
                                  applied(2, "in2", "in", "2026-12-06T12:10:00.000000Z",
                                          "2026-12-06T12:10:00.000000Z"),
                                  applied(3, "out", "out", "2026-12-06T12:20:00.000000Z",
                                          "2026-12-06T12:05:00.000000Z")], "now")
        assert found == ["in2"]  # in, in (while inside), then out
        assert store.conflicts()[0]["scanned_on"] == "2026-12-06T12:10:00.000000Z"
    finally:
        store.close()


def test_a_venue_db_of_the_previous_schema_gets_bus_times(tmp_path: Path) -> None:
    """0005 on a venue.db that 0001-0004 made: every row kept, its bus time its own time (all
    an old row has); new rows get theirs; reading and ordering work on both."""
    path = tmp_path / "venue.db"
    db = open_database(path, synchronous="NORMAL")
    assert migrate(db, [m for m in MIGRATIONS if m[0] < "0005"]) \
        == ["0001_venue", "0004_stream_identity"]
    cols = ("stream_seq", "uuid", "device", "lane", "event_id", "item_id", "zone_id",
            "direction", "admit", "scanned_on", "offline", "max_entries", "tracks_exits")
    for row in ((1, "old-in", "g1", "floor-in", 501, 7, 3, "in", 1, "2026-12-06T11:00:00.000000Z",
                 0, 0, 1),
                (2, "old-out", "g2", "floor-out", 501, 7, 3, "out", 1,
                 "2026-12-06T11:30:00.000000Z", 1, 0, 1)):
        db.conn.execute(f"INSERT INTO venue_scans ({', '.join(cols)}) VALUES"
                        f" ({', '.join('?' * len(cols))})", row)
    db.conn.execute("INSERT INTO venue_position (stream, last_seq) VALUES ('S', 2)")
    before = _dicts(db.conn, "SELECT * FROM venue_scans ORDER BY stream_seq")
    db.conn.close()

    store = VenueStore(path)
    try:
        after = _dicts(store.conn, "SELECT * FROM venue_scans ORDER BY stream_seq")
        assert [{k: v for k, v in r.items() if k not in ("bus_time", "awaiting")}
                for r in after] == before
        assert [r["awaiting"] for r in after] == [0, 0]  # 0006: old exits were all made
        assert [r["bus_time"] for r in after] == [r["scanned_on"] for r in before]
        assert store.position("S") == 2
        store.apply("S", [applied(3, "new-in", "in", "2026-12-06T11:45:00.000000Z")], "now")
        assert [(s.uuid, s.scanned_on) for s in store.zone_scans(501, 7, 60.0)] == [
            ("old-in", "2026-12-06T11:01:00.000000Z"), ("old-out", "2026-12-06T11:31:00.000000Z"),
            ("new-in", "2026-12-06T11:46:00.000000Z")]
        assert [(r["inside"], r["admitted"]) for r in store.occupancy()] == [(1, 1)]
    finally:
        store.close()
    assert parse_utc_iso(after[0]["bus_time"]) < parse_utc_iso(after[1]["bus_time"])
