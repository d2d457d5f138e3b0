"""The rate governor: every request to the platform waits here for a slot first.

The platform limits requests per company (shared by every device of the company) over a rolling
window and answers 429 beyond it, blocking the company until the window replenishes. A gate
that hits 429 cannot upload scans, so the governor keeps this device inside its share of the
limit however the network behaves:

- a log of this device's own requests, counted conservatively: a request holds its slot from
  the moment it is sent *until it is answered or given up* (the server counts it on arrival,
  somewhere in that span), and ages out one window after that — the latest moment the server
  could have counted it. Never more than its share (`requests_per_minute * budget_share`, at
  least 1) in the log, so the server never sees more than the share in any of its windows,
  whatever the one-way latencies;
- what the server last said (`X-Remaining-Requests`, `X-Available-In-Seconds`), from the answer
  to the most recently *sent* request only: an answer that arrives after a later request's
  answer is stale and its count ignored. Every request of ours the server may not have counted
  yet when it answered (sent after it, or in flight then) is subtracted; when nothing is known
  to be left we wait for the window;
- `upload_reserve` slots (of both budgets) that only uploads may use;
- after a 429, nothing is sent until the announced wait has passed;
- strict priorities UPLOAD > DELTA_SYNC > REFRESH > OTHER: the highest waiting priority is
  served first, so a backlog of refreshes never delays an upload.

Shares of all devices of a company must sum to at most 1; a device cannot know it is alone,
so the default share is a fraction (see `api.budget_share`).

`RateBudget` holds the arithmetic (pure, time passed in); `Governor` queues asyncio waiters on
top of it and hands out a `Ticket` per send, which the caller returns with `done()` (and with
`observe()` when an answer came). Time comes from an injectable clock (`now()`,
`async sleep()`), so tests can run the governor in simulated time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol


class Priority(IntEnum):
    """Lower value = served first."""

    UPLOAD = 0
    DELTA_SYNC = 1
    REFRESH = 2
    OTHER = 3


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """The running event loop's monotonic time (simulated when the loop's time is)."""

    def now(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:  # status read outside the loop: the loop's clock is monotonic
            return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


SLOT_MARGIN_S = 0.5
NEVER = math.inf


@dataclass(frozen=True)
class Ticket:
    """One granted send: its order among this device's sends and when it was granted."""

    seq: int
    sent_at: float


