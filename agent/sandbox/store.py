"""The sandbox's ticket data: seed items plus the mutations scans and pairings make.

Only changed items are stored (a copy of the item with its new last-modified key), so a seed of
a million generated items costs nothing until scanned.

Listing order and delta semantics (documented in docs/platform.md):
- a listing is in seed order (a changed item keeps its place): a full listing is every seed
  item, a delta every item whose last change is at or after `startTime`;
- pages are numbered (`page=N`, as the spec's links show) and cut at offset (N-1)*limit. A
  listing only ever grows while a client pages (an item's change time never goes back, the
  seed never shrinks), so an item changed mid-pass can shift later items forward — a client
  may receive an item twice, never miss one;
- an item taken off the listings (`unlist`, as the platform stops listing a ticket whose order
  was cancelled) is in no listing, full or delta, until it is listed again, which changes it;
- `listEndTime` is the server time at which the pass's first page was served (whole seconds,
  carried in the links) and `startTime` is inclusive: every change made after the pass started
  is in the next delta. Change times never go below a `listEndTime` already handed out, even
  if the server clock is moved back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.sandbox.seed import FMT, Seed

Key = tuple[float, int, int]  # (last-modified epoch seconds, change sequence, item id)


def fmt(epoch: float) -> str:
    return datetime.fromtimestamp(math.floor(epoch), UTC).strftime(FMT)


def parse_time(text: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text.strip().replace("T", " ", 1).replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass
class Found:
    event_id: int
    index: int
    historic: bool


class ItemStore:
    """Seed items + mutations for all events; the caller holds the state lock."""

    def __init__(self, seed: Seed):
        self.seed = seed
        self.base_t = float(math.floor(seed.base_time.timestamp()))
        self.changed: dict[int, dict[int, tuple[Key, dict[str, Any]]]] = {
            eid: {} for eid in seed.items}
        self.seq = 0
        self.horizon = self.base_t  # change times never go below this
        self.unlisted: dict[int, set[int]] = {eid: set() for eid in seed.items}  # item ids

    def events(self) -> list[int]:
        return list(self.seed.items)

    def item(self, event_id: int, index: int) -> dict[str, Any]:
        """The current item (a copy the caller may change and `put` back)."""
        source = self.seed.items[event_id]
        hit = self.changed[event_id].get(source.item_id(index))
        if hit is not None:
            return _copy(hit[1])
        return source.item(index)

    def put(self, event_id: int, item: dict[str, Any], now: float) -> None:
        """Store a changed item: it becomes last-modified now (or later, see `horizon`)."""
        self.seq += 1
        t = max(now, self.horizon)
        self.horizon = t
        self.changed[event_id][int(item["id"])] = ((t, self.seq, int(item["id"])), item)

    def _item_by_id(self, event_id: int, item_id: int) -> dict[str, Any]:
        index = self.seed.items[event_id].find_id(item_id)
        assert index is not None, item_id  # only items found by barcode are unlisted
        return self.item(event_id, index)

    def set_listed(self, event_id: int, item_id: int, listed: bool) -> None:
        """Take an item off every listing, or put it back (the caller then `put`s it: a change
        the next delta names)."""
        (self.unlisted[event_id].discard if listed else self.unlisted[event_id].add)(item_id)

    def hold_horizon(self, t: float) -> None:
        """A listEndTime `t` was handed out: later changes must not be older than it."""
        self.horizon = max(self.horizon, t)

    def find(self, code: str, event_id: int | None = None) -> Found | None:
        """Look a barcode (or a historic one) up, in one event or all."""
        for eid in ([event_id] if event_id is not None else self.events()):
            source = self.seed.items.get(eid)
            hit = source.find_barcode(code) if source is not None else None
            if hit is not None:
                return Found(eid, hit[0], hit[1])
        return None

    def find_nfc(self, nfc_id: str, event_id: int) -> int | None:
        """Index of the item currently paired with `nfc_id` in the event (changes win)."""
        source = self.seed.items[event_id]
        for _key, item in self.changed[event_id].values():
            variable = item.get("variable")
            if isinstance(variable, dict) and str(variable.get("nfcId", "")).upper() == \
                    nfc_id.upper():
                return source.find_id(int(item["id"]))
        index = source.find_nfc(nfc_id)
        if index is None:
            return None
        item = self.item(event_id, index)
        variable = item.get("variable")
        same = isinstance(variable, dict) and str(variable.get("nfcId", "")).upper() == \
            nfc_id.upper()
        return index if same else None

    def listing(self, event_id: int, start: float | None, page: int, limit: int,
                products: bool) -> tuple[list[dict[str, Any]], int]:
        """Page `page` (1-based) of `limit` items: (items, total of the listing)."""
        source = self.seed.items[event_id]
        changed = self.changed[event_id]
        offset = (page - 1) * limit
        unlisted = self.unlisted[event_id]
        if start is None or self.base_t >= start:  # every seed item is in the listing
            total = source.count() if products else source.count_non_products()
            pick = (lambda rank: rank) if products else source.non_product_index
            picked = [pick(rank) for rank in range(offset, min(total, offset + limit))]
            if unlisted:  # cut where they stood: a page may come short
                picked = [i for i in picked if source.item_id(i) not in unlisted]
                total -= sum(1 for item_id in unlisted
                             if products or self._item_by_id(event_id, item_id)
                             .get("itemType") != "product")
        else:  # only items changed at or after `start`, in seed order
            hits = sorted(index for item_id, (k, it) in changed.items()
                          if math.floor(k[0]) >= start and item_id not in unlisted
                          and (products or it.get("itemType") != "product")
                          and (index := source.find_id(item_id)) is not None)
            total = len(hits)
            picked = hits[offset:offset + limit]
        return [self.item(event_id, index) for index in picked], total


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    out = dict(item)
    for part in ("const", "stable"):
        if isinstance(out.get(part), dict):
            out[part] = dict(out[part])
    if isinstance(out.get("variable"), dict):
        out["variable"] = dict(out["variable"])
    if isinstance(out.get("zoneData"), dict):
        zd = out["zoneData"]
        out["zoneData"] = {"accessToZones": list(zd.get("accessToZones", [])),
                           "scans": [dict(s) for s in zd.get("scans", [])]}
    return out
