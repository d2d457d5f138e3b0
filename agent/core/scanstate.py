"""Where a ticket stands in a zone: entries used, inside or out, first and last scan.

Derived, never stored: the fold of this device's journaled admits and the scans the platform
reported (`zoneData.scans`, or `variable` for the default zone). The same scan can be in both
(our upload comes back on the next delta sync); it is counted once, matched by uuid, or by
zone + direction + second when the platform gave no uuid. Pending local scans are always
counted, so older platform state can never undo a scan this gate has made. A platform scan
whose `scannedOn` is missing or unreadable still happened: it counts, as made before every dated
scan, undated exits before undated entries (if any order leaves the ticket inside, it is inside:
so an undated entry keeps it inside whatever dated exit follows; first_in/last_scan stay unknown
when only such scans exist); one whose `zoneId` cannot be read counts in every zone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from agent.core.codes import EARLIEST, parse_platform_time, parse_utc_iso
from agent.core.model import UNREADABLE_ZONE, ZoneScan


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
    if scan_zone == zone_id or scan_zone == UNREADABLE_ZONE:
        return True
    return zone_is_default and (scan_zone is None or zone_id is None)


def derive_state(own: Iterable[OwnScan], platform: Iterable[ZoneScan], zone_id: int | None,
                 zone_is_default: bool, venue: Iterable[ZoneScan] = ()) -> ScanState:
    """Fold every known admit of one item in one zone, in time order, into a ScanState.

    `venue`: the admits other gates published on the venue bus. They carry the scan's own
    uuid, so they are matched to this gate's scans (and the platform's) by uuid only: the
    looser match the platform's echoes need (same direction in the same second) would take
    another gate's re-entry a second after this gate's entry for that entry, and admit the
    ticket twice."""
    events: list[tuple[datetime | None, str]] = []
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
        when = parse_platform_time(pscan.scanned_on)
        if when is None:  # it happened, we cannot say when: before every dated scan
            events.append((None, pscan.scan))
            continue
        if (pscan.scan, int(when.timestamp())) in seen_keys:
            continue
        events.append((when, pscan.scan))
    for vscan in venue:
        if not _zone_matches(vscan.zone_id, zone_id, zone_is_default) or vscan.uuid in seen_uuids:
            continue
        if vscan.uuid:
            seen_uuids.add(vscan.uuid)
        events.append((parse_platform_time(vscan.scanned_on), vscan.scan))
    if not events:
        return EMPTY
    # Undated scans first; among them, whose order is unknown, exits before entries: the
    # ticket is taken as inside if any order of them would leave it inside.
    events.sort(key=lambda e: (e[0] or EARLIEST, e[0] is None and e[1] == "in"))
    entries, inside, first_in = 0, False, None
    for when, direction in events:
        if direction == "in":
            entries += 1
            inside = True
            first_in = when if entries == 1 else first_in
        else:
            inside = False
    # An undated entry may as well have been the last scan (a re-entry elsewhere whose time
    # was lost): a dated exit does not settle it. The ticket is inside, never admitted again
    # on the guess that the entry came first (leaving stays possible).
    if not inside and any(when is None and direction == "in" for when, direction in events):
        inside = True
    last_moment, last_direction = events[-1]
    return ScanState(entries, inside, first_in, last_moment, last_direction)