class RateBudget:
    """How many sends are allowed when: pure bookkeeping, every method takes `now`."""

    def __init__(self, requests_per_minute: int, budget_share: float = 1.0,
                 upload_reserve: int = 2, window_s: float = 60.0):
        self.window_s = float(window_s)
        self.share = max(1, math.floor(requests_per_minute * budget_share + 1e-9))
        # Non-uploads must always be able to send at least one request per window.
        self.reserve = max(0, min(upload_reserve, self.share - 1))
        # seq -> when the request finished (answered or given up); None while in flight.
        self.slots: dict[int, float | None] = {}
        self.next_seq = 1
        self.blocked_until = 0.0
        self.server_remaining: int | None = None
        self.server_seen_at = 0.0
        self.server_window_s = self.window_s
        self.seen_seq = 0  # the send whose answer gave `server_remaining`
        self.unseen_before: set[int] = set()  # earlier sends in flight when it was answered
        # Our requests the server counted when it told us what is left: each frees a slot
        # there when it ages out. Only trusted when this device owns the whole budget.
        self.sole_device = budget_share >= 1.0
        self.counted_at_seen: list[int] = []

    def _expiry(self, seq: int) -> float:
        done = self.slots.get(seq)
        return NEVER if done is None else done + self.window_s

    def _prune(self, now: float) -> None:
        for seq in [s for s, done in self.slots.items()
                    if done is not None and done + self.window_s <= now]:
            del self.slots[seq]

    def _server_known(self, now: float) -> bool:
        return (self.server_remaining is not None
                and now < self.server_seen_at + self.server_window_s)

    def _unseen(self) -> int:
        """Our sends the server may not have counted in its last known `remaining`."""
        return (self.next_seq - 1 - self.seen_seq) + len(self.unseen_before)

    def ready_at(self, priority: Priority, now: float) -> float:
        """Earliest time (>= now) at which one send of `priority` is allowed; `NEVER` while
        the slots it needs are held by requests still in flight (their end wakes the queue)."""
        self._prune(now)
        reserve = 0 if priority == Priority.UPLOAD else self.reserve
        allowed = self.share - reserve
        at = now
        excess = len(self.slots) + 1 - allowed
        if excess > 0:
            at = max(at, sorted(self._expiry(s) for s in self.slots)[excess - 1])
        if self._server_known(now):
            assert self.server_remaining is not None
            left = self.server_remaining - self._unseen()
            if left - reserve < 1:
                at = max(at, self._server_slot_at(reserve + 1 - left))
        return max(at, self.blocked_until)

    def _server_slot_at(self, needed: int) -> float:
        """When the server's rolling window will have `needed` more free slots.

        In general only the window's end is certain (other devices may hold the slots). A sole
        device knows its own counted requests are what fills the window: the `needed`-th of
        them to age out (a window after it finished, plus a margin for the two clocks' rates)
        frees the slot — instead of idling a whole window after every "0 left" answer."""
        window_end = self.server_seen_at + self.server_window_s
        if self.sole_device and 0 < needed <= len(self.counted_at_seen):
            expiries = sorted(self._expiry(s) if s in self.slots else self.server_seen_at
                              for s in self.counted_at_seen)
            return min(window_end, expiries[needed - 1] + SLOT_MARGIN_S)
        return window_end

    def record_send(self, now: float) -> Ticket:
        self._prune(now)
        ticket = Ticket(self.next_seq, now)
        self.next_seq += 1
        self.slots[ticket.seq] = None
        return ticket

    def done(self, ticket: Ticket, now: float) -> None:
        """The request was answered, failed or given up: its slot starts ageing now."""
        if ticket.seq in self.slots and self.slots[ticket.seq] is None:
            self.slots[ticket.seq] = now

    def observe(self, now: float, remaining: int | None, window_s: float | None,
                ticket: Ticket | None = None) -> None:
        """Take in the rate headers of the answer to `ticket` (either may be missing). The
        answer to an earlier send than one already heard from is stale: its count is
        ignored. Without a ticket the answer is taken as the newest."""
        if window_s is not None and window_s > 0:
            # The platform states its window length: our own log uses the same window.
            self.server_window_s = self.window_s = float(window_s)
        seq = ticket.seq if ticket is not None else self.next_seq - 1
        if remaining is None or seq < self.seen_seq:
            return
        self.server_remaining = max(0, remaining)
        self.server_seen_at = now
        self.seen_seq = seq
        self.unseen_before = {s for s, done in self.slots.items() if done is None and s < seq}
        self._prune(now)
        self.counted_at_seen = [s for s in self.slots if s <= seq and s not in
                                self.unseen_before]

    def rate_limited(self, now: float, wait_s: float) -> None:
        """The server answered 429: send nothing for `wait_s`."""
        self.blocked_until = max(self.blocked_until, now + max(0.0, wait_s))
        self.server_remaining = 0
        self.server_seen_at = now
        self.seen_seq = max(self.seen_seq, self.next_seq - 1)
        self.unseen_before = set()
        self.counted_at_seen = []  # a 429 says wait the window out: no early slots

    def remaining(self, now: float) -> int:
        """Sends this device may still make now (for uploads), by both budgets."""
        self._prune(now)
        left = self.share - len(self.slots)
        if self._server_known(now):
            assert self.server_remaining is not None
            left = min(left, self.server_remaining - self._unseen())
        return max(0, left) if now >= self.blocked_until else 0


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    future: asyncio.Future[Ticket] = field(compare=False)


