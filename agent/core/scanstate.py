"""Where a ticket stands in a zone: entries used, inside or out, first and last scan.

Derived, never stored: the fold of this device's journaled admits and the scans the platform
reported (`zoneData.scans`, or `variable` for the default zone). The same scan can be in both
(our upload comes back on the next delta sync); it is counted once, matched by uuid, or by
zone + direction + second when the platform gave no uuid. Pending local scans are always
counted, so older platform state can never undo a scan this gate has made.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from agent.core.codes import parse_platform_time, parse_utc_iso
from agent.core.model import ZoneScan


@dataclass(frozen=True)
class OwnScan:
    """One admit or exit this device journaled (read back by the store's journal)."""

    uuid: str
    zone_id: int | None
    direction: str
    scanned_on: str


@dataclass(frozen=True)
class ScanState:
    entries: int = 0
    inside: bool = False
    first_in: datetime | None = None
    last_scan: datetime | None = None
    last_direction: str | None = None


EMPTY = ScanState()


def _zone_matches(scan_zone: int | None, zone_id: int | None, zone_is_default: bool) -> bool:
    if scan_zone == zone_id:
        return True
    return zone_is_default and (scan_zone is None or zone_id is None)


def derive_state(own: Iterable[OwnScan], platform: Iterable[ZoneScan], zone_id: int | None,
                 zone_is_default: bool) -> ScanState:
    """Fold every known admit of one item in one zone, in time order, into a ScanState."""
    events: list[tuple[datetime, str]] = []
    seen_uuids: set[str] = set()
    seen_keys: set[tuple[str, int]] = set()
    for scan in own:
        if not _zone_matches(scan.zone_id, zone_id, zone_is_default):
            continue
        moment = parse_utc_iso(scan.scanned_on)
        seen_uuids.add(scan.uuid)
        seen_keys.add((scan.direction, int(moment.timestamp())))
        events.append((moment, scan.direction))
    for pscan in platform:
        if not _zone_matches(pscan.zone_id, zone_id, zone_is_default):
            continue
        if pscan.uuid and pscan.uuid in seen_uuids:
            continue
        if pscan.uuid:
            seen_uuids.add(pscan.uuid)  # the platform listing one scan twice counts it once
        # Scan times come from uploads, which are UTC (`YYYY-MM-DD HH:MM:SS`): a platform that
        # echoes that form back (no zone) means UTC, not the event's zone. Only validity
        # times are the box office's local times.
        moment_or_none = parse_platform_time(pscan.scanned_on)
        if moment_or_none is None:
            continue
        if (pscan.scan, int(moment_or_none.timestamp())) in seen_keys:
            continue
        events.append((moment_or_none, pscan.scan))
    if not events:
        return EMPTY
    events.sort(key=lambda e: e[0])
    entries, inside, first_in = 0, False, None
    for moment, direction in events:
        if direction == "in":
            entries += 1
            inside = True
            first_in = first_in or moment
        else:
            inside = False
    last_moment, last_direction = events[-1]
    return ScanState(entries, inside, first_in, last_moment, last_direction)
