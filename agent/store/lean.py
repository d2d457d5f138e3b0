"""The lean form of a cached item: its parsed fields, stored beside the platform's JSON.

Every cache hit used to decode the item's ~0.5 KB of stored JSON and run `parse_item` on it
(about 4 us of a hit's Python, more with cold CPU caches). The writers now also store
`orjson.dumps([FORMAT, fields, scans])` in `items.lean` (150-200 bytes), and a lookup builds
the `Item` from that in about 1 us (`bench/lean_bench.py`). The JSON stays the truth: the lean
form is a copy of what `parse_item` reads from it, and anything that cannot be trusted to be that copy is ignored (the lookup then parses
the JSON, correct and slower; never a refusal, never a crash):
- a NULL `lean` (a cache written before migration 0006, or a row another writer left);
- a FORMAT tag other than this code's (see `_format_tag`: any change to the parsing code,
  the cache's JSON helpers, orjson or Python makes every older lean form stale until the
  next sync rewrites the item; the nightly full resync rewrites them all);
- a blob that does not load, or loads into another shape (the marshal forms written before
  session 13 among them).

A lean Item's `raw` is an empty dict: nothing on the lookup path reads `Item.raw` (only the
writers do, from the sync's own Items); `TicketCache.payload` reads the stored JSON.

Why JSON through orjson, not marshal (the form until session 13): every synced item is
packed, and marshal's dumps cost ~0.9 us an item (version 4's reference table alone ~3.9k
instructions) where orjson's cost ~0.2 us, which took back half of the sync apply rate the lean
forms had cost (issue 18). A hit pays ~0.2 us more (JSON has no tuples: the two tuple fields
are converted back) and a row ~28 bytes more. orjson runs no code while loading and refuses
what is not JSON; the fields are ints, texts, None and tuples of those, all of which come
back equal (a lone surrogate or an integer beyond 64 bits cannot be written: that item keeps
no lean form and its lookups parse the JSON).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson

from agent.core import codes, model
from agent.core.model import Item, ZoneScan

# Item's fields in declaration order; the lean form carries all but the last two (`scans`,
# stored as plain tuples, and `raw`, left out) so that `Item(*fields, scans, {})` rebuilds it.
_NAMES = tuple(f.name for f in fields(Item))
if _NAMES[-2:] != ("scans", "raw"):  # pragma: no cover - a guard for whoever reorders Item
    raise RuntimeError(f"agent.store.lean expects Item to end with scans, raw; got {_NAMES}")


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """`operator.attrgetter(*names)` written as Python: 3.11's interpreter reads a slot with
    a specialised instruction, where attrgetter takes the generic attribute lookup each time
    (an Item's 16 fields: ~3,300 instructions a pack through attrgetter, ~1,200 this way).
    The names are Item's own field names (or ZoneScan's), never data."""
    getter: Callable[[Any], tuple[Any, ...]] = eval(
        f"lambda o: ({''.join(f'o.{name}, ' for name in names)})")
    return getter


_plain_fields = _getter(_NAMES[:-2])
_plain_scan = _getter(("zone_id", "scan", "scanned_on", "uuid"))


def _format_tag() -> int | None:
    """A hash of everything that decides what `parse_item` makes of the stored JSON, or of
    this lean form: the parsing code (model, codes), this module, the cache's JSON helpers,
    orjson's and Python's versions. Computed, not a constant someone must remember to bump.
    None (no lean form written or read) when the sources cannot be read."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{sys.version_info[:2]}|{orjson.__version__}".encode())
    here = Path(__file__)
    try:
        for source in (Path(model.__file__ or ""), Path(codes.__file__ or ""), here,
                       here.with_name("cache.py")):
            digest.update(source.read_bytes())
    except OSError:
        return None
    return int.from_bytes(digest.digest()[:4], "big") >> 1  # 31 bits


FORMAT = _format_tag()
_dumps, _loads = orjson.dumps, orjson.loads  # module globals: once per item, no attribute lookup
# Where the tuple-typed fields sit among the packed ones (JSON brings them back as lists).
_HISTORIC, _ZONES = _NAMES.index("historic_barcodes"), _NAMES.index("access_zones")
if {f.name for f in fields(Item)[:-2] if "tuple" in str(f.type)} != {
        "historic_barcodes", "access_zones"}:  # pragma: no cover - a guard for who changes Item
    raise RuntimeError("agent.store.lean turns exactly historic_barcodes and access_zones back "
                       "into tuples; Item's tuple fields are others now")

# An Item holding a NonFiniteText or NonFiniteZone (what parse_item made of a NaN or an
# Infinity) is refused while packing for the cache: orjson hands such subclasses to `default`
# instead of writing them, and every other item pays nothing for the test.
_SUBCLASSES_TO_DEFAULT = orjson.OPT_PASSTHROUGH_SUBCLASS


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not packed for the cache")


def pack(item: Item | None, *, as_orjson_stores_it: bool = False) -> bytes | None:
    """The lean form of `item`; None for no item, when FORMAT is unknown, when a field cannot be
    written as JSON (a lone surrogate, an integer beyond 64 bits: the lookup parses the stored
    JSON instead) or, asked `as_orjson_stores_it`, when the JSON orjson writes for the item's
    dict might parse into another Item: orjson writes NaN and Infinity as null, which
    parse_item reads differently (every other value orjson writes reads back equal), and what
    parse_item made of those shows in the Item as model.NonFiniteText or NonFiniteZone (the
    caller then packs the parse of that JSON). The platform client, imports and the venue
    catalog decode with parsers that refuse NaN and Infinity: this is the second line."""
    if item is None or FORMAT is None:
        return None
    scans = item.scans
    form = (FORMAT, _plain_fields(item), tuple(map(_plain_scan, scans)) if scans else ())
    try:
        if as_orjson_stores_it:
            return _dumps(form, _refuse, _SUBCLASSES_TO_DEFAULT)
        return _dumps(form)
    except orjson.JSONEncodeError:
        return None


def unpack(blob: bytes) -> Item | None:
    """The Item a lean form holds; None when it is stale, damaged or of another shape."""
    try:
        tag, plain, scans = _loads(blob)
        if tag != FORMAT:
            return None
        # JSON has no tuples: the two tuple fields come back as lists (or None, for zones).
        plain[_HISTORIC] = tuple(plain[_HISTORIC])
        zones = plain[_ZONES]
        if zones is not None:
            plain[_ZONES] = tuple(zones)
        # mypy counts `*plain` as filling every parameter; at run time a wrong count raises.
        return Item(*plain, tuple([ZoneScan(*s) for s in scans]) if scans else (),  # type: ignore[call-arg]
                    {})
    except Exception:  # noqa: BLE001 - whatever a damaged blob raises, the JSON answers
        return None