class Governor:
    """Async gatekeeper: `ticket = await governor.acquire(Priority.UPLOAD)` before each counted
    request, `governor.observe(remaining, window_s, ticket)` with its answer's headers, and
    `governor.done(ticket)` when it is over (answered, failed or timed out) — in a `finally`."""

    def __init__(self, requests_per_minute: int, budget_share: float = 1.0,
                 upload_reserve: int = 2, clock: Clock | None = None, window_s: float = 60.0):
        self.clock: Clock = clock or LoopClock()
        self.budget = RateBudget(requests_per_minute, budget_share, upload_reserve, window_s)
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()
        self._wake: asyncio.Event | None = None
        self._pump: asyncio.Task[None] | None = None
        self.granted: dict[str, int] = {p.name: 0 for p in Priority}

    @classmethod
    def from_config(cls, api: dict[str, Any], clock: Clock | None = None) -> Governor:
        return cls(api["requests_per_minute"], api["budget_share"], api["upload_reserve"], clock)

    async def acquire(self, priority: Priority) -> Ticket:
        """Wait until a send of `priority` is allowed; the send is counted when this returns
        and holds its slot until `done()`."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(int(priority), next(self._seq), loop.create_future())
        heapq.heappush(self._heap, waiter)
        self._kick()
        try:
            ticket = await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.done(waiter.future.result())  # granted, then cancelled: never sent
            self._kick()  # let the pump drop this waiter and look at the next one
            raise
        self.granted[Priority(priority).name] += 1
        return ticket

    def assume_sent(self, finished_ago_s: list[float]) -> None:
        """Requests someone else made on this budget (the previous venue leader): each holds
        a slot until one window after it finished `ago` seconds before now."""
        now = self.clock.now()
        for ago in finished_ago_s:
            self.budget.done(self.budget.record_send(now), now - max(0.0, ago))

    def observe(self, remaining: int | None, window_s: float | None,
                ticket: Ticket | None = None) -> None:
        self.budget.observe(self.clock.now(), remaining, window_s, ticket)
        self._kick()

    def done(self, ticket: Ticket) -> None:
        self.budget.done(ticket, self.clock.now())
        self._kick()

    def rate_limited(self, wait_s: float) -> None:
        self.budget.rate_limited(self.clock.now(), wait_s)
        self._kick()

    def _kick(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        assert self._wake is not None
        while self._heap:
            head = self._heap[0]
            if head.future.done():  # cancelled waiter
                heapq.heappop(self._heap)
                continue
            now = self.clock.now()
            at = self.budget.ready_at(Priority(head.priority), now)
            if at <= now:
                heapq.heappop(self._heap)
                ticket = self._grant(Priority(head.priority), now)
                try:
                    head.future.set_result(ticket)
                except asyncio.InvalidStateError:
                    # cancelled this very instant: Ctrl-C's handler (asyncio.run's SIGINT
                    # handler cancels the main task) runs between any two bytecodes, even
                    # after the check above. Never sent: its slot is free again.
                    self.budget.done(ticket, now)
                continue
            self._wake.clear()
            woken = asyncio.ensure_future(self._wake.wait())
            waits: set[asyncio.Future[Any]] = {woken}
            if at < NEVER:  # else only a request ending (or an answer) can free a slot
                waits.add(asyncio.ensure_future(self.clock.sleep(at - now)))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    if not task.done():
                        task.cancel()
                await asyncio.gather(*waits, return_exceptions=True)

    def _grant(self, priority: Priority, now: float) -> Ticket:
        """Count one send of `priority` at `now` (a seam for tests that audit every grant)."""
        return self.budget.record_send(now)

    def get_status(self) -> dict[str, Any]:
        """Remaining sends, next slot time (clock seconds), 429 block and queue per priority."""
        now = self.clock.now()
        queued = {p.name: 0 for p in Priority}
        for w in self._heap:
            if not w.future.done():
                queued[Priority(w.priority).name] += 1
        return {
            "share_per_window": self.budget.share,
            "upload_reserve": self.budget.reserve,
            "window_s": self.budget.window_s,
            "remaining": self.budget.remaining(now),
            "next_slot_in_s": _seconds(self.budget.ready_at(Priority.UPLOAD, now) - now),
            "in_flight": sum(1 for d in self.budget.slots.values() if d is None),
            "rate_limited_for_s": round(max(0.0, self.budget.blocked_until - now), 3),
            "queued": queued,
            "granted": dict(self.granted),
        }


def _seconds(value: float) -> float | None:
    """A wait for status: None while it depends on requests still in flight."""
    return None if value == NEVER else round(value, 3)
