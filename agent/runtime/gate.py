"""The hot path of one device: code in -> lookup -> decide -> journal -> Decision out.

`Gate` owns no thread and no network. It gathers the facts for `decide()` from the cache and the
journal (a few indexed queries), calls the pure engine, and for a real scan commits the journal
row before returning — so whoever pulses the relay does so only after the scan is durable.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from agent.config import Config, LaneConfig, passage_input_for
from agent.core.codes import clean_code, looks_like_nfc, normalize_nfc_id, parse_utc_iso, utc_iso
from agent.core.decide import Candidate, Decision, Facts, decide
from agent.core.model import item_platform_scans
from agent.core.scanstate import EMPTY, derive_state
from agent.errors import CacheUnavailable, JournalUnavailable, VenueUnavailable, redact
from agent.store.cache import CachedItem, TicketCache
from agent.store.journal import NO_VALUE, Journal, JournalRow, new_scan_uuid
from agent.store.passages import await_passage
from agent.venue.bus import settle_rows
from agent.venue.claims import Claim, VenueLink, needs_claim

log = logging.getLogger(__name__)

PLATFORM_GET_CACHE_S = 60  # identical GETs within 60 s may be answered from a platform cache


@dataclass(slots=True)
class ScanResult:
    """Not frozen (issue 18: a frozen dataclass sets each field through
    `object.__setattr__`); nothing changes one once returned."""

    decision: Decision
    uuid: str | None  # None when nothing was journaled (debounced read, or journal down)
    seq: int | None = None  # its journal row (a relay that then fails voids it by seq)


class _Redo(ScanResult):
    """The venue's answer and the journal-time decision disagree: nothing was written."""


