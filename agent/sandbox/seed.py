"""Deterministic sandbox data: events, zones and entry items in the platform's shapes.

Items are generated from their index (`GeneratedItems`), so `--tickets 1000000` costs no
memory until an item changes; the sandbox's state keeps only mutations. The same index always
gives the same item, and barcodes encode their index (`SF0000042`), so any barcode can be
looked up without a table. A JSON seed file (`load_seed`) gives explicit items instead.

Generated event 1001 "Sandbox Festival" (Europe/London, qr-only), item index i, id 100000+i,
barcode `SF` + i as 7 digits:
  i % 20 == 5  season_ticket          i % 20 == 7  product (only with includeProducts)
  i % 20 == 9  add-on ticket, parentOrderItemId = id of item i-1
  i % 100 == 13 refunded              i % 100 == 17 locked
  i % 10 == 3  (else) already scanned in at the Entry zone
  i % 50 == 21 has a historic (replaced) barcode `H` + barcode
  i % 25 == 11 NFC-paired, nfcId `0x04A1` + i as 8 hex digits
  i % 4 == 0   may also enter zone 5002 "VIP Lounge" (in&out, capacity 50, 10:00-23:00 UTC)
Event 1002 "Sandbox Club Night" (America/New_York, pair-nfc-no-credits): 40 items, barcodes
`CN` + 7 digits, ids 900000+i, same rules; zone 5003 "Entry" (in&out).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from agent.core.model import historic_barcodes
from agent.errors import ImportFileError

FMT = "%Y-%m-%d %H:%M:%S"
SCAN_NS = uuid.UUID("6f1c8a52-5d3e-4c1e-9a57-0d7e1b2c3a4f")


class ItemSource(Protocol):
    """The items of one event, addressed by index (their order in a full listing)."""

    def count(self) -> int: ...
    def item(self, index: int) -> dict[str, Any]: ...
    def item_id(self, index: int) -> int: ...
    def is_product(self, index: int) -> bool: ...
    def count_non_products(self) -> int: ...
    def non_product_index(self, rank: int) -> int: ...
    def find_barcode(self, code: str) -> tuple[int, bool] | None: ...
    def find_id(self, item_id: int) -> int | None: ...
    def find_nfc(self, nfc_id: str) -> int | None: ...


@dataclass
class GeneratedItems:
    """`n` items computed from their index; nothing stored."""

    event_id: int
    n: int
    id_base: int
    prefix: str
    entry_zone: int
    extra_zone: int | None
    day: datetime

    def count(self) -> int:
        return self.n

    def item_id(self, index: int) -> int:
        return self.id_base + index

    def is_product(self, index: int) -> bool:
        return index % 20 == 7

    def count_non_products(self) -> int:
        products = self.n // 20 + (1 if self.n % 20 > 7 else 0)
        return self.n - products

    def non_product_index(self, rank: int) -> int:
        """Index of the `rank`-th (0-based) item that is not a product (one in 20 is)."""
        block, r = divmod(rank, 19)
        return block * 20 + (r if r < 7 else r + 1)

    def barcode(self, index: int) -> str:
        return f"{self.prefix}{index:07d}"

    def find_barcode(self, code: str) -> tuple[int, bool] | None:
        historic = code.startswith("H" + self.prefix)
        plain = code[1:] if historic else code
        digits = plain[len(self.prefix):]
        if not plain.startswith(self.prefix) or not digits.isdigit():
            return None
        index = int(digits)
        if index >= self.n or self.barcode(index) != plain:
            return None
        if historic and index % 50 != 21:
            return None
        return index, historic

    def find_id(self, item_id: int) -> int | None:
        index = item_id - self.id_base
        return index if 0 <= index < self.n else None

    def find_nfc(self, nfc_id: str) -> int | None:
        text = nfc_id.upper()
        if not text.startswith("0X04A1") or len(text) != 14:
            return None
        try:
            index = int(text[6:], 16)
        except ValueError:
            return None
        return index if index < self.n and index % 25 == 11 else None

    def item(self, index: int) -> dict[str, Any]:
        i, item_id = index, self.id_base + index
        kind = "season_ticket" if i % 20 == 5 else "product" if i % 20 == 7 else "ticket"
        status = "refunded" if i % 100 == 13 else "locked" if i % 100 == 17 else \
            "scanned" if i % 10 == 3 else "sold"
        order = i // 3
        valid_to = self.day + (timedelta(days=365) if kind == "season_ticket" else
                               timedelta(days=1, hours=6))
        item: dict[str, Any] = {
            "id": item_id,
            "itemType": kind,
            "const": {
                "barcode": self.barcode(i), "secureBarcodeSeed": f"seed{item_id:x}",
                "customerId": 7000 + order, "transactionId": f"ORD{self.event_id}-{order:07d}",
                "type": "VIP" if i % 4 == 0 else "Parking add-on" if i % 20 == 9 else
                "General Admission", "typeDuringSale": "General Admission",
                "typeId": 13 if i % 4 == 0 else 11 + i % 2,
            },
            "stable": {
                "customerName": f"Guest {i}", "customerEmail": f"guest{i}@example.com",
                "dataCaptureAnswers": [], "price": 2500 + (i % 4) * 500,
                "validFrom": self.day.strftime(FMT), "validTo": valid_to.strftime(FMT),
                "orderNotes": "", "itemNotes": "",
            },
            "variable": [],
            "zoneData": {"accessToZones": [{"id": self.entry_zone}], "scans": []},
        }
        if i % 20 == 9 and i > 0:
            item["parentOrderItemId"] = item_id - 1
        variable: dict[str, Any] = {}
        if status != "sold":
            variable["status"] = status
        if status == "scanned":
            scanned_on = (self.day + timedelta(hours=9, seconds=i % 3600)).strftime(FMT)
            variable.update(scannedBy="Gate A (seed)", scannedOn=scanned_on,
                            ticketsInOrderCount=3, ticketsInOrderScanned=1)
            item["zoneData"]["scans"].append({
                "zoneId": self.entry_zone, "scan": "in", "scannedOn": scanned_on,
                "uuid": str(uuid.uuid5(SCAN_NS, f"{self.event_id}:{i}"))})
        if i % 25 == 11:
            variable["nfcId"] = f"0x04A1{i:08X}"
        if i % 50 == 21:
            variable["historicBarcodes"] = ["H" + self.barcode(i)]
        if variable:
            variable.setdefault("status", "sold")
            item["variable"] = variable
        if i % 4 == 0 and self.extra_zone:
            item["zoneData"]["accessToZones"].append({"id": self.extra_zone})
        return item


@dataclass
class ListItems:
    """Items given explicitly (a seed file), in the platform's `content[]` shape."""

    rows: list[dict[str, Any]]
    _by_code: dict[str, tuple[int, bool]] = field(default_factory=dict)
    _by_id: dict[int, int] = field(default_factory=dict)
    _by_nfc: dict[str, int] = field(default_factory=dict)
    _non_products: list[int] | None = None

    def __post_init__(self) -> None:
        for index, row in enumerate(self.rows):
            self._by_id[int(row["id"])] = index
            const = row.get("const") or {}
            variable = row.get("variable") or {}
            if isinstance(const, dict) and const.get("barcode"):
                self._by_code[str(const["barcode"])] = (index, False)
            for old in historic_barcodes(row):
                self._by_code.setdefault(old, (index, True))
            if isinstance(variable, dict):
                if variable.get("nfcId"):
                    self._by_nfc[str(variable["nfcId"]).upper()] = index

    def count(self) -> int:
        return len(self.rows)

    def item(self, index: int) -> dict[str, Any]:
        return json.loads(json.dumps(self.rows[index]))

    def item_id(self, index: int) -> int:
        return int(self.rows[index]["id"])

    def is_product(self, index: int) -> bool:
        return self.rows[index].get("itemType") == "product"

    def count_non_products(self) -> int:
        return sum(1 for i in range(len(self.rows)) if not self.is_product(i))

    def non_product_index(self, rank: int) -> int:
        if self._non_products is None:
            self._non_products = [i for i in range(len(self.rows)) if not self.is_product(i)]
        return self._non_products[rank]

    def find_barcode(self, code: str) -> tuple[int, bool] | None:
        return self._by_code.get(code)

    def find_id(self, item_id: int) -> int | None:
        return self._by_id.get(item_id)

    def find_nfc(self, nfc_id: str) -> int | None:
        return self._by_nfc.get(nfc_id.upper())


