"""A small, realistic event in the platform's own JSON shapes, relative to a given time.

Used by `make demo`, by the tests and by technicians who want to try a gate with no platform:
`write_demo_files(dir, now)` writes `events.json`, `zones.json` and `tickets.json` exactly as
`GET /activated-events`, `GET /zones/all` and `GET /entry/tickets` would return them (including
the documented quirks: `variable: []` for unscanned items, an array `transactionId`, ISO and
plain date formats), ready for `gate-agent import`.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

EVENT_ID = 501
OTHER_EVENT_ID = 502
TZ = "Europe/Amsterdam"
ENTRY_ZONE = 9001
FLOOR_ZONE = 9002
BACKSTAGE_ZONE = 9003
GATE_NORTH = 71
NFC_TAG = "0x04A22B9C1D5E80"

# The codes the demo and the tests scan, by what they show.
CODES = {
    "valid": "NU-VALID-0001",
    "valid2": "NU-VALID-0002",
    "floor": "NU-FLOOR-0003",
    "refunded": "NU-REFUND-004",
    "locked": "NU-LOCKED-005",
    "future": "NU-FUTURE-006",
    "expired": "NU-EXPIRED-07",
    "historic": "NU-OLD-000008",
    "replaced": "NU-NEW-000008",
    "product": "NU-PROD-00009",
    "season": "NU-SEASON-010",
    "other_event": "NU-OTHER-0011",
    "nfc_ticket": "NU-NFC-000012",
    "vip": "NU-VIP-000013",
    "entry_only": "NU-ENTRY-0014",
    "unknown": "NOT-A-TICKET",
}


def _plain(moment: datetime, tz: ZoneInfo) -> str:
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def _iso(moment: datetime) -> str:
    return moment.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def build(now: datetime) -> dict[str, Any]:
    """The three payloads for an event running around `now`."""
    tz = ZoneInfo(TZ)
    start, end = now - timedelta(hours=2), now + timedelta(hours=6)
    events = [
        {"id": EVENT_ID, "name": "Harbour Lights Festival", "venue": "Pier 4",
         "start": _plain(start, tz), "end": _plain(end, tz), "timezone": TZ,
         "scanningMode": "pair-nfc-no-credits",
         "gates": [{"id": GATE_NORTH, "name": "North gate"}, {"id": 72, "name": "South gate"}],
         "timeslots": [{"id": 1, "name": "Evening", "start": _plain(start, tz),
                        "end": _plain(end, tz), "ticketTypeIds": [11, 12]}]},
        {"id": OTHER_EVENT_ID, "name": "Harbour Lights — Day 2", "venue": "Pier 4",
         "start": _plain(start + timedelta(days=1), tz), "end": _plain(end + timedelta(days=1), tz),
         "timezone": TZ, "scanningMode": "qr-only", "gates": [], "timeslots": []},
    ]
    zones = [
        {"id": ENTRY_ZONE, "name": "Entry", "scan": "in&out", "capacity": None,
         "openingDate": None, "closingDate": None, "minAge": None, "maxAge": None,
         "attendance": 0, "accessPermission": ["Standard", "VIP"]},
        {"id": FLOOR_ZONE, "name": "Main floor", "scan": "in&out", "capacity": 500,
         "openingDate": _iso(now - timedelta(hours=1)), "closingDate": _iso(end),
         "minAge": None, "maxAge": None, "attendance": 120, "accessPermission": ["Standard"]},
        {"id": BACKSTAGE_ZONE, "name": "Backstage", "scan": "in&out", "capacity": 20,
         "openingDate": _iso(now + timedelta(hours=3)), "closingDate": _iso(end),
         "minAge": 18, "maxAge": None, "attendance": 0, "accessPermission": ["VIP"]},
    ]

    def item(n: int, barcode: str, *, type_name: str = "Standard", type_id: int = 11,
             status: str | None = None, zones_: tuple[int, ...] = (ENTRY_ZONE, FLOOR_ZONE),
             valid_from: datetime | None = None, valid_to: datetime | None = None,
             item_type: str = "ticket", nfc: str | None = None, name: str = "Guest",
             extra_const: dict[str, Any] | None = None) -> dict[str, Any]:
        variable: Any = []
        if status or nfc:
            variable = {"nfcId": nfc, "scannedBy": None, "scannedOn": None,
                        "status": status or "sold", "ticketsInOrderCount": 1,
                        "ticketsInOrderScanned": 0}
        return {
            "id": n, "itemType": item_type, "parentOrderItemId": None,
            "const": {"barcode": barcode, "secureBarcodeSeed": f"{n:064x}", "customerId": n,
                      "transactionId": f"ORD{n:07d}", "type": type_name,
                      "typeDuringSale": type_name, "typeId": type_id, **(extra_const or {})},
            "stable": {"customerName": name, "customerEmail": f"guest{n}@example.com",
                       "dataCaptureAnswers": [], "nationalId": None, "passport": None,
                       "price": 4500, "validFrom": _plain(valid_from, tz) if valid_from else None,
                       "validTo": _iso(valid_to) if valid_to else None,
                       "orderNotes": None, "itemNotes": None},
            "variable": variable,
            "zoneData": {"accessToZones": [{"id": z} for z in zones_], "scans": []},
        }

    c = CODES
    content = [
        item(1, c["valid"], name="Ada Lovelace"),
        item(2, c["valid2"], name="Alan Turing"),
        item(3, c["floor"], name="Grace Hopper"),
        item(4, c["refunded"], status="refunded", name="Refunded Guest"),
        item(5, c["locked"], status="locked", name="Locked Guest"),
        item(6, c["future"], valid_from=now + timedelta(days=1), name="Early Bird"),
        item(7, c["expired"], valid_to=now - timedelta(hours=1), name="Late Comer"),
        item(8, c["replaced"], name="Reissued Guest",
             extra_const={"historicBarcodes": [c["historic"]]}),
        item(9, c["product"], item_type="product", type_name="Parking", type_id=31,
             zones_=(ENTRY_ZONE,), name="Driver"),
        item(10, c["season"], item_type="season_ticket", type_name="Season", type_id=21,
             name="Season Holder"),
        item(12, c["nfc_ticket"], nfc=NFC_TAG, name="Tag Wearer"),
        item(13, c["vip"], type_name="VIP", type_id=12,
             zones_=(ENTRY_ZONE, FLOOR_ZONE, BACKSTAGE_ZONE), name="VIP Guest"),
        item(14, c["entry_only"], type_name="Terrace", type_id=13, zones_=(ENTRY_ZONE,),
             name="Terrace Guest"),
    ]
    content[3]["const"]["transactionId"] = ["ORD0000004", "ORD0000004-B"]  # the array quirk
    link = f"https://api.nuwebgroup.com/v1/entry/tickets?eventId={EVENT_ID}&includeZones=true"
    tickets = {"content": content, "listEndTime": _plain(now, tz), "total": len(content),
               "pagination": {"first": link, "last": link, "prev": None, "next": None,
                              "self": link},
               "dataCaptureQuestions": []}
    other = dict(item(11, c["other_event"], name="Tomorrow's Guest"))
    link2 = link.replace(str(EVENT_ID), str(OTHER_EVENT_ID))
    season_day2 = item(10, c["season"], item_type="season_ticket", type_name="Season",
                       type_id=21, name="Season Holder")
    other_tickets = {"content": [other, season_day2], "listEndTime": _plain(now, tz), "total": 2,
                     "pagination": {"first": link2, "last": link2, "prev": None, "next": None,
                                    "self": link2},
                     "dataCaptureQuestions": []}
    return {"events": events, "zones": {"eventId": EVENT_ID, "zones": zones},
            "tickets": tickets, "other_tickets": other_tickets}


def write_demo_files(directory: Path, now: datetime) -> list[Path]:
    """Write the payloads as JSON files; returns them in import order (events, zones, tickets)."""
    directory.mkdir(parents=True, exist_ok=True)
    payloads = build(now)
    paths = []
    for name in ("events", "zones", "tickets", "other_tickets"):
        path = directory / f"{name}.json"
        path.write_text(json.dumps(payloads[name], indent=1), encoding="utf-8")
        paths.append(path)
    return paths


BULK_FIRST_ID = 100_000


def bulk_barcode(i: int) -> str:
    """Barcode of the i-th extra ticket made by `bulk_tickets`."""
    return f"NU-BULK-{i:07d}"


def bulk_tickets(n: int) -> list[dict[str, Any]]:
    """`n` plain Standard tickets (Entry and Main floor), ids from 100000, barcodes
    `bulk_barcode(i)`: enough distinct admits for soak and crash tests, in the platform's shape."""
    return [{
        "id": BULK_FIRST_ID + i, "itemType": "ticket", "parentOrderItemId": None,
        "const": {"barcode": bulk_barcode(i), "customerId": BULK_FIRST_ID + i,
                  "transactionId": f"BLK{i:07d}", "type": "Standard",
                  "typeDuringSale": "Standard", "typeId": 11},
        "stable": {"customerName": f"Bulk Guest {i}", "dataCaptureAnswers": [],
                   "price": 4500, "validFrom": None, "validTo": None},
        "variable": [],
        "zoneData": {"accessToZones": [{"id": ENTRY_ZONE}, {"id": FLOOR_ZONE}], "scans": []},
    } for i in range(n)]