class Gate:
    """Decisions for every lane of this device, over one cache and one journal."""

    def __init__(self, cache: TicketCache, journal: Journal | None, config: Config,
                 venue: VenueLink | None = None, shut: str | None = None):
        """`journal` None: the journal could not be opened; every scan is refused (fail closed)
        unless `store.fail_closed` is off. `venue`: this lane's link to the venue bus
        (agent.venue.claims), None without `[venue]`. `shut`: why every scan is refused
        (denied/storeUnavailable, journaled): a store the decision needs could not be opened
        (venue.db at start; the daemon starts new gates once it opens)."""
        self.shut = shut
        self.cache = cache
        self.journal = journal
        self.config = config
        self.venue = venue
        self._last_read: dict[str, tuple[str, int]] = {}  # lane -> (code, monotonic ms)
        # The last journal write failure (None once a write succeeds again) and how many
        # decided scans have no journal row: lanes report both, status raises the alarm.
        self.journal_error: str | None = None if journal is not None else \
            "the scan journal could not be opened"
        self.unrecorded = 0
        # The last failed read of the cache (None once a read succeeds again): the scan was
        # refused (cacheUnavailable); the lane reports it, the daemon rebuilds the cache.
        self.cache_error: str | None = None
        # Set by the lane that watches this gate's passage inputs (agent.runtime.passage):
        # only its admits wait for a passage; a manual scan opens no gate and waits for none.
        self.confirms_passage = False
        # After a venue claim, the transaction takes the claim's decision again when nothing
        # it was read from has changed (`_decide_again`); off: always decide from fresh facts.
        self.reuse_first_decision = True
        # The first claim of a scan goes in flight: its admit commits while the bus answers
        # (agent.venue.claims); off: the answer first, then the commit (kept for A/B).
        self.claims_in_flight = True
        # The row the scan() in progress (or the last one) committed, None before its
        # commit: a scan that raises after it (the venue's settling of a claim) has its row
        # already, which the lane's safety net keeps as it is (agent.runtime.decisionnet).
        self.committed: ScanResult | None = None

    # -- facts ------------------------------------------------------------------------------

    def facts(self, raw_code: str, lane: LaneConfig, kind: str | None = None,
              mono_ms: int | None = None) -> Facts:
        """Look a code up and gather the state the engine needs (read-only)."""
        code = clean_code(raw_code)
        nfc = normalize_nfc_id(code) if (kind == "nfc" or looks_like_nfc(code)) else None
        if nfc:
            kind, code = "nfc", nfc
        kind = kind or "barcode"
        debounced = False
        if mono_ms is not None and lane.debounce_ms:
            last = self._last_read.get(lane.name)
            debounced = bool(last and last[0] == code and 0 <= mono_ms - last[1] < lane.debounce_ms)
        served = self.config.served_events
        if not code:
            return Facts(code, kind, served_events=served, debounced=debounced)
        if self.shut is not None:  # nothing looked up: no answer can be trusted
            return Facts(code, kind, served_events=served, debounced=debounced,
                         store_error=self.shut)
        found: list[CachedItem] = []
        historic: int | None = None
        empty = False
        try:
            if kind == "nfc":
                found = self.cache.find_nfc(code)
                if not found:
                    empty = self.cache.is_empty()
            else:
                found = self.cache.find_barcode(code)
                if not found:  # one statement answers both questions a miss asks
                    historic, empty = self.cache.miss(code)
                if not found and historic is None and (alt := normalize_nfc_id(code)):
                    found = self.cache.find_nfc(alt)
            if kind == "nfc" and found:
                found = _newest_per_event(found)
            candidates = (self._candidate(found[0], lane),) if len(found) == 1 else \
                tuple([self._candidate(hit, lane) for hit in found])
        except CacheUnavailable as exc:  # refused (cacheUnavailable), journaled, reported
            self.cache_error = str(exc)
            log.error("lane %s: %s; scan of %s refused", lane.name, exc, code)
            return Facts(code, kind, served_events=served, debounced=debounced,
                         cache_error=self.cache_error)
        except VenueUnavailable as exc:  # the venue's admits unknown: refused, journaled
            log.error("lane %s: %s; scan of %s refused", lane.name, exc, code)
            return Facts(code, kind, served_events=served, debounced=debounced,
                         store_error=str(exc))
        self.cache_error = None  # a good read: the cache works (again)
        empty = empty and not found and historic is None
        return Facts(code, kind, candidates, historic, served, debounced, empty)

    def _candidate(self, hit: CachedItem, lane: LaneConfig) -> Candidate:
        event = self.cache.event(hit.event_id)
        zone = self.cache.zone(lane.zone_id) if lane.zone_id else self.cache.default_zone(hit.event_id)
        zone_id = lane.zone_id or (zone.id if zone else None)
        own = self.journal.own_admits(hit.event_id, hit.item.id) if self.journal else []
        # The platform's scans come from the item just parsed (the very rows put_items wrote to
        # `platform_scans` from it), so the hot path does not read them back (issue 18).
        # Other gates' scans from the bus count like the platform's (matched by uuid only).
        venue, placed = self.venue.scans(hit.event_id, hit.item.id) if self.venue is not None \
            else ((), True)
        platform = item_platform_scans(hit.item)
        # A ticket never scanned anywhere (most scans of a gate) has nothing to fold.
        state = derive_state(own, platform, zone_id,
                             zone.is_default_entry if zone else lane.zone_id is None, venue,
                             placed) if own or platform or venue else EMPTY
        occupancy = None
        if zone is not None and zone.capacity:
            acknowledged = acknowledged_before(self.cache.zone_synced_at(zone.id))
            flow = self.journal.unacknowledged_flow(zone.id, acknowledged) if self.journal else 0
            occupancy = (zone.attendance or 0) + flow
        return Candidate(hit.event_id, hit.item, event, zone, zone_id, state, occupancy)

    # -- decisions --------------------------------------------------------------------------

    def check(self, code: str, lane: LaneConfig, now: datetime, direction: str | None = None,
              kind: str | None = None) -> Decision:
        """Dry run: what would happen, recording nothing."""
        return decide(self.facts(code, lane, kind), lane, now, direction)

    def scan(self, code: str, lane: LaneConfig, now: datetime, direction: str | None = None,
             kind: str | None = None, mono_ms: int | None = None) -> ScanResult:
        """A real scan: decided and journaled durably (fsync) before returning.

        The decision is made inside the journal's write transaction (`scan_transaction`), so
        whoever else decides the same ticket at that instant — another lane, another process —
        waits and then sees this scan."""
        self.committed = None
        if self.journal is None:
            unjournaled = self._decide(code, lane, now, direction, kind, mono_ms)
            return self._unrecorded(unjournaled, "the scan journal could not be opened", lane,
                                    now)
        if self.venue is None:  # no claim, so never a redo
            return self._journaled(code, lane, now, direction, kind, mono_ms, None)
        # a redo decides the same read again: not a second read of the code (debounce)
        last_read = self._last_read.get(lane.name)
        for attempt in range(3):
            first: list[tuple[tuple[int, ...], Decision]] = []
            try:
                claim = self.venue.claim(
                    partial(self._first_decision, first, code, lane, now, direction, kind,
                            mono_ms),
                    lane, now, self._tracks_exits,  # on the bus, outside the journal's lock
                    in_flight=attempt == 0 and self.claims_in_flight
                    and not self._awaits_passage(lane),
                    exit_awaits_passage=self.confirms_passage
                    and bool(passage_input_for(lane, "out")))
                if claim.outcome == "in_flight":
                    claim, result = self._in_flight(claim, code, lane, now, direction, kind,
                                                    mono_ms, first)
                else:
                    result = self._journaled(code, lane, now, direction, kind, mono_ms, claim,
                                             first=first)
            except BaseException:
                self.venue.let_go()  # no commit is coming: its claim is the sweep's again
                raise
            self.venue.after_commit(claim, result.decision if result.uuid else None)
            if not isinstance(result, _Redo):
                return result
            if last_read is None:
                self._last_read.pop(lane.name, None)
            else:
                self._last_read[lane.name] = last_read
        return self._unrecorded(result.decision, "the venue and this gate kept disagreeing",
                                lane, now)

    def _awaits_passage(self, lane: LaneConfig) -> bool:
        """Admits on this lane wait for the turnstile's passage pulse (agent.runtime.passage):
        their claim is answered before the commit, as the passage hold is written with it."""
        return self.confirms_passage and bool(lane.passage_in or lane.passage_out)

    def _in_flight(self, claim: Claim, code: str, lane: LaneConfig, now: datetime,
                   direction: str | None, kind: str | None, mono_ms: int | None,
                   first: list[tuple[tuple[int, ...], Decision]]) -> tuple[Claim, ScanResult]:
        """The claim is on its way (agent.venue.claims, step 2): the admit is committed as
        'claiming' meanwhile, so the bus's round trip and the journal's fsync overlap; then
        the answer settles the row. Nothing opens before both: the caller gets the decision
        only from here."""
        assert self.venue is not None and self.journal is not None
        try:
            result = self._journaled(code, lane, now, direction, kind, mono_ms, claim,
                                     first=first)
        except BaseException:
            self.venue.after_commit(self.venue.land(claim), None)  # a grant is voided
            raise
        landed = self.venue.land(claim)
        if not (result.uuid == claim.uuid and result.decision.admit):
            return landed, result  # no admit of this claim's: after_commit voids a grant
        if landed.outcome == "granted":
            self.venue.bus.settle_later(claim.uuid, "claimed")  # off the hot path
            return landed, result
        if landed.outcome == "offline":
            if landed.policy != "refuse":  # the admit stands (Claim.settle's rule)
                self._mark_row(claim.uuid, "offline")
                return landed, result
            self._mark_row(claim.uuid, "void", f"venue claim not answered ({landed.error}); "
                           "policy refuse")
            offline = replace(landed, uuid=new_scan_uuid())
            return offline, self._journaled(code, lane, now, direction, kind, mono_ms,
                                            offline, first=first)
        if landed.outcome == "resend":  # not stored: claim again, waiting for the answer
            self._mark_row(claim.uuid, "void",
                           f"venue claim not stored ({landed.error}); sent again")
            return landed, _Redo(result.decision, None)
        # conflict: another gate wrote the ticket first; catch up with it and decide again
        self._mark_row(claim.uuid, "void", "venue claim conflicted: another gate wrote this "
                       "ticket first")
        self.venue.bus.wait_applied(landed.seq, max(0.0, claim.deadline - time.monotonic()))
        return landed, _Redo(result.decision, None)

    def _mark_row(self, scan_uuid: str, outcome: str, reason: str = "") -> None:
        """Settle this claim's row now (`outcome` offline | void, agent.venue.bus.settle_rows);
        if the journal refuses the write, the bus thread retries it (the row stays 'claiming',
        an admit here, meanwhile: fail closed)."""
        assert self.journal is not None and self.venue is not None
        try:
            settle_rows(self.journal, [(scan_uuid, outcome, reason)])
        except JournalUnavailable as exc:
            log.error("scan %s: claim answered (%s) but its row not marked (%s); retried",
                      scan_uuid, outcome, exc)
            self.venue.bus.settle_later(scan_uuid, outcome, reason)

    def _journaled(self, code: str, lane: LaneConfig, now: datetime, direction: str | None,
                   kind: str | None, mono_ms: int | None, claim: Claim | None,
                   first: list[tuple[tuple[int, ...], Decision]] | None = None) -> ScanResult:
        """Decide inside the journal's write transaction and commit (fsync) the row."""
        assert self.journal is not None
        decision: Decision | None = None
        try:
            with self.journal.scan_transaction():
                decision = self._decide_again(first, code, lane, now, direction, kind, mono_ms)
                if claim is not None:
                    settled = claim.settle(decision, lambda d: needs_claim(
                        d, lane, self._tracks_exits(d)))
                    if settled is None:
                        return _Redo(decision, None)
                    decision = settled
                if not decision.record:
                    return ScanResult(decision, None)
                if claim is not None:
                    scan_uuid = claim.uuid
                    row = _journal_row(scan_uuid, decision, lane, now)
                    scanned_on = row.scanned_on
                    seq = self.journal.insert(claim.mark(row))
                else:  # the usual scan: its row's values straight from the decision
                    scan_uuid, scanned_on = new_scan_uuid(), utc_iso(now)
                    seq = self.journal.insert_scan(
                        _journal_values(scan_uuid, decision, lane, scanned_on))
                if self.confirms_passage and decision.admit and \
                        passage_input_for(lane, decision.direction):
                    # held from upload until the turnstile says (agent.runtime.passage)
                    await_passage(self.journal, scan_uuid, seq, lane.name, decision.direction,
                                  decision.zone_id, decision.status, decision.detail,
                                  scanned_on)
        except JournalUnavailable as exc:
            if decision is None:  # the transaction never began: decide without it
                decision = self._decide(code, lane, now, direction, kind, mono_ms)
            return self._unrecorded(decision, str(exc), lane, now)
        self.journal_error = None
        self.committed = ScanResult(decision, scan_uuid, seq)
        return self.committed

    def _tracks_exits(self, decision: Decision) -> bool:
        zone = self.cache.zone(decision.zone_id) if decision.zone_id else None
        return zone.tracks_exits if zone is not None else True

    def _first_decision(self, first: list[tuple[tuple[int, ...], Decision]], code: str,
                        lane: LaneConfig, now: datetime, direction: str | None,
                        kind: str | None, mono_ms: int | None) -> Decision:
        """The decision a venue claim is made for (outside the journal's lock), kept with the
        versions of the files it read so the transaction can tell whether it still holds."""
        versions = self._read_versions()
        decision = decide(self.facts(code, lane, kind, mono_ms), lane, now, direction)
        first[:] = [(versions, decision)]
        return decision

    def _read_versions(self) -> tuple[int, ...]:
        """What the facts are read from: the cache, the journal, the venue's scans. Each
        version changes when another connection commits to that file (another lane, the sync,
        the bus's consumer); the lane's own reloads and cache swaps hold its lock."""
        assert self.journal is not None and self.venue is not None
        return (id(self.cache), self.cache.data_version(), self.journal.data_version(),
                self.venue.store.data_version())

    def _decide_again(self, first: list[tuple[tuple[int, ...], Decision]] | None, code: str,
                      lane: LaneConfig, now: datetime, direction: str | None,
                      kind: str | None, mono_ms: int | None) -> Decision:
        """The decision inside the journal transaction. After a venue claim, the claim's own
        decision is taken again when nothing it read has changed since (same scan, same
        instant, same facts: `decide` is pure), which saves reading and deciding twice on the
        claim's path; otherwise, and without a venue, decide from fresh facts."""
        if self.reuse_first_decision and first and first[0][0] == self._read_versions():
            decision = first[0][1]
            if mono_ms is not None:
                self._last_read[lane.name] = (decision.code, mono_ms)
            return decision
        return self._decide(code, lane, now, direction, kind, mono_ms)

    def _decide(self, code: str, lane: LaneConfig, now: datetime, direction: str | None,
                kind: str | None, mono_ms: int | None) -> Decision:
        decision = decide(self.facts(code, lane, kind, mono_ms), lane, now, direction)
        if mono_ms is not None:
            self._last_read[lane.name] = (decision.code, mono_ms)
        return decision

    def _unrecorded(self, decision: Decision, error: str, lane: LaneConfig,
                    now: datetime) -> ScanResult:
        """The journal refused the scan: refuse it too (fail closed), unless configured not to."""
        if not decision.record:
            return ScanResult(decision, None)
        self.journal_error, self.unrecorded = error, self.unrecorded + 1
        if self.config.store["fail_closed"] or not decision.admit:
            log.error("journal write failed on lane %s: %s; scan of %s refused",
                      lane.name, error, decision.code)
            refused = replace(decision, admit=False, status="denied",
                              detail="journalUnavailable",
                              message="Gate cannot record scans; please call staff")
            return ScanResult(refused, None)
        log.error("journal write failed on lane %s: %s; %s ADMITTED WITHOUT A RECORD "
                  "(store.fail_closed = false): item %s event %s at %s", lane.name, error,
                  decision.code, decision.item_id, decision.event_id, utc_iso(now))
        return ScanResult(decision, None)

    def record_error(self, refusal: Decision, lane: LaneConfig, now: datetime) -> ScanResult:
        """Journal, on its own, the refusal of a scan whose decision raised before any row
        was written for it (agent.runtime.decisionnet: denied/gateError). If the journal fails
        too — whatever broke the decision may break this — the refusal is counted and reported
        as unrecorded (`_unrecorded`) and kept as it is."""
        if self.journal is None:
            self._unrecorded(refusal, "the scan journal could not be opened", lane, now)
            return ScanResult(refusal, None)
        row = _journal_row(new_scan_uuid(), refusal, lane, now)
        try:
            seq = self.journal.record(row)
        except Exception as exc:  # noqa: BLE001 - not only JournalUnavailable: see above
            error = str(exc) if isinstance(exc, JournalUnavailable) else \
                redact(f"{type(exc).__name__}: {exc}")
            self._unrecorded(refusal, error, lane, now)
            return ScanResult(refusal, None)
        self.journal_error = None
        return ScanResult(refusal, row.uuid, seq)

    def close(self) -> None:
        self.cache.close()
        if self.journal is not None:
            self.journal.close()
        if self.venue is not None:
            self.venue.close()


