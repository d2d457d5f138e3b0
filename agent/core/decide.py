"""The decision engine: admit or refuse one scan. A pure function — no I/O, time passed in.

It speaks the platform's own vocabulary (`POST /zones/scan` statuses and statusDetails) so that
operators see the words they know, plus camelCase details of our own where the platform has none:
unknownCode, refunded, wrongEvent, typeDisabled, duplicateRead, unknownStatus, cacheEmpty,
cacheUnavailable, storeUnavailable, clockUnmeasured. Two more are the runtime's, never this
engine's: journalUnavailable (agent.runtime.gate) and gateError (a scan whose decision ended in
an exception, agent.runtime.decisionnet).
notYetValid/noLongerValid are *messages*, not details (the platform's detail is
outsideOfValidityPeriod for both).

Rules, in the order they are applied (the first that refuses wins). Where the engine does not
understand what the platform sent it refuses and says why; it never admits on a guess.
 1. same code on the same lane within debounce_ms        -> denied/duplicateRead, not recorded
 2. the cache could not be read (damaged while running)
                                                         -> denied/cacheUnavailable
    a store the decision needs could not be opened (venue.db at start: the other gates'
    scans are unknown)                                   -> denied/storeUnavailable
 3. code unknown (or a replaced barcode)                 -> denied/unknownCode (historicBarcode;
    cacheEmpty when no ticket at all is cached yet)
 4. item of no event this lane serves, or the lane's zone
    belongs to another event (a pinned zone not in the
    cache: the item's zone data or the lane's event_ids
    must name it)                                        -> denied/wrongEvent
 5. direction (auto: out when inside an in/out zone, else in; in when whether it is inside
    depends on an order of scans this gate cannot know yet, below)
    out: inside                                          -> valid, exit recorded; no rule below
         applies: leaving is never refused for status, type, zone, validity or closing
         not inside (never seen in, or already out)      -> alreadyOut, recorded, gate shut
 6. status refunded / locked                             -> denied/refunded, denied/orderLocked
    any status but sold / scanned / absent               -> denied/unknownStatus (names it)
 7. product on a lane without products, type filtered    -> denied/typeDisabled
 8. zone not in the item's accessToZones                 -> denied/itemDoesNotQualify
 9. validFrom/validTo unreadable, or now outside them
    (+ grace; a bare date is that whole day in the
    event's time zone)                                   -> denied/outsideOfValidityPeriod
10. zone opening/closing unreadable, or now outside them -> zoneClosed
11. in:  already inside an in/out zone                   -> alreadyIn
         maybe inside: this gate's and other gates' scans
         cannot be ordered before its clock is measured
         against the venue bus server's (ScanState.
         order_unknown)                                  -> denied/clockUnmeasured
         entries used >= max_entries (platform scans
         without a usable time count too)                -> alreadyIn (single) / scansInExceeded
         occupancy >= capacity (attendance at the last
         zone refresh + this device's unacknowledged
         admits minus exits, see agent.runtime.gate)     -> full
         minAge/maxAge without a date of birth           -> ageUnknown (or admitted, per lane)
         too young / too old                             -> tooYoung / tooOld
12. otherwise                                            -> valid, admitted
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from agent.config import LaneConfig
from agent.core.codes import age_on, parse_platform_time, zone_info
from agent.core.model import ADMISSIBLE_STATUSES, Event, Item, Zone
from agent.core.scanstate import EMPTY, ScanState

STATUSES = ("valid", "alreadyIn", "alreadyOut", "denied", "zoneClosed", "ageUnknown",
            "tooYoung", "tooOld", "full", "scansInExceeded", "requiresConfirmation")
DETAILS = ("historicBarcode", "itemDoesNotQualify", "outsideOfValidityPeriod", "orderLocked",
           "unknownCode", "refunded", "wrongEvent", "typeDisabled", "notPaired", "duplicateRead",
           "unknownStatus", "cacheEmpty", "cacheUnavailable", "storeUnavailable",
           "clockUnmeasured")


@dataclass(slots=True)
class Candidate:
    """One cached item the code matched, with everything the rules need about it.

    Candidate and Facts are built for every lookup and read only by `decide`: slotted and not
    frozen, as a frozen dataclass sets each field through `object.__setattr__` (issue 18)."""

    event_id: int
    item: Item
    event: Event | None = None
    zone: Zone | None = None
    zone_id: int | None = None
    state: ScanState = EMPTY
    occupancy: int | None = None


@dataclass(slots=True)
class Facts:
    """What the lookup found for a code. Built by `agent.runtime.gate`, consumed here."""

    code: str
    kind: str  # barcode | nfc
    candidates: tuple[Candidate, ...] = ()
    historic_event: int | None = None  # the code is a replaced barcode of an item of this event
    served_events: tuple[int, ...] | None = None  # None: every event in the cache
    debounced: bool = False
    cache_empty: bool = False  # no ticket cached at all: nothing was synced or imported yet
    # The cache could not be read (agent.errors.CacheUnavailable): nothing is known of the code
    cache_error: str | None = None
    # A store the decision needs cannot be opened (venue.db at start, agent.runtime.venuewiring):
    # whatever the code, its answer depends on what that store holds
    store_error: str | None = None


@dataclass(slots=True)
class Decision:
    """What `decide` answers for one scan. Slotted and not frozen (issue 18): a frozen
    dataclass sets each of its 14 fields through `object.__setattr__`. Nothing changes a
    Decision once made — copies are made with `dataclasses.replace` (a venue claim, a
    journal failure), and the venue path shares one across threads read-only — and nothing
    hashes it (its `ticket` dict never let it be hashed)."""

    admit: bool
    status: str
    detail: str | None
    direction: str
    message: str
    code: str
    kind: str
    record: bool = True
    event_id: int | None = None
    item_id: int | None = None
    zone_id: int | None = None
    zone_is_default: bool = False
    barcode: str | None = None  # the item's current barcode (what the upload names)
    ticket: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "admit": self.admit, "status": self.status, "statusDetail": self.detail,
            "direction": self.direction, "message": self.message, "code": self.code,
            "kind": self.kind, "eventId": self.event_id, "itemId": self.item_id,
            "zoneId": self.zone_id, "ticket": self.ticket,
        }


def decide(facts: Facts, lane: LaneConfig, now: datetime, direction: str | None = None) -> Decision:
    """Decide one scan. Never raises for any input: every path returns a Decision."""
    wanted = direction or lane.direction

    def refuse(status: str, detail: str | None, message: str, cand: Candidate | None = None,
               applied: str | None = None, record: bool = True) -> Decision:
        return _decision(False, status, detail, applied or _plain(wanted), message, facts, cand,
                         record)

    if facts.debounced:
        return refuse("denied", "duplicateRead", "Same code read again; ignored", record=False)
    if facts.cache_error is not None:
        # Not the ticket's fault either, and no guess: the staff must know the gate is blind.
        return refuse("denied", "cacheUnavailable", "Ticket data cannot be read: this gate "
                      "cannot check any code; please call staff")
    if facts.store_error is not None:
        return refuse("denied", "storeUnavailable", "This gate cannot check tickets now; "
                      "please call staff")
    if not facts.candidates:
        if facts.historic_event is not None:
            replaced = refuse("denied", "historicBarcode",
                              "This barcode was replaced; ask for the current ticket")
            return replace(replaced, event_id=facts.historic_event, barcode=facts.code)
        if facts.cache_empty:
            # Not the ticket's fault: say so, or a technician chases "bad tickets" for an hour.
            return refuse("denied", "cacheEmpty", "No tickets synced yet: this gate cannot "
                          "check any code until `gate-agent sync` or `import` has run")
        return refuse("denied", "unknownCode", "Unknown code: not a ticket for this event")
    served = [c for c in facts.candidates
              if facts.served_events is None or c.event_id in facts.served_events
              if not lane.event_ids or c.event_id in lane.event_ids
              if _zone_of_event(c, lane)]
    if not served:
        return refuse("denied", "wrongEvent", "Ticket is for another event", facts.candidates[0])
    cand = _pick(served, now)
    item = cand.item
    tz = zone_info(cand.event.timezone if cand.event else None)
    zone = cand.zone
    tracks_exits = zone.tracks_exits if zone is not None else True
    state = cand.state
    applied = _plain(wanted)
    if wanted == "auto":  # maybe inside, maybe not: no exit on a guess (refused as an entry)
        applied = "out" if (tracks_exits and state.inside and not state.order_unknown) else "in"
    if applied == "out":  # leaving is never refused for validity reasons
        if not state.inside:
            return refuse("alreadyOut", None, "Not inside; exit not recorded", cand, applied)
        return _decision(True, "valid", None, "out", "Goodbye", facts, cand, True)
    if item.status == "refunded":
        return refuse("denied", "refunded", "Ticket was refunded", cand)
    if item.status == "locked":
        return refuse("denied", "orderLocked", "Order is being changed; try again shortly", cand)
    if item.status not in ADMISSIBLE_STATUSES:
        return refuse("denied", "unknownStatus",
                      f"Ticket status {item.status!r} not understood; refused", cand)
    if item.item_type == "product" and not lane.include_products:
        return refuse("denied", "typeDisabled", "Products are not accepted at this lane", cand)
    if (lane.ticket_types and item.type_id not in lane.ticket_types) or (
            item.type_id is not None and item.type_id in lane.exclude_ticket_types):
        return refuse("denied", "typeDisabled",
                      f"Ticket type {item.type_name or item.type_id} not accepted here", cand)
    if not _zone_access(item, cand):
        return refuse("denied", "itemDoesNotQualify", "Ticket gives no access to this zone", cand)
    if item.valid_from is not None or item.valid_to is not None:  # most items have no bound
        valid_from = parse_platform_time(item.valid_from, tz)
        valid_to = parse_platform_time(item.valid_to, tz, end_of_day=True)
        if _unreadable(item.valid_from, valid_from) or _unreadable(item.valid_to, valid_to):
            return refuse("denied", "outsideOfValidityPeriod",
                          "Validity period not understood; refused", cand)
        grace = timedelta(minutes=lane.grace_minutes) if valid_from or valid_to else _NO_GRACE
        if valid_from and now < valid_from - grace:
            return refuse("denied", "outsideOfValidityPeriod",
                          f"Not yet valid (from {_local(valid_from, tz)})", cand)
        if valid_to and now > valid_to + grace:
            return refuse("denied", "outsideOfValidityPeriod",
                          f"No longer valid (until {_local(valid_to, tz)})", cand)
    if zone is not None and (zone.opening is not None or zone.closing is not None):
        opening = parse_platform_time(zone.opening, tz)
        closing = parse_platform_time(zone.closing, tz)
        if _unreadable(zone.opening, opening) or _unreadable(zone.closing, closing):
            return refuse("zoneClosed", None,
                          f"Zone {zone.name} opening hours not understood; refused", cand)
        if (opening and now < opening) or (closing and now > closing):
            return refuse("zoneClosed", None, f"Zone {zone.name} is closed", cand)
    if tracks_exits and state.inside:
        if state.order_unknown:  # not the ticket's fault: the staff must know why
            return refuse("denied", "clockUnmeasured", "This gate cannot tell yet whether the "
                          "ticket is inside (its clock is not measured against the venue's "
                          "yet); try again in a moment or see staff", cand, applied)
        since = f" since {_local(state.last_scan, tz)}" if state.last_scan else ""
        return refuse("alreadyIn", None, f"Already inside{since}", cand, applied)
    if lane.max_entries and state.entries >= lane.max_entries:
        if lane.max_entries == 1:
            first = f" at {_local(state.first_in, tz)}" if state.first_in else ""
            return refuse("alreadyIn", None, f"Already admitted{first}", cand, applied)
        return refuse("scansInExceeded", None,
                      f"All {lane.max_entries} entries used", cand, applied)
    if zone is not None and zone.capacity and cand.occupancy is not None \
            and cand.occupancy >= zone.capacity:
        return refuse("full", None, f"Zone {zone.name} is full ({zone.capacity})", cand, applied)
    if zone is not None and (zone.min_age or zone.max_age):
        birth = parse_platform_time(item.date_of_birth, tz)
        if birth is None:
            if lane.age_unknown != "admit":
                return refuse("ageUnknown", None, "Age check needed: no date of birth", cand,
                              applied)
        else:
            age = age_on(birth.astimezone(tz), now.astimezone(tz))
            if zone.min_age and age < zone.min_age:
                return refuse("tooYoung", None, f"Under {zone.min_age}", cand, applied)
            if zone.max_age and age > zone.max_age:
                return refuse("tooOld", None, f"Over {zone.max_age}", cand, applied)
    return _decision(True, "valid", None, "in", f"Welcome — {item.type_name or 'ticket'}",
                     facts, cand, True)


_NO_GRACE = timedelta(0)  # no readable validity bound to widen: no timedelta built


def _plain(direction: str) -> str:
    return "out" if direction == "out" else "in"


def _pick(cands: list[Candidate], now: datetime) -> Candidate:
    """Several matches (a season ticket in several events): the one whose event covers now."""
    if len(cands) == 1:
        return cands[0]
    for cand in cands:
        if cand.event is not None:
            tz = zone_info(cand.event.timezone)
            start = parse_platform_time(cand.event.start, tz)
            end = parse_platform_time(cand.event.end, tz)
            if start and end and start <= now <= end:
                return cand
    for cand in cands:
        tz = zone_info(cand.event.timezone if cand.event else None)
        start = parse_platform_time(cand.item.valid_from, tz)
        end = parse_platform_time(cand.item.valid_to, tz)
        if (start is None or start <= now) and (end is None or now <= end):
            return cand
    return cands[0]


def _zone_of_event(cand: Candidate, lane: LaneConfig) -> bool:
    """A zone belongs to one event: an item may use the lane's zone only if it is of that
    event. A pinned zone not (yet) in the cache proves nothing: then the item's own zone data
    must list it, or the lane must name the item's event in `event_ids`."""
    if cand.zone is not None:
        return cand.zone.event_id == cand.event_id
    if lane.zone_id is None:
        return True
    return (cand.item.access_zones is not None and lane.zone_id in cand.item.access_zones) \
        or cand.event_id in lane.event_ids