@dataclass
class Seed:
    """Everything the sandbox serves; `events`/`zones` are platform-shaped dicts."""

    company_id: int
    company_name: str
    events: list[dict[str, Any]]
    zones: dict[int, list[dict[str, Any]]]
    items: dict[int, ItemSource]
    base_time: datetime  # last-modified time of every item not changed since start


def _event(event_id: int, name: str, tz: str, mode: str, day: datetime,
           gates: list[tuple[int, str]], slots: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": event_id, "name": name, "city": "Sandbox City", "venue": "Sandbox Arena",
            "start": (day + timedelta(hours=8)).strftime(FMT),
            "end": (day + timedelta(days=1, hours=2)).strftime(FMT),
            "timezone": tz, "scanningMode": mode,
            "gates": [{"id": g, "name": n} for g, n in gates], "timeslots": slots}


def _zone(zone_id: int, name: str, scan: str, day: datetime, capacity: int | None = None,
          hours: tuple[int, int] | None = None) -> dict[str, Any]:
    zone: dict[str, Any] = {"id": zone_id, "name": name, "scan": scan, "accessPermission": [],
                            "attendance": 0, "hideAttendees": False}
    if capacity is not None:
        zone["capacity"] = capacity
    if hours is not None:
        zone["openingDate"] = (day + timedelta(hours=hours[0])).strftime(FMT)
        zone["closingDate"] = (day + timedelta(hours=hours[1])).strftime(FMT)
    return zone