def acknowledged_before(zone_synced_at: str | None) -> str | None:
    """Occupancy is the zone's `attendance` at its last refresh plus every admit/exit of this
    device the platform has not acknowledged. A scan is acknowledged — inside that
    `attendance` — only when it was marked sent (the upload answered success) before the refresh
    began, less the platform's 60 s cache of identical GETs. Everything else counts: pending,
    quarantined, and sent too late to be in the figure. Counting a scan twice makes `full`
    come early, never late. None (zone never refreshed, unreadable stamp): nothing is."""
    if not zone_synced_at:
        return None
    try:
        refreshed = parse_utc_iso(zone_synced_at)
    except ValueError:
        return None
    return utc_iso(refreshed - timedelta(seconds=PLATFORM_GET_CACHE_S))


def _newest_per_event(found: list[CachedItem]) -> list[CachedItem]:
    """A tag paired to several items of one event: only the most recent pairing counts."""
    best: dict[int, CachedItem] = {}
    for hit in found:
        if hit.event_id not in best or hit.seq > best[hit.event_id].seq:
            best[hit.event_id] = hit
    return sorted(best.values(), key=lambda h: -h.seq)


_UNKNOWN_CODE = "unknown code: no platform item to attach it to"
# Why a row without an event stays local, when it is not an unknown code (never uploaded:
# the platform needs the ticket's event, which the unreadable cache could not give)
_LOCAL_REASONS = {"cacheUnavailable": "ticket cache unreadable: the code was not looked up",
                  "storeUnavailable": "a store could not be opened: the code was not looked up",
                  "gateError": "the decision failed on an error: the code was not decided"}


