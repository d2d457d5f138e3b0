"""The venue stream's subjects and messages (a contract between gates of different versions).

One stream per venue, `VENUE_<name>`, on subjects `venue.<name>.>`:
- `venue.<name>.t.<event>.<item>` — every scan of one ticket, and voids of its claims. One
  subject per ticket is what serialises admission across the venue: a claim is a publish that
  expects the subject's last sequence to be the one the gate decided on
  (`Nats-Expected-Last-Subject-Sequence`), so of two gates deciding one ticket at once exactly
  one publish is accepted; the other re-reads and re-decides.
- `venue.<name>.u.<device>` — scans of codes with no ticket (unknown codes), for the record.

Every scan message carries the scan uuid as `Nats-Msg-Id`, so a scan published twice (a claim,
then the same row from the journal publisher; or again after a crash) is stored once. A refusal
carries `<uuid>/refused` instead (`scan_msg_id`): a claim the venue granted whose journal
transaction then refused (another lane admitted the ticket in between) is journaled as a
refusal under the claim's own uuid, and under that id the server dropped it as a duplicate of
the claim, so no gate ever had the refusal on record. The id stays deterministic, so the
publisher's re-sends of one refusal are still stored once. Readers tell the two apart by the
body (`admit`), never by the id: a refusal under a claim's uuid is applied as that claim's
refusal (agent.store.venue `REFUSED_AFTER_CLAIM`); a gate of before ignores it (its rows are
unique by uuid, so it keeps the claim until the void its sender still publishes).
Bodies are JSON objects; unknown fields are ignored, and a message that cannot be read is
skipped and counted (never guessed at).

An exit on a lane whose turnstile confirms passages goes out (claim or journal copy) with
`passageAwaited: true` while its gate waits for the passage: every reader takes it as not yet
happened, the ticket still inside (taken as made, a ticket handed back over the barrier by a
holder who scanned out but did not pass was admitted at another gate meanwhile). Its gate
then sends either the void of the scan (no passage: agent.venue.bus `_void`) or the scan again
without the flag under `<uuid>/passed` (`confirm_msg_id`): readers then count the exit, at
the time the first message placed it. Only the sending gate's copy confirms; nothing puts the
wait back. A gate of before ignores the key (it counts the exit at once, as it always did) and
keeps the confirmation's copy once (rows unique by uuid).

A scan's `scannedOn` is the sending gate's clock, which may be minutes or hours off (venue LANs
often have no NTP, gates no real-time clock). So every reader places a scan on the bus
server's clock (`bus_time`): a claim (`claim: true`) at the server's timestamp of the message,
any other scan at its `scannedOn` taken back by `clockOffsetS`, the sender's clock minus the
bus server's as the sender measured it when it decided the scan (agent.venue.heartbeat
`GateBoard.offset_s`, journaled with the scan; `null` when it had never been measured: such a
scan is placed on the safe side, see `bus_time`). Messages of earlier versions, without either
key, still decode and are placed by the sender's clock, as they were then.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import orjson

from agent.core.codes import EARLIEST, LATEST, parse_platform_time, utc_iso
from agent.store.venue import Applied, BusScan

VERSION = 1


def stream_name(venue: str) -> str:
    return f"VENUE_{venue.replace('-', '_')}"


def stream_subjects(venue: str) -> str:
    return f"venue.{venue}.>"


def ticket_subject(venue: str, event_id: int | None, item_id: int | None,
                   device: str) -> str:
    if event_id is None or item_id is None:
        return f"venue.{venue}.u.{device}"
    return f"venue.{venue}.t.{event_id}.{item_id}"


def scan_msg_id(scan_uuid: str, admit: bool) -> str:
    """A scan message's `Nats-Msg-Id` (see the module docstring): the uuid for an admit (the
    journal publisher's copy of a granted claim is the claim itself), `<uuid>/refused` for a
    refusal (a refusal journaled under a granted claim's uuid must not be the claim's
    duplicate)."""
    return scan_uuid if admit else f"{scan_uuid}/refused"


def confirm_msg_id(scan_uuid: str) -> str:
    """The `Nats-Msg-Id` of an exit's confirmation: its scan again, without
    `passageAwaited` (see the module docstring), stored once however often it is sent."""
    return f"{scan_uuid}/passed"


def encode_scan(scan: BusScan) -> bytes:
    return orjson.dumps({
        "v": VERSION, "type": "scan", "uuid": scan.uuid, "device": scan.device,
        "lane": scan.lane, "eventId": scan.event_id, "itemId": scan.item_id,
        "zoneId": scan.zone_id, "zoneIsDefault": scan.zone_is_default,
        "direction": scan.direction, "admit": scan.admit, "status": scan.status,
        "scannedOn": scan.scanned_on, "offline": scan.offline,
        "maxEntries": scan.max_entries, "tracksExits": scan.tracks_exits, "claim": scan.claim,
        "clockOffsetS": scan.clock_offset_s,  # null: never measured (not "0")
        "passageAwaited": scan.awaiting,
    })


def encode_void(uuid: str, device: str, reason: str) -> bytes:
    return orjson.dumps({"v": VERSION, "type": "void", "uuid": uuid, "device": device,
                         "reason": reason})


class BadMessage(ValueError):
    """A message of the venue stream this version cannot read."""


def bus_time(scan: BusScan, stored: datetime | None) -> str | None:
    """When `scan` happened, on the bus server's clock (utc_iso; None: unknown).

    `stored`: the server's timestamp of the message (JetStream stamps each message as it
    stores it). A claim (`claim`) is published as the scan is decided and stored in the
    ticket's subject order, so its timestamp is its time to within a round trip, whatever the
    sender's clock says. Every other scan message is the journal publisher's copy, sent after
    the commit or much later: a scan decided offline, one that needed no claim, or every scan
    again once the stream was made again; its timestamp says nothing of when it happened, so
    its `scannedOn` is taken back to the server's clock by the sender's offset at the time it
    decided the scan (as is for a message of an earlier version, which has no offset: only as
    right as the sender's clock, as before the offset existed), and never later than it was
    stored (no scan is stored before it happened: that bounds a fast clock).

    A scan its sender decided before it had ever measured its clock (`clockOffsetS: null`)
    happened at some unknown moment before it was stored, so it is placed where it can never
    let a ticket be admitted again: an entry at the latest moment it can have happened (when it
    was stored), an exit undated (None: derived state takes it as before every dated scan,
    agent.core.scanstate), so neither lets the ticket read as outside after a scan that may have
    followed it. The cost: a holder who really went out there reads as inside until a later
    exit (`alreadyIn`, staff)."""
    if stored is not None and scan.claim:
        return utc_iso(stored)
    if scan.clock_unmeasured:
        if scan.direction == "out" or stored is None:
            return None
        return utc_iso(stored)
    when = parse_platform_time(scan.scanned_on)
    if when is None:
        return None
    if scan.clock_offset_s is not None:
        try:
            when = min(max(when - timedelta(seconds=scan.clock_offset_s), EARLIEST), LATEST)
        except OverflowError:
            when = EARLIEST if scan.clock_offset_s > 0 else LATEST
    return utc_iso(min(when, stored) if stored is not None else when)


def decode(seq: int, subject: str, data: bytes, stored: datetime | None = None) -> Applied:
    """One stream message -> what the venue store applies. BadMessage when unreadable.
    `stored`: the message's server timestamp (None: unknown; the scan's own time then)."""
    try:
        body: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadMessage("not a JSON object")
    kind = body.get("type")
    if kind == "void":
        uuid = body.get("uuid")
        if not isinstance(uuid, str) or not uuid:
            raise BadMessage("void without a uuid")
        return Applied(seq, subject, void_uuid=uuid)
    if kind != "scan":
        raise BadMessage(f"unknown message type {kind!r}")
    try:
        scan = BusScan(
            uuid=_text(body, "uuid"), device=_text(body, "device"),
            lane=body.get("lane") if isinstance(body.get("lane"), str) else None,
            event_id=_int_or_none(body, "eventId"), item_id=_int_or_none(body, "itemId"),
            zone_id=_int_or_none(body, "zoneId"), zone_is_default=bool(body.get("zoneIsDefault")),
            direction=_choice(body, "direction", ("in", "out")), admit=_bool(body, "admit"),
            status=body.get("status") if isinstance(body.get("status"), str) else None,
            scanned_on=_text(body, "scannedOn"), offline=bool(body.get("offline")),
            max_entries=_int_or_none(body, "maxEntries") or 0,
            tracks_exits=bool(body.get("tracksExits")),
            clock_offset_s=_seconds_or_none(body, "clockOffsetS"),
            clock_unmeasured="clockOffsetS" in body and body["clockOffsetS"] is None,
            claim=body.get("claim") is True,
            # only an exit waits that way: an entry taken as not yet made frees the ticket
            awaiting=body.get("passageAwaited") is True and body.get("direction") == "out")
    except (KeyError, TypeError) as exc:
        raise BadMessage(str(exc)) from exc
    return Applied(seq, subject, scan=scan, bus_time=bus_time(scan, stored))


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise KeyError(f"{key} missing or not text")
    return value


def _int_or_none(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key} is not a whole number")
    return value


def _seconds_or_none(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{key} is not a number of seconds")
    return float(value)


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if not isinstance(value, bool):
        raise TypeError(f"{key} is not true/false")
    return value


def _choice(body: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = body.get(key)
    if value not in choices:
        raise KeyError(f"{key} must be one of {choices}")
    return str(value)
