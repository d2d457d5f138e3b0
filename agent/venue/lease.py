"""The venue's leader lease: one key in a JetStream KV bucket with a TTL.

(The bucket also holds one `reach.<device>` record per gate that may lead, living as long as
a lease would: agent.venue.reach. Only the `leader` key is the lease.)

Election uses the engine's own compare-and-set, nothing of our own:
- acquire = `kv.create("leader")`: succeeds for exactly one caller while the key is absent;
- renew   = `kv.update("leader", last=<our revision>)`: fails as soon as anyone else wrote it;
- the bucket's TTL (`max_age`) removes a value that was not renewed, so a dead or paused
  leader's lease disappears within `lease_ttl_s` and `create` succeeds for the next one.
Any exception from create (wrong last sequence, timeout, no quorum, and the client's
occasional `KeyNotFoundError` for a losing create under a race) means "not granted".
A renewal tells an answer from its absence. Refused by the server (someone else wrote the key,
or it expired: wrong last sequence; the bucket gone; any refusal not understood), the grant is
dropped at once. Not answered (a timeout, no responders while JetStream elects a stream
leader, the link reconnecting), it is held, not extended: it stays valid only until its
`valid_until` (below), which the server's TTL outlasts, so a hiccup shorter than the TTL
costs the venue no change of leader and no new term. A wrong last sequence whose key holds
this very grant's value (holder, term, epoch) is this device's own earlier renewal that
landed though its answer was lost: its revision is taken and the renewal made again.

Fencing a slow, paused or partitioned old leader, in three layers:
1. Local time. A grant is trusted only until `sent_at + ttl * SAFE_FRACTION`, where `sent_at`
   is the monotonic time *before* the create/update request left: the server's expiry is
   later than that. CLOCK_MONOTONIC keeps running while a process is SIGSTOPped, so a leader
   resumed after its lease has expired finds `valid()` false before it does anything; every
   leader action (`guard()`) checks it — in particular before each platform request.
2. The term (`Term`): the lease bucket's creation time, then the KV revision of the create
   that won the lease, compared in that order. Revisions are stream sequences, so within one
   bucket a later leader's revision is always larger; a bucket deleted and made again (an
   operator's `nats kv rm`, a node's data wiped) restarts its revisions at 1, but it was
   created later, so its leaders' terms are still larger than every term of the old one.
   Every message a leader writes carries its term (agent.venue.term: `Venue-Leader-Term` and
   `Venue-Leader-Epoch`, readable by gates of every version), and readers drop messages of
   a term older than the newest they have seen: a publish that was already in flight when
   the leader froze cannot undo the new leader's work, whichever bucket it led in.
3. The platform's own idempotency keys (scan uuid, request uuid): whatever a stale leader
   still manages to send to the platform scans nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from nats.js.errors import (
    APIError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    ServiceUnavailableError,
)

from agent.venue.term import Term

log = logging.getLogger("gate_agent.venue.leader")

LEASE_KEY = "leader"
SAFE_FRACTION = 0.8  # trust a grant for this part of the TTL only (clock rate, latency)


_UNIX = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def epoch_of(created: datetime | None) -> int:
    """A bucket's creation time as a term's epoch; ValueError when the server gives none
    (a term that cannot be ordered is never used)."""
    if created is None:
        raise ValueError("the lease bucket has no creation time: its terms cannot be ordered")
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return (created - _UNIX) // _MICROSECOND


class NotLeader(RuntimeError):
    """This device does not hold a valid lease: it must not act as the venue's leader."""


def bucket_name(venue: str) -> str:
    return f"VENUE_{venue.replace('-', '_')}_LEADER"


@dataclass(frozen=True)
class LeaderInfo:
    """Who leads, as the bucket says (for status on every gate). `epoch`: the term's
    (agent.venue.term), None in a record a leader of before epochs wrote."""

    holder: str
    term: int
    since: str
    revision: int
    epoch: int | None = None


