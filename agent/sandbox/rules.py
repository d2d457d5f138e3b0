"""What the sandbox does with uploads, pairings and real-time zone scans.

Each function validates a request body the Laravel way (collecting field errors keyed like
`tickets.3.barcode`) and either returns the response body or raises `Invalid` — nothing is
changed when a request is invalid. The docs are silent on several points; our choices:
- an unknown barcode anywhere in an upload fails the whole batch with 422
  (`tickets.N.barcode: The selected barcode is invalid.`) and records nothing, so a client must
  isolate the bad rows and resend the rest;
- an unknown barcode in a pairing is a 422 on `barcode`;
- zone scans: unknown -> denied, refunded -> denied, locked -> denied/orderLocked, historic
  barcode -> denied/historicBarcode, no access -> denied/itemDoesNotQualify, outside opening
  hours -> zoneClosed, capacity reached -> full, in-only zone already entered -> alreadyIn,
  in&out zone: in while in -> alreadyIn, out while out -> alreadyOut.
"""

from __future__ import annotations

from typing import Any

from agent.core.codes import normalize_nfc_id
from agent.sandbox.store import ItemStore, fmt, parse_time


class Invalid(Exception):
    """A 422 with Laravel field errors."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__("The given data was invalid.")
        self.errors = errors


def _need_str(body: dict[str, Any], key: str, errors: dict[str, list[str]], prefix: str = "",
              max_len: int | None = None) -> str | None:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        errors[f"{prefix}{key}"] = [f"The {prefix}{key} field is required."]
        return None
    if max_len is not None and len(value) > max_len:
        errors[f"{prefix}{key}"] = [f"The {prefix}{key} may not be greater than {max_len} "
                                    "characters."]
        return None
    return value


def received_row(row: Any, request_uuid: Any, skipped: str | None = None) -> dict[str, Any]:
    """What `/_sandbox/received` keeps of one uploaded ticket row."""
    row = row if isinstance(row, dict) else {}
    record = {k: row.get(k) for k in _RECORDED}
    record["requestUuid"] = request_uuid
    if skipped:
        record["skipped"] = skipped
    return record


_RECORDED = ("uuid", "barcode", "eventId", "zoneId", "status", "statusDetail", "scan",
             "scannedOn", "admittedThroughGateId", "scannedBy")


def upload(store: ItemStore, body: Any, seen_scan_uuids: set[str], now: float,
           received: list[dict[str, Any]], time_form: str = "iso_z") -> dict[str, Any]:
    """`POST /entry/tickets` (request-uuid replay is handled by the caller). Every row is
    appended to `received`, applied or not."""
    try:
        return _upload(store, body, seen_scan_uuids, now, received, time_form)
    except Invalid:
        tickets = body.get("tickets") if isinstance(body, dict) else None
        for row in tickets if isinstance(tickets, list) else []:
            received.append(received_row(row, body.get("uuid"), "refused 422"))
        raise


def _upload(store: ItemStore, body: Any, seen_scan_uuids: set[str], now: float,
            received: list[dict[str, Any]], time_form: str) -> dict[str, Any]:
    errors: dict[str, list[str]] = {}
    if not isinstance(body, dict):
        raise Invalid({"uuid": ["The uuid field is required."]})
    _need_str(body, "uuid", errors)
    tickets = body.get("tickets")
    if not isinstance(tickets, list) or not tickets:
        errors["tickets"] = ["The tickets field is required."]
        raise Invalid(errors)
    plan = []
    for n, row in enumerate(tickets):
        p = f"tickets.{n}."
        if not isinstance(row, dict):
            errors[f"tickets.{n}"] = [f"The tickets.{n} must be an object."]
            continue
        code = _need_str(row, "barcode", errors, p)
        event_id = row.get("eventId")
        if not isinstance(event_id, int) or isinstance(event_id, bool):
            errors[p + "eventId"] = [f"The {p}eventId must be an integer."]
        if row.get("status") not in ("scanned", "failed"):
            errors[p + "status"] = [f"The selected {p}status is invalid."]
        if row.get("scan") not in (None, "in", "out"):
            errors[p + "scan"] = [f"The selected {p}scan is invalid."]
        when = _need_str(row, "scannedOn", errors, p)
        if when is not None and parse_time(when) is None:
            errors[p + "scannedOn"] = [f"The {p}scannedOn does not match the format Y-m-d H:i:s."]
        detail = row.get("statusDetail")
        if detail is not None and (not isinstance(detail, str) or len(detail) > 255):
            errors[p + "statusDetail"] = [f"The {p}statusDetail may not be greater than 255 "
                                          "characters."]
        zone = row.get("zoneId")
        if zone is not None and (not isinstance(zone, int) or isinstance(zone, bool)):
            errors[p + "zoneId"] = [f"The {p}zoneId must be an integer."]
        for key in ("admittedThroughGateId", "scannedBy"):  # integers in the schema, not null
            if key in row and (not isinstance(row[key], int) or isinstance(row[key], bool)):
                errors[p + key] = [f"The {p}{key} must be an integer."]
        if code and isinstance(event_id, int) and not isinstance(event_id, bool):
            if event_id not in store.seed.items or store.find(code, event_id) is None:
                errors[p + "barcode"] = ["The selected barcode is invalid."]
        plan.append(row)
    if errors:
        raise Invalid(errors)
    for row in plan:
        scan_uuid = row.get("uuid")
        if isinstance(scan_uuid, str) and scan_uuid in seen_scan_uuids:
            received.append(received_row(row, body["uuid"], "duplicate uuid"))
            continue
        if isinstance(scan_uuid, str):
            seen_scan_uuids.add(scan_uuid)
        received.append(received_row(row, body["uuid"]))
        if row["status"] == "scanned":
            _apply_scan(store, row, now, time_form)
    return {"success": True}


def _entry_zone(store: ItemStore, event_id: int) -> int | None:
    for zone in store.seed.zones.get(event_id, []):
        if str(zone.get("name", "")).strip().lower() == "entry":
            return int(zone["id"])
    return None


def echo_time(upload_form: str, time_form: str) -> str:
    """A scan time as the platform echoes it: the spec shows both ISO 8601 with `Z` and the
    upload form `YYYY-MM-DD HH:MM:SS` (UTC); `time_form` picks one."""
    if time_form == "upload":
        return upload_form
    return upload_form.replace(" ", "T") + ".000000Z"


def _apply_scan(store: ItemStore, row: dict[str, Any], now: float,
                time_form: str = "iso_z") -> None:
    found = store.find(row["barcode"], row["eventId"])
    assert found is not None
    item = store.item(found.event_id, found.index)
    variable = item["variable"] if isinstance(item.get("variable"), dict) else {}
    direction = row.get("scan") or "in"
    if variable.get("status") in (None, "sold", "scanned") and direction == "in":
        variable["status"] = "scanned"
    variable.setdefault("status", "sold")
    scanned_on = echo_time(row["scannedOn"], time_form)
    variable["scannedOn"] = scanned_on
    variable["scannedBy"] = str(row.get("scannedBy") or row.get("admittedThroughGateId") or "")
    item["variable"] = variable
    zone_data = item.setdefault("zoneData", {"accessToZones": [], "scans": []})
    zone_data.setdefault("scans", []).append({
        "zoneId": row.get("zoneId") or _entry_zone(store, found.event_id), "scan": direction,
        "scannedOn": scanned_on, "uuid": row.get("uuid") or ""})
    store.put(found.event_id, item, now)


def pair(store: ItemStore, body: Any, now: float) -> dict[str, Any]:
    """`POST /tickets/pair` with the documented re-pairing rules."""
    errors: dict[str, list[str]] = {}
    if not isinstance(body, dict):
        raise Invalid({"barcode": ["The barcode field is required."]})
    code = _need_str(body, "barcode", errors)
    raw_nfc = _need_str(body, "nfc-id", errors)
    nfc = normalize_nfc_id(raw_nfc) if raw_nfc else None
    if raw_nfc and nfc is None:
        errors["nfc-id"] = ["The nfc-id format is invalid."]
    event_raw = body.get("event-id")
    event_id = int(event_raw) if isinstance(event_raw, str | int) and \
        str(event_raw).isdigit() else None
    if event_id is None:
        errors["event-id"] = ["The event-id field is required."]
    again = body.get("pair-barcode-again", False)
    if not isinstance(again, bool):
        errors["pair-barcode-again"] = ["The pair-barcode-again field must be true or false."]
    if errors:
        raise Invalid(errors)
    assert code and nfc and event_id is not None
    found = store.find(code, event_id) if event_id in store.seed.items else None
    if found is None or found.historic:
        raise Invalid({"barcode": ["The selected barcode is invalid."]})
    item = store.item(event_id, found.index)
    variable = item["variable"] if isinstance(item.get("variable"), dict) else {}
    current = variable.get("nfcId")
    if current and str(current).upper() != nfc.upper() and not again:
        raise Invalid({"pair-barcode-again": [
            "The ticket already has a tag; send pair-barcode-again to re-pair it."]})
    holder = store.find_nfc(nfc, event_id)
    if holder is not None and holder != found.index:
        other = store.item(event_id, holder)
        other_var = other.get("variable")
        if isinstance(other_var, dict):
            other_var.pop("nfcId", None)
            store.put(event_id, other, now)
    variable.setdefault("status", "sold")
    variable["nfcId"] = nfc
    item["variable"] = variable
    store.put(event_id, item, now)
    return {"status": "valid", "barcode": code, "nfcId": nfc}


def zone_decision(store: ItemStore, zones: dict[int, tuple[int, dict[str, Any]]], body: Any,
                  now: float, record: bool, time_form: str = "iso_z") -> dict[str, Any]:
    """`POST /zones/scan` (record=True) and `/zones/check` (record=False)."""
    if not isinstance(body, dict):
        raise Invalid({"zoneId": ["The zone id field is required."]})
    zone_raw = body.get("zoneId")
    zone_id = int(zone_raw) if isinstance(zone_raw, str | int) and str(zone_raw).isdigit() \
        else None
    if zone_id is None or zone_id not in zones:
        raise Invalid({"zoneId": ["The selected zone id is invalid."]})
    codes = body.get("barcodes") if record else [body.get("barcode")]
    nfcs = body.get("nfcIds") if record else [body.get("nfcId")]
    code = next((c for c in (codes or []) if isinstance(c, str) and c), None)
    nfc = next((c for c in (nfcs or []) if isinstance(c, str) and c), None)
    if code is None and nfc is None:
        raise Invalid({"barcodes" if record else "barcode": ["A barcode or NFC id is required."]})
    direction = body.get("scan", "in")
    if direction not in ("in", "out", "auto"):
        raise Invalid({"scan": ["The selected scan is invalid."]})
    event_id, zone = zones[zone_id]
    found = store.find(code, event_id) if code else None
    if found is None and nfc:
        norm = normalize_nfc_id(nfc)
        index = store.find_nfc(norm, event_id) if norm else None
        found = None if index is None else store.find(
            str(store.item(event_id, index)["const"]["barcode"]), event_id)
    answer: dict[str, Any] = {"barcode": code or "", "capacity": zone.get("capacity", 0)}
    if found is None:
        return {**answer, "status": "denied", "statusDetail": "itemDoesNotQualify"}
    item = store.item(event_id, found.index)
    variable = item["variable"] if isinstance(item.get("variable"), dict) else {}
    zone_data = item.get("zoneData") or {}
    scans = [s for s in zone_data.get("scans", []) if s.get("zoneId") == zone_id]
    inside = bool(scans) and scans[-1].get("scan") == "in"
    if direction == "auto":
        direction = "out" if inside and zone.get("scan") != "in" else "in"
    opening, closing = (parse_time(str(zone[k])) if zone.get(k) else None
                        for k in ("openingDate", "closingDate"))
    access = [a.get("id") for a in zone_data.get("accessToZones", [])]
    if found.historic:
        return {**answer, "status": "denied", "statusDetail": "historicBarcode"}
    if variable.get("status") == "refunded":
        return {**answer, "status": "denied"}
    if variable.get("status") == "locked":
        return {**answer, "status": "denied", "statusDetail": "orderLocked"}
    if zone_id not in access:
        return {**answer, "status": "denied", "statusDetail": "itemDoesNotQualify"}
    if (opening and now < opening) or (closing and now > closing):
        return {**answer, "status": "zoneClosed"}
    if direction == "in" and (inside or (zone.get("scan") == "in" and scans)):
        return {**answer, "status": "alreadyIn"}
    if direction == "out" and not inside:
        return {**answer, "status": "alreadyOut"}
    attendance = sum(1 for i in _inside_count(store, event_id, zone_id))
    if direction == "in" and zone.get("capacity") and attendance >= int(zone["capacity"]):
        return {**answer, "status": "full", "attendance": attendance}
    if record:
        _apply_scan(store, {"barcode": item["const"]["barcode"], "eventId": event_id,
                            "zoneId": zone_id, "scan": direction, "scannedOn": fmt(now),
                            "uuid": body.get("uuid"), "scannedBy": "zones/scan"}, now,
                    time_form)
        attendance += 1 if direction == "in" else -1
    return {**answer, "status": "valid", "attendance": max(0, attendance)}


def _inside_count(store: ItemStore, event_id: int, zone_id: int) -> list[int]:
    """Items currently inside a zone (only changed items can be: seed scans are Entry-only)."""
    inside = []
    for _key, item in store.changed[event_id].values():
        scans = [s for s in (item.get("zoneData") or {}).get("scans", [])
                 if s.get("zoneId") == zone_id]
        if scans and scans[-1].get("scan") == "in":
            inside.append(int(item["id"]))
    return inside
