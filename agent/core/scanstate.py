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

Other gates' scans from the venue bus are read on this gate's clock by its measured offset
from the bus server's. Before the first measurement that offset is unknown, and so is how
their scans interleave with this gate's own (and the platform's): see `derive_state`.
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
    # inside or out depends on how the venue's scans interleave with this gate's, which this
    # gate cannot know yet (its clock not measured against the bus server's): `inside` is
    # then True, the side that never admits twice (agent.core.decide: clockUnmeasured)
    order_unknown: bool = False


EMPTY = ScanState()


def _zone_matches(scan_zone: int | None, zone_id: int | None, zone_is_default: bool) -> bool:
    if scan_zone == zone_id or scan_zone == UNREADABLE_ZONE:
        return True
    return zone_is_default and (scan_zone is None or zone_id is None)


def derive_state(own: Iterable[OwnScan], platform: Iterable[ZoneScan], zone_id: int | None,
                 zone_is_default: bool, venue: Iterable[ZoneScan] = (),
                 venue_placed: bool = True) -> ScanState:
    """Fold every known admit of one item in one zone, in time order, into a ScanState.

    `venue`: the admits other gates published on the venue bus. They carry the scan's own
    uuid, so they are matched to this gate's scans (and the platform's) by uuid only: the
    looser match the platform's echoes need (same direction in the same second) would take
    another gate's re-entry a second after this gate's entry for that entry, and admit the
    ticket twice.

    `venue_placed` False: the venue's scans are on the bus server's clock and this gate has
    not measured its own against it yet (agent.venue.claims `VenueLink.scans`). Their order
    among themselves is known (one clock), and so is this gate's scans' among themselves, but
    not how the two interleave: this clock may be any amount ahead or behind. Taken as
    agreeing (offset 0), a gate 30 s fast read its own exit as after another gate's re-entry
    made since, a gate 30 s slow its own re-entry as before another gate's exit made before
    it: the ticket, inside, read as outside and was admitted again. Since the offset can be
    anything, either side's latest scan may be the ticket's latest: when the two latest agree
    (both entries, both exits) that is the answer whatever the offset; when they differ the
    ticket may be inside, so it is taken as inside (`order_unknown`): an entry is refused
    (never admitted on an order this gate cannot know), an exit is let through."""
    events: list[tuple[datetime | None, str]] = []
    seen_uuids: set[str] = set()
    seen_keys: set[tuple[str, int]] = set()
    # The platform's copy of another gate's scan (uploaded, then synced back) carries that
    # gate's own `scannedOn`, on its clock, which may be off; the bus's copy is on the bus
    # server's clock, read on this one by the measured offset. The bus's copy is the one kept.
    venue = list(venue)
    on_bus = {v.uuid for v in venue if v.uuid} if venue else set()
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
        if pscan.uuid and (pscan.uuid in seen_uuids or pscan.uuid in on_bus):
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
    here = len(events)  # this gate's clock (and the platform's) up to here; the bus's after
    for vscan in venue:
        if not _zone_matches(vscan.zone_id, zone_id, zone_is_default) or vscan.uuid in seen_uuids:
            continue
        if vscan.uuid:
            seen_uuids.add(vscan.uuid)
        events.append((parse_platform_time(vscan.scanned_on), vscan.scan))
    if not events:
        return EMPTY
    unknown = not venue_placed and 0 < here < len(events) and \
        _latest(events[:here]) != _latest(events[here:])
    # Undated scans first; among them, whose order is unknown, exits before entries: the
    # ticket is taken as inside if any order of them would leave it inside.
    events.sort(key=_order)
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
    if (unknown or not inside) and \
            any(when is None and direction == "in" for when, direction in events):
        inside, unknown = True, False  # inside whatever the order: known, offset or not
    last_moment, last_direction = events[-1]
    return ScanState(entries, inside or unknown, first_in, last_moment, last_direction, unknown)


def _order(event: tuple[datetime | None, str]) -> tuple[datetime, bool]:
    """Time order; undated scans first, their exits before their entries."""
    when, direction = event
    return when or EARLIEST, when is None and direction == "in"


def _latest(events: list[tuple[datetime | None, str]]) -> str:
    """The direction of the latest of some scans on one clock, as the fold orders them."""
    return max(reversed(events), key=_order)[1]