def generated_seed(tickets: int = 1000, company_id: int = 1, now: datetime | None = None) -> Seed:
    """The built-in seed; `tickets` items for event 1001 (any size: nothing is stored)."""
    day = (now or datetime.now(UTC)).astimezone(UTC).replace(hour=0, minute=0, second=0,
                                                              microsecond=0)
    slots = [{"id": 301, "name": "Morning", "start": (day + timedelta(hours=8)).strftime(FMT),
              "end": (day + timedelta(hours=12)).strftime(FMT), "ticketTypeIds": [11]},
             {"id": 302, "name": "Afternoon", "start": (day + timedelta(hours=12)).strftime(FMT),
              "end": (day + timedelta(hours=18)).strftime(FMT), "ticketTypeIds": [12]}]
    events = [
        _event(1001, "Sandbox Festival", "Europe/London", "qr-only", day,
               [(1, "Gate A"), (2, "Gate B")], slots),
        _event(1002, "Sandbox Club Night", "America/New_York", "pair-nfc-no-credits", day,
               [(3, "Door")], []),
    ]
    zones = {1001: [_zone(5001, "Entry", "in", day),
                    _zone(5002, "VIP Lounge", "in&out", day, capacity=50, hours=(10, 23))],
             1002: [_zone(5003, "Entry", "in&out", day)]}
    items: dict[int, ItemSource] = {
        1001: GeneratedItems(1001, tickets, 100000, "SF", 5001, 5002, day),
        1002: GeneratedItems(1002, 40, 900000, "CN", 5003, None, day),
    }
    return Seed(company_id, "Sandbox Events Ltd", events, zones, items, day - timedelta(days=1))


def load_seed(path: str | Path, company_id: int = 1, now: datetime | None = None) -> Seed:
    """Read a JSON seed: {"companyName"?, "events": [...], "zones": {"<eventId>": [...]},
    "tickets": {"<eventId>": [content items]}} — all in the platform's response shapes."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        events = [dict(e) for e in data["events"]]
        zones = {int(k): list(v) for k, v in data.get("zones", {}).items()}
        tickets = {int(k): list(v) for k, v in data.get("tickets", {}).items()}
        for e in events:
            zones.setdefault(int(e["id"]), [{"id": 90000 + int(e["id"]), "name": "Entry",
                                             "scan": "in"}])
        items: dict[int, ItemSource] = {int(e["id"]): ListItems(tickets.get(int(e["id"]), []))
                                        for e in events}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImportFileError(f"{path}: not a sandbox seed ({type(exc).__name__}: {exc})") from exc
    day = (now or datetime.now(UTC)).astimezone(UTC).replace(hour=0, minute=0, second=0,
                                                              microsecond=0)
    return Seed(company_id, str(data.get("companyName", "Sandbox Events Ltd")), events, zones,
                items, day - timedelta(days=1))


def export_seed(seed: Seed, out_dir: str | Path, max_items: int = 100_000) -> list[Path]:
    """Write `activated-events.json`, `zones-<id>.json` and `tickets-<id>.json` (a
    `GET /entry/tickets` body with every item, products included) for `gate-agent import`.

    Each file says its event, so `gate-agent import DIR/*.json` takes them in one go: the
    tickets page carries the `pagination` links the platform writes (with `eventId=`), the
    zones are wrapped as `{"eventId": N, "zones": [...]}` (a bare GET /zones/all array does
    not name its event, and import never guesses one from a file name)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "activated-events.json"]
    written[0].write_text(json.dumps(seed.events, indent=1))
    for event in seed.events:
        eid = int(event["id"])
        zones_path = out / f"zones-{eid}.json"
        zones_path.write_text(json.dumps({"eventId": eid, "zones": seed.zones.get(eid, [])},
                                         indent=1))
        source = seed.items[eid]
        rows = [source.item(i) for i in range(min(source.count(), max_items))]
        tickets_path = out / f"tickets-{eid}.json"
        link = f"/entry/tickets?eventId={eid}&limit={max(1, len(rows))}&includeProducts=true&page=1"
        tickets_path.write_text(json.dumps({
            "content": rows, "listEndTime": seed.base_time.strftime(FMT), "total": len(rows),
            "pagination": {"first": link, "last": link, "self": link},
            "dataCaptureQuestions": []}))
        written += [zones_path, tickets_path]
    return written
