"""The decision's view of an item, stored beside the platform's JSON (cache column `fields`).

A lookup used to re-parse the item JSON on every scan (`parse_item` over ~800 bytes: ~11 us,
a third of a `check`). The sync has that parsed `Item` in hand when it writes the row, so it
stores the Item's fields as a short JSON array too; a lookup rebuilds the Item from it in a
third of the time. The array carries a version: a row written by another version of this code
(or by nobody: rows from before migration 0004, rows whose JSON a re-pairing rewrote) has no
usable array, and the lookup parses the item JSON as before.

The array is the Item exactly as `parse_item` read the platform's payload — more faithful than
re-reading the stored JSON, whose encoding writes ±Infinity (which Python's JSON parser accepts)
as null, i.e. "no bound", and reads integers beyond 64 bits back as floats.
"""

from __future__ import annotations

from typing import Any

import orjson

from agent.core.model import Item, ZoneScan

VERSION = 1  # bump with any change of Item's fields or of the order below


def encode_fields(item: Item) -> str | None:
    """The array for `item`; None when orjson cannot encode it (a lone surrogate in a string):
    that row is then read through its JSON, which keeps such values as escapes."""
    try:
        return orjson.dumps([
            VERSION, item.id, item.item_type, item.parent_id, item.barcode,
            item.historic_barcodes, item.type_name, item.type_id, item.order_ref,
            item.customer_name, item.date_of_birth, item.valid_from, item.valid_to, item.status,
            item.nfc_id, item.scanned_on, item.access_zones,
            [(s.zone_id, s.scan, s.scanned_on, s.uuid) for s in item.scans],
        ]).decode()
    except (orjson.JSONEncodeError, UnicodeDecodeError):
        return None


def decode_fields(text: str) -> Item | None:
    """The Item stored by `encode_fields`, or None for an array of another version or shape
    (the caller then parses the item JSON)."""
    try:
        a: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(a, list) or len(a) != 18 or a[0] != VERSION:
        return None
    zones = a[16]
    try:
        return _item(a, zones)
    except (TypeError, ValueError):  # not an array this code wrote: read the JSON instead
        return None


def _item(a: list[Any], zones: Any) -> Item:
    return Item(
        id=a[1], item_type=a[2], parent_id=a[3], barcode=a[4], historic_barcodes=tuple(a[5]),
        type_name=a[6], type_id=a[7], order_ref=a[8], customer_name=a[9],
        date_of_birth=a[10], valid_from=a[11], valid_to=a[12], status=a[13], nfc_id=a[14],
        scanned_on=a[15], access_zones=None if zones is None else tuple(zones),
        scans=tuple([ZoneScan(*s) for s in a[17]]),
    )