def _journal_row(scan_uuid: str, d: Decision, lane: LaneConfig, now: datetime) -> JournalRow:
    """Unknown codes have no event to attach them to: kept locally (`local`), never uploaded."""
    local_only = d.event_id is None
    barcode = d.barcode if d.item_id is not None else (d.code if d.kind == "barcode" else None)
    return JournalRow(
        uuid=scan_uuid, code=d.code, kind=d.kind, barcode=barcode,
        nfc_id=d.code if d.kind == "nfc" else None, item_id=d.item_id, event_id=d.event_id,
        zone_id=d.zone_id, zone_is_default=d.zone_is_default, gate_id=lane.gate_id,
        lane=lane.name, direction=d.direction, admit=d.admit, status=d.status,
        status_detail=d.detail, message=d.message, scanned_on=utc_iso(now),
        upload_state="local" if local_only else "pending",
        reason=_LOCAL_REASONS.get(d.detail or "", _UNKNOWN_CODE) if local_only else None,
    )


def _journal_values(scan_uuid: str, d: Decision, lane: LaneConfig,
                    scanned_on: str) -> tuple[Any, ...]:
    """`_journal_row(...)`'s values in `agent.store.journal.SCAN_COLUMNS` order, for
    `Journal.insert_scan`: built without the JournalRow (issue 18: a scan's hot path;
    tests/runtime/test_journal_values.py holds the two to each other). No venue: the columns
    after `reason` stay NULL (a venue's scans go through a claim's JournalRow). Every value is
    exactly an int or a str, bound without sqlite3's adapters: the two flags as 0/1, as SQLite
    stores a bool, and a missing value as NO_VALUE, which the statement makes NULL."""
    kind, code, none = d.kind, d.code, NO_VALUE
    zone_id, detail, gate_id = d.zone_id, d.detail, lane.gate_id
    item_id: object = d.item_id
    event_id: object = d.event_id
    reason: object
    barcode: object
    if event_id is None:
        state, reason = "local", _LOCAL_REASONS.get(detail or "", _UNKNOWN_CODE)
        event_id = none
    else:
        state, reason = "pending", none
    if item_id is None:
        barcode = code if kind == "barcode" else none
        item_id = none
    else:
        barcode = d.barcode if d.barcode is not None else none
    return (scan_uuid, code, kind, barcode, code if kind == "nfc" else none, item_id, event_id,
            none if zone_id is None else zone_id, 1 if d.zone_is_default else 0,
            none if gate_id is None else gate_id, lane.name, d.direction, 1 if d.admit else 0,
            d.status, none if detail is None else detail, d.message, scanned_on, state, reason)
