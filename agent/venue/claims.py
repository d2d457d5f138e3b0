"""Admission against the venue: a claim on the ticket's subject before the local journal commit.

Why one subject per ticket with an expected last sequence, and not KV compare-and-set: a KV
bucket is itself a stream whose `update(key, last=revision)` is exactly this publish, but a KV
value is one state per key, so the claim and the scan would be two writes (the KV entry and the
scan for the other gates) with a crash window between them. On the ticket's subject the claim
*is* the scan: one publish both serialises the decision and tells every gate, its position
orders it with the ticket's other scans and voids, and `Nats-Msg-Id` = scan uuid makes the
journal publisher's later copy of the same scan a no-op. (KV's `create()` is also racy in the
client: a loser may see KeyNotFoundError instead of a wrong-sequence answer.)

The order for one scan in a zone with an entry limit (max_entries > 0, or an in/out zone):
1. decide with what this gate knows (cache, journal, venue scans applied so far), no lock held;
2. if that admits: publish the claim expecting the subject's last sequence as applied here.
   The first attempt goes "in flight" (`claim(in_flight=True)`, the gate's usual path): the
   lane does not wait here, it commits the admit as 'claiming' meanwhile (step 3) and then
   waits with `land()`, so the bus's round trip overlaps the journal's fsync. Otherwise (a
   retry, a lane waiting for passages, no connection) the answer is waited for here: on a
   conflict (another gate wrote the ticket first) wait until the consumer has applied up to
   the sequence the server named, re-decide, retry (at most MAX_ATTEMPTS), all within
   `claim_timeout_ms`. No answer in time: the offline policy (`local` keeps the local
   decision, `refuse` refuses), and the scan is marked as decided offline;
3. the journal transaction (agent.runtime.gate) decides again locally (taking step 1's decision
   again when nothing it read has changed) and commits; the venue's answer is applied there
   (`Claim.settle`) — so other lanes never wait on the bus. In flight, the row is marked
   'claiming' and settled after the answer (granted: 'claimed'; no answer: the policy;
   conflict: voided, and the scan decided again with an answered claim);
4. after the commit: a granted claim whose admit did not reach the journal is voided at once
   (and by the bus's sweep on restart if the process died first; the sweep also settles rows
   left 'claiming' from what the stream holds). docs/venue.md has the crash analysis of each
   step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from agent.config import LaneConfig
from agent.core.codes import utc_iso
from agent.core.decide import Decision, Facts, decide
from agent.core.model import ZoneScan
from agent.errors import VenueUnavailable
from agent.store.journal import JournalRow, new_scan_uuid
from agent.store.venue import BusScan, VenueStore
from agent.venue import messages
from agent.venue.bus import VenueBus
from agent.venue.claim_channel import PendingAnswer

log = logging.getLogger("gate_agent.venue")

MAX_ATTEMPTS = 5
# A claim the bus answered as not stored (no stream answered, or the stream refused it) is
# sent again after this pause while its claim_timeout_ms lasts (within MAX_ATTEMPTS): a new
# stream's leader, or its interest on this node, can take a moment to appear.
RETRY_PAUSE_S = 0.02
# A claim sent in flight waits for its answer after the admit's commit. On a loaded device
# that commit can take the whole claim_timeout_ms, and the claim then got no time at all to be
# answered ("no answer in 0 ms"): the offline policy decided a claim the bus was about to
# answer, and with `local` every gate of a race admitted. So the wait after the commit is at
# least this (or the whole timeout, if shorter): a turnstile's cycle hides it, and it is only
# spent when the device is already late.
MIN_ANSWER_WAIT_S = 0.25


@dataclass
class Claim:
    """The venue's part in one scan: the uuid the scan will carry and what the bus said."""

    uuid: str
    outcome: str  # none (no claim needed) | granted | refused | offline | in_flight | conflict
    # | resend (in flight, not stored: claimed again)
    decision: Decision | None = None  # the decision the claim was made (or refused) for
    seq: int = 0
    error: str = ""
    policy: str = "local"
    max_entries: int = 0
    tracks_exits: bool = False
    pending: PendingAnswer | None = None  # in_flight: the answer to wait for (`land`)
    deadline: float = 0.0  # in_flight: time.monotonic() by which the answer must come
    # this clock minus the bus server's as the scan is decided (None: not measured yet):
    # journaled with the scan, so it is published with it however late (`VenueBus.scan_offset`)
    clock_offset_s: float | None = None
    # the scan's time as its claim says it (UTC ISO; "" when no claim was sent): a void of a
    # grant whose admit was not journaled is judged by it (agent.store.journal `unjournaled`)
    scanned_on: str = ""

    def settle(self, local: Decision, needs_claim: Callable[[Decision], bool]) -> Decision | None:
        """Apply the venue's answer to the decision taken in the journal transaction.
        None: the two disagree in a way only a fresh attempt can settle (redo)."""
        if self.outcome == "offline":
            if local.admit and needs_claim(local) and self.policy == "refuse":
                return replace(local, admit=False, status="denied", detail=None,
                               message="Venue check unavailable; please see staff")
            return local
        if self.outcome == "refused":
            if local.admit and self.decision is not None:
                return self.decision  # the venue knows of an admit this gate had not seen
            return local
        if self.outcome in ("granted", "in_flight"):
            if not local.admit:
                return local  # refused locally after all: a granted claim is voided after commit
            return local if _same_admit(local, self.decision) else None
        # no claim was needed when deciding outside the transaction
        return None if (local.admit and needs_claim(local)) else local

    def mark(self, row: JournalRow) -> JournalRow:
        """The row's venue mark: what the bus did for this scan as journaled.

        A claim granted (or in flight) whose local decision refused after all marks nothing:
        the claim is voided after the commit (`VenueLink.after_commit`), so the row is a plain
        refusal. 'claimed' there would say the venue granted an admit the journal does not
        hold: the publisher skips 'claimed' rows (on the bus already), so the refusal would
        never be published, and status/queue would count it among `decided_claimed`."""
        venue = {"granted": "claimed", "offline": "offline", "in_flight": "claiming"}.get(
            self.outcome)
        if venue in ("claimed", "claiming") and not row.admit:
            venue = None
        return replace(row, venue=venue, max_entries=self.max_entries,
                       tracks_exits=self.tracks_exits, clock_offset_s=self.clock_offset_s)


