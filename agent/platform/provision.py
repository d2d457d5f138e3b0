"""`gate-agent import`: load the platform's JSON responses from files into the ticket cache.

How a technician provisions a gate with no network, and how tests and the demo seed it. Each
file is recognised by its shape:
- `GET /entry/tickets` response: `{"content": [...], ...}`; the event id comes from
  `--event`, or from the `eventId=` in its `pagination` links;
- `GET /activated-events` response: a bare array of events, or `{"events": [...]}`;
- `GET /zones/all` response: a bare array of zones (`scan`/`capacity` fields); the event id
  from `--event`, or a wrapper `{"eventId": N, "zones": [...]}`.
A file that is none of these is refused with a message saying what was expected; nothing of a
refused file is applied (each file is one transaction).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from agent.core.codes import utc_iso
from agent.core.model import parse_activated_events, parse_item, parse_zones
from agent.errors import ImportFileError
from agent.platform.jsonbody import loads_strict
from agent.store.cache import TicketCache


@dataclass(frozen=True)
class ImportResult:
    path: str
    kind: str  # tickets | events | zones
    event_id: int | None
    count: int
    skipped: int = 0


def import_file(cache: TicketCache, path: str | Path, now: datetime,
                event_id: int | None = None) -> ImportResult:
    p = Path(path)
    return import_text(cache, p, read_import_file(p), now, event_id)


def read_import_file(path: str | Path) -> str:
    """A provisioning file's text. Read apart from applying it, so that `sudo gate-agent
    import` can read a file only root may read and hand the text to the daemon (or apply it as
    the store's owner)."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ImportFileError(f"{p}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"{p}: not JSON ({exc})") from None
    except OSError as exc:
        raise ImportFileError(f"{p}: cannot read: {exc.strerror}") from None


def import_text(cache: TicketCache, path: str | Path, text: str, now: datetime,
                event_id: int | None = None) -> ImportResult:
    """Apply one file's text (`path` names it in results and errors)."""
    p = Path(path)
    try:
        data = loads_strict(text)
    except ValueError as exc:
        raise ImportFileError(f"{p}: not JSON ({exc})") from None
    stamp = utc_iso(now)
    if isinstance(data, dict) and isinstance(data.get("content"), list):
        return _tickets(cache, p, data, event_id, stamp)
    if isinstance(data, dict) and isinstance(data.get("zones"), list):
        return _zones(cache, p, data["zones"], event_id or _int(data.get("eventId")), stamp)
    if isinstance(data, dict) and isinstance(data.get("events"), list):
        return _events(cache, p, data, stamp)
    if isinstance(data, list):
        if all(isinstance(r, dict) and ("scan" in r or "capacity" in r) for r in data) and data:
            return _zones(cache, p, data, event_id, stamp)
        return _events(cache, p, data, stamp)
    raise ImportFileError(
        f"{p}: not a platform response this command knows (expected GET /entry/tickets "
        "{content: [...]}, GET /activated-events [...], or GET /zones/all [...])")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _event_from_links(data: dict[str, Any]) -> int | None:
    links = data.get("pagination")
    if not isinstance(links, dict):
        return None
    for key in ("self", "first", "last", "next"):
        link = links.get(key)
        if isinstance(link, str):
            values = parse_qs(urlparse(link).query).get("eventId")
            if values and values[0].isdigit():
                return int(values[0])
    return None


def _tickets(cache: TicketCache, p: Path, data: dict[str, Any], event_id: int | None,
             stamp: str) -> ImportResult:
    event_id = event_id or _event_from_links(data)
    if event_id is None:
        raise ImportFileError(
            f"{p}: a tickets file does not say its event; pass --event ID")
    items = [parse_item(r) for r in data["content"]]
    good = [i for i in items if i is not None]
    with cache.transaction():
        count = cache.put_items(event_id, good)
        cache.set_cursor(event_id, data.get("listEndTime") if isinstance(
            data.get("listEndTime"), str) else None, stamp)
    return ImportResult(str(p), "tickets", event_id, count, len(items) - len(good))


def _events(cache: TicketCache, p: Path, data: Any, stamp: str) -> ImportResult:
    events = parse_activated_events(data)
    if not events:
        raise ImportFileError(f"{p}: no events with an id found")
    with cache.transaction():
        cache.put_events(events, stamp)
    return ImportResult(str(p), "events", None, len(events))


def _zones(cache: TicketCache, p: Path, rows: list[Any], event_id: int | None,
           stamp: str) -> ImportResult:
    if event_id is None:
        raise ImportFileError(f"{p}: a zones file does not say its event; pass --event ID")
    zones = parse_zones(rows, event_id)
    with cache.transaction():
        cache.put_zones(event_id, zones, stamp)
    return ImportResult(str(p), "zones", event_id, len(zones), len(rows) - len(zones))