def sandbox_seed(now: datetime, extra_tickets: int = 0) -> dict[str, Any]:
    """The same event as a `gate-agent sandbox --seed` file (the platform side of the demo),
    optionally with `extra_tickets` more plain tickets (`bulk_tickets`) for load tests."""
    payloads = build(now)
    return {
        "companyName": "Harbour Lights Ltd",
        "events": payloads["events"],
        "zones": {str(EVENT_ID): payloads["zones"]["zones"]},
        "tickets": {str(EVENT_ID): payloads["tickets"]["content"] + bulk_tickets(extra_tickets),
                    str(OTHER_EVENT_ID): payloads["other_tickets"]["content"]},
    }


def demo_config(store_dir: Path, extra: str = "") -> str:
    """A config for the demo event: an entry lane, an exit lane and a floor lane."""
    return f"""
[api]
base_url = "http://127.0.0.1:9/v1"
company_id = 1
# The demo gate is the only device of its company: it may use the whole rate budget.
budget_share = 1.0

[store]
dir = "{store_dir}"

[events]
ids = [{EVENT_ID}]

[[lanes]]
name = "north-in"
gate_id = {GATE_NORTH}
direction = "in"
max_entries = 1

[[lanes]]
name = "north-out"
gate_id = {GATE_NORTH}
direction = "out"
max_entries = 1

[[lanes]]
name = "floor"
zone_id = {FLOOR_ZONE}
direction = "auto"
max_entries = 0
{extra}
"""