def _unreadable(raw: str | None, parsed: datetime | None) -> bool:
    """A validity bound that was sent but cannot be read: not "no bound", a refusal."""
    return parsed is None and raw is not None and bool(raw.strip())


def _zone_access(item: Item, cand: Candidate) -> bool:
    """No zone data: no restriction known. With zone data, the zone must be listed — except the
    default Entry zone when the list is empty (the platform's examples omit it)."""
    if item.access_zones is None or cand.zone_id is None:
        return True
    if cand.zone_id in item.access_zones:
        return True
    is_default = cand.zone.is_default_entry if cand.zone else False
    return is_default and not item.access_zones


def _local(moment: datetime | None, tz: Any) -> str:
    """A time in the event's zone for a message: `strftime`'s text, %-formatted (half the
    cost) from year 1000 on, where both spell it alike."""
    if not moment:
        return "?"
    local = moment.astimezone(tz)
    if local.year < 1000:
        return local.strftime("%Y-%m-%d %H:%M")
    return "%04d-%02d-%02d %02d:%02d" % (  # noqa: UP031 - faster than an f-string
        local.year, local.month, local.day, local.hour, local.minute)


def _decision(admit: bool, status: str, detail: str | None, direction: str, message: str,
              facts: Facts, cand: Candidate | None, record: bool) -> Decision:
    ticket: dict[str, Any] = {}
    if cand is not None:
        item = cand.item
        ticket = {
            "name": item.customer_name, "type": item.type_name, "typeId": item.type_id,
            "orderRef": item.order_ref, "itemType": item.item_type, "scansIn": cand.state.entries,
            "lastScan": cand.state.last_scan.isoformat() if cand.state.last_scan else None,
        }
    # Positional, in field order (a class called with keywords packs them into a dict first).
    if cand is None:
        return Decision(admit, status, detail, direction, message, facts.code, facts.kind,
                        record, None, None, None, False, None, ticket)
    return Decision(
        admit, status, detail, direction, message, facts.code, facts.kind, record,
        cand.event_id, cand.item.id, cand.zone_id,
        cand.zone.is_default_entry if cand.zone else cand.zone_id is None,  # zone_is_default
        cand.item.barcode, ticket)