def _same_admit(a: Decision, b: Decision | None) -> bool:
    return b is not None and (a.event_id, a.item_id, a.zone_id, a.direction) == \
        (b.event_id, b.item_id, b.zone_id, b.direction)


class VenueLink:
    """One lane's link to the venue: its own read connection to venue.db and the shared bus."""

    def __init__(self, bus: VenueBus, policy: str):
        self.bus = bus
        self.policy = policy
        self.timeout_s = bus.timeout_s
        self.store = VenueStore(bus.store_path)
        # The claim this lane holds until its journal commit: the consumer may already have
        # applied it, but it is this very scan, not an earlier admit of the ticket.
        self._holding: str | None = None
        # claims this lane sent for the scan it is deciding: the sweep leaves them alone until
        # `after_commit` (or `let_go`) says the lane is done with them (VenueBus.claims_done)
        self._sent: list[str] = []
        self.last_granted_seq = 0  # the stream position of this lane's last granted claim

    def close(self) -> None:
        self.store.close()

    def scans(self, event_id: int, item_id: int) -> tuple[list[ZoneScan], bool]:
        """The venue's admits of one item, for the derived scan state, and whether they are
        placed on the clock this gate decides by (their bus times plus that clock's offset
        from the bus server's, `VenueBus.offset_s`: one read of the heartbeat board). Before
        the first measurement they are not (False, read at the server's times): how they
        interleave with this gate's own scans is then unknown, and derived state takes the
        side that cannot admit a ticket twice (agent.core.scanstate `derive_state`)."""
        offset = self.bus.offset_s()
        scans = self.store.zone_scans(event_id, item_id, offset or 0.0)
        if self._holding:
            scans = [s for s in scans if s.uuid != self._holding]
        return scans, offset is not None

    def claim(self, decide_now: Callable[[], Decision], lane: LaneConfig, now: datetime,
              tracks_exits: Callable[[Decision], bool], in_flight: bool = False,
              exit_awaits_passage: bool = False) -> Claim:
        """Steps 1-2 of the module docstring, bounded by claim_timeout_ms. `in_flight`: the
        first publish is not waited for here (outcome `in_flight`): the caller commits the
        admit as 'claiming' meanwhile, then waits with `land()`. `exit_awaits_passage`: an
        exit decided here waits for the turnstile's passage (agent.runtime.passage), so its
        claim says so (`passageAwaited`): no gate takes it as made before its gate confirms
        it (agent.venue.messages)."""
        scan_uuid = new_scan_uuid()
        # Every message up to `applied` was committed to venue.db before this decision read it
        # (the consumer commits, then advances applied_seq).
        applied = self.bus.applied_seq
        decision = decide_now()
        exits = tracks_exits(decision)
        base = Claim(scan_uuid, "none", decision, policy=self.policy,
                     max_entries=lane.max_entries, tracks_exits=exits,
                     clock_offset_s=self.bus.scan_offset(scan_uuid))
        if not (decision.admit and needs_claim(decision, lane, exits)):
            return base
        in_flight = in_flight and self.bus.ready  # else answered at once: no overlap
        base.scanned_on = scanned_on = utc_iso(now)
        deadline = time.monotonic() + self.timeout_s
        attempts, not_stored = 0, ""  # attempts: conflicts and moves to another item
        while attempts < MAX_ATTEMPTS:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            subject = messages.ticket_subject(self.bus.name, decision.event_id,
                                              decision.item_id, self.bus.device)
            # The claim expects `expected` to be the subject's last message, so the decision
            # must have seen every message up to it: true when it is at or below `applied`;
            # otherwise decide again now that it has been read.
            try:
                expected = self.store.subject_seq(subject)
            except VenueUnavailable as exc:  # not known what the claim must expect: refused
                log.error("lane %s: %s; scan of %s refused", lane.name, exc, decision.code)
                return replace(base, outcome="refused", decision=decide(
                    Facts(decision.code, decision.kind, store_error=str(exc)), lane, now))
            if expected > applied:
                applied = self.bus.applied_seq
                decision = decide_now()
            if not decision.admit:
                return replace(base, outcome="refused", decision=decision)
            if not needs_claim(decision, lane, tracks_exits(decision)):
                return replace(base, decision=decision)
            if messages.ticket_subject(self.bus.name, decision.event_id, decision.item_id,
                                       self.bus.device) != subject:
                attempts += 1
                continue  # it picked another item meanwhile: claim that one
            body = messages.encode_scan(BusScan(
                uuid=scan_uuid, device=self.bus.device, lane=lane.name,
                event_id=decision.event_id, item_id=decision.item_id, zone_id=decision.zone_id,
                zone_is_default=decision.zone_is_default, direction=decision.direction,
                admit=True, status=decision.status, scanned_on=scanned_on,
                max_entries=lane.max_entries, tracks_exits=exits,
                clock_offset_s=base.clock_offset_s, claim=True,
                awaiting=exit_awaits_passage and decision.direction == "out"))
            if not self._sent or self._sent[-1] != scan_uuid:
                self._sent.append(scan_uuid)
            if in_flight:
                # held from here: the consumer may apply this very claim before the commit
                self._holding = scan_uuid
                pending = self.bus.start_claim(subject, body, scan_uuid, expected, left)
                return replace(base, outcome="in_flight", decision=decision, pending=pending,
                               deadline=deadline)
            answer = self.bus.publish_claim(subject, body, scan_uuid, expected, left)
            if answer.outcome == "granted":
                self.bus.count_claim("granted")
                self._holding = scan_uuid
                self.last_granted_seq = answer.seq
                return replace(base, outcome="granted", decision=decision, seq=answer.seq)
            if answer.outcome == "unavailable":
                if answer.retry and deadline - time.monotonic() > RETRY_PAUSE_S:
                    not_stored = answer.error
                    time.sleep(RETRY_PAUSE_S)  # not stored: send it again (same uuid)
                    continue
                return self._offline(base, answer.error, sent=answer.sent)
            attempts += 1
            self.bus.count_claim("conflicted")
            # another gate wrote this ticket first: catch up to it, then decide again
            if not self.bus.wait_applied(answer.seq, max(0.0, deadline - time.monotonic())):
                break
            applied = -1  # decide again after reading the position, whatever it is
        return self._offline(base, f"no settled answer in {self.timeout_s * 1000:.0f} ms"
                             + (f" (not stored: {not_stored})" if not_stored else ""))

    def land(self, claim: Claim) -> Claim:
        """Wait for the answer to a claim sent `in_flight` (after its row's commit): granted,
        conflict (`seq`: the subject's last, to catch up to) or offline (no answer in time)."""
        assert claim.outcome == "in_flight" and claim.pending is not None
        floor = min(MIN_ANSWER_WAIT_S, self.timeout_s)
        answer = self.bus.claim_answered(
            claim.pending.wait(max(floor, claim.deadline - time.monotonic())))
        landed = replace(claim, pending=None)
        if answer.outcome == "granted":
            self.bus.count_claim("granted")
            self.last_granted_seq = answer.seq
            return replace(landed, outcome="granted", seq=answer.seq)
        if answer.outcome == "unavailable":
            if answer.retry and claim.deadline - time.monotonic() > RETRY_PAUSE_S:
                # not stored (e.g. no stream answered yet): the caller voids the row and
                # claims again, waiting for the answer this time
                return replace(landed, outcome="resend", error=answer.error)
            return self._offline(landed, answer.error, sent=answer.sent)
        self.bus.count_claim("conflicted")
        return replace(landed, outcome="conflict", seq=answer.seq)

    def _offline(self, base: Claim, error: str, *, sent: bool = True) -> Claim:
        self.bus.count_claim("timed_out" if sent else "not_sent", error)
        log.warning("venue claim of %s not answered (%s): policy %s", base.uuid, error,
                    self.policy)
        return replace(base, outcome="offline", error=error)

    def after_commit(self, claim: Claim, journaled: Decision | None) -> None:
        """Step 4: a granted claim whose admit is not in the journal must not stand."""
        self._holding = None
        self.let_go()
        granted = claim.outcome == "granted"
        if granted:
            # the claim is the scan on the bus (its row is marked claimed, never republished):
            # nothing for the publisher, so no wake-up for it
            self.bus.claim_settled(publish=not self.bus.lean_settle)
        if granted and (journaled is None or not journaled.admit):
            decision = claim.decision
            assert decision is not None
            self.bus.void_now({"uuid": claim.uuid, "event_id": decision.event_id,
                               "item_id": decision.item_id,
                               "scanned_on": claim.scanned_on or None},
                              "the admit was not journaled")
        if not granted or (journaled is not None and not journaled.admit):
            self.bus.wake()  # a row for the publisher (a refusal after a grant is one too)

    def let_go(self) -> None:
        """This lane's claims so far are past its journal commit (made, refused or failed):
        the bus's sweep judges them by the journal from now on."""
        if self._sent:
            self.bus.claims_done(self._sent)
            self._sent = []


def needs_claim(decision: Decision, lane: LaneConfig, tracks_exits: bool) -> bool:
    """Admits in zones with an entry limit (max_entries) or in/out state need the venue."""
    return decision.admit and decision.item_id is not None and (
        lane.max_entries > 0 or tracks_exits)