class Lease:
    """This device's view of the lease: `acquire()`/`renew()` on the bus, `valid()` locally."""

    def __init__(self, kv: Any, holder: str, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.kv = kv
        self.holder = holder
        self.ttl_s = ttl_s
        self.clock = clock
        self.term = 0  # revision of the create that won; 0 while not leading
        self.epoch = 0  # the lease bucket's creation time (Term.epoch) of that create
        self._epoch_seen: int | None = None  # the bucket's, at the last acquire
        self.revision = 0  # our last write to the key
        self.since = ""
        self.valid_until = 0.0
        self.last_error: str | None = None
        self._lock = asyncio.Lock()  # renewals from the timer and before requests, one at a time

    def valid(self, now: float | None = None) -> bool:
        """True while a grant is held and young enough to trust (see the module docstring)."""
        now = self.clock() if now is None else now
        return self.term > 0 and now < self.valid_until

    def guard(self) -> int:
        """The term to act under, or NotLeader. Call before every leader action."""
        if not self.valid():
            raise NotLeader(f"{self.holder} holds no valid lease")
        return self.term

    def stamp(self) -> Term:
        """The `Term` to stamp a leader write with, or NotLeader (`guard()` first)."""
        self.guard()
        return Term(self.epoch, self.term)

    async def _bucket_epoch(self) -> int:
        status = await self.kv.status()
        return epoch_of(status.stream_info.created)

    def _value(self, since: str) -> bytes:
        """The record every gate's status reads. `term` stays the bare revision, as gates of
        before read it (`int(body["term"])`); the epoch is a key of its own, which they
        ignore."""
        return orjson.dumps({"holder": self.holder, "term": self.term, "epoch": self.epoch,
                             "since": since})

    async def acquire(self, since: str) -> bool:
        """Try to become the leader (the key must be absent). Any error: not granted.

        The term's epoch is the bucket's creation time read before the create (the last
        acquire's reading) and again after it: the create landed in the bucket of that time
        only if both agree. A bucket made again in between would otherwise give the new
        bucket's epoch to a revision of the old one — a term that could outrank the new
        bucket's real leader. They differ: not granted this round (the key, if ours, is
        reclaimed at the next)."""
        sent_at = self.clock()
        try:
            before = self._epoch_seen or await self._bucket_epoch()
        except Exception as exc:  # noqa: BLE001 - any failure means "not granted"
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            return False
        try:
            revision = await self.kv.create(LEASE_KEY, self._value(since))
        except Exception as exc:  # noqa: BLE001 - any failure means "not granted"
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            revision = await self._reclaim(since)
            if not revision:
                return False
        try:
            self._epoch_seen = await self._bucket_epoch()
        except Exception as exc:  # noqa: BLE001 - any failure means "not granted"
            self._epoch_seen = None
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            return False
        if self._epoch_seen != before:
            self.last_error = "the lease bucket was made again during the grant: not trusted"
            return False
        self.term = self.revision = int(revision)
        self.epoch = before
        self.since = since
        self.valid_until = sent_at + self.ttl_s * SAFE_FRACTION
        # Write the term into the value so every gate's status can show it (a renewal).
        await self.renew()
        return self.valid()

    async def _reclaim(self, since: str) -> int:
        """The lease is held under this device's own name: a previous run of this device that
        died (one daemon per store is enforced by its lock; device names are unique in a
        venue). Take it over with a compare-and-set on the revision we read — a new, larger
        term — instead of idling out its TTL after every restart. 0: not granted."""
        held = await current_leader(self.kv)
        if held is None or held.holder != self.holder:
            return 0
        try:
            return int(await self.kv.update(LEASE_KEY, self._value(since), last=held.revision))
        except Exception as exc:  # noqa: BLE001 - any failure means "not granted"
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            return 0

    async def renew(self) -> bool:
        """Extend the lease if it is still ours: True when the server confirmed it now. A
        refusal drops the grant at once; no answer holds it until `valid_until` (module
        docstring), so `valid()` may stay True after a False here."""
        async with self._lock:
            return await self._renew()

    async def _renew(self, again: bool = True) -> bool:
        if self.term == 0:
            return False
        sent_at = self.clock()
        if sent_at >= self.valid_until:
            self._drop("lease expired before it was renewed")
            return False
        try:
            revision = await self.kv.update(LEASE_KEY, self._value(self.since),
                                            last=self.revision)
        except KeyWrongLastSequenceError as exc:
            if again and await self._own_write_landed():
                return await self._renew(again=False)
            self._drop(f"renewal refused: {type(exc).__name__}: {exc}"[:200])
            return False
        except APIError as exc:
            if isinstance(exc, ServiceUnavailableError):  # no quorum / JetStream away
                return self._not_answered(exc)
            self._drop(f"renewal refused: {type(exc).__name__}: {exc}"[:200])
            return False
        except Exception as exc:  # noqa: BLE001 - timeouts, no responders, the link away
            return self._not_answered(exc)
        self.revision = int(revision)
        self.valid_until = sent_at + self.ttl_s * SAFE_FRACTION
        return True

    def _not_answered(self, exc: Exception) -> bool:
        """A renewal nobody answered: the grant is held, not extended (module docstring)."""
        left = self.valid_until - self.clock()
        self.last_error = (f"renewal not answered ({type(exc).__name__}: {exc}"[:160]
                           + f"); the lease is held for {max(0.0, left):.1f} s more")
        log.warning("venue leader %s (term %d): %s", self.holder, self.term, self.last_error)
        return False

    async def _own_write_landed(self) -> bool:
        """After a wrong last sequence: is the key's value this grant's own (an earlier
        renewal that landed though its answer was lost)? Then its revision is ours."""
        try:
            entry = await self.kv.get(LEASE_KEY)
            body = orjson.loads(entry.value or b"{}")
        except Exception:  # noqa: BLE001 - unreadable: not known to be ours
            return False
        if not isinstance(body, dict) or (body.get("holder"), body.get("term"),
                                          body.get("epoch")) != (self.holder, self.term,
                                                                 self.epoch):
            return False
        self.revision = int(entry.revision or 0)
        return self.revision > 0

    def _drop(self, why: str) -> None:
        if self.term:
            log.warning("venue leader %s (term %d) steps down: %s", self.holder, self.term, why)
        self.last_error = why
        self.term = 0
        self.epoch = 0
        self.revision = 0
        self.valid_until = 0.0

    async def release(self) -> None:
        """Give the lease up (a clean stop, a step-down) so the next leader need not wait out
        the TTL. Under the renewals' lock: a renewal before a request (agent.venue.budget)
        must not move the revision between the check and the delete."""
        async with self._lock:
            await self._release()

    async def _release(self) -> None:
        if self.term and self.valid():
            try:
                await self.kv.delete(LEASE_KEY, last=self.revision)
            except Exception as exc:  # noqa: BLE001 - it expires by itself
                log.info("venue lease not released (%s); it expires by TTL", exc)
        self._drop("released")


async def current_leader(kv: Any) -> LeaderInfo | None:
    """What the bucket says now (None: nobody leads, or the value is unreadable)."""
    try:
        return await read_leader(kv)
    except Exception:  # noqa: BLE001 - the bucket did not answer: not known to lead
        return None


async def read_leader(kv: Any) -> LeaderInfo | None:
    """Who leads, as the bucket answers: None when the lease is absent, expired, released or
    unreadable (nobody leads); the bus's error when the bucket does not answer (no quorum, a
    timeout), which is not "nobody leads" (agent.venue.election counts a venue without a
    leader only on answers)."""
    try:
        entry = await kv.get(LEASE_KEY)
    except KeyNotFoundError:  # absent, expired or released (a delete marker)
        return None
    if entry is None or not entry.value:
        return None
    try:
        body = orjson.loads(entry.value)
        epoch = body.get("epoch")
        if not (epoch is None or type(epoch) is int):
            return None
        return LeaderInfo(holder=str(body["holder"]), term=int(body["term"]),
                          since=str(body["since"]), revision=int(entry.revision or 0),
                          epoch=epoch or None)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
