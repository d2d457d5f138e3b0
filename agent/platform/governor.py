"""The rate governor: every request to the platform waits here for a slot first.

The platform limits requests per company (shared by every device of the company) over a rolling
window and answers 429 beyond it, blocking the company until the window replenishes. A gate
that hits 429 cannot upload scans, so the governor keeps this device well inside the limit:

- a rolling log of this device's own sends: never more than its share
  (`requests_per_minute * budget_share`, at least 1) in any window;
- what the server last said (`X-Remaining-Requests`, `X-Available-In-Seconds`): our sends since
  that answer are subtracted, and when nothing is known to be left we wait for the window;
- `upload_reserve` slots (of both budgets) that only uploads may use;
- after a 429, nothing is sent until the announced wait has passed;
- strict priorities UPLOAD > DELTA_SYNC > REFRESH > OTHER: the highest waiting priority is
  served first, so a backlog of refreshes never delays an upload.

`RateBudget` holds the arithmetic (pure, time passed in); `Governor` queues asyncio waiters on
top of it. Time comes from an injectable clock (`now()`, `async sleep()`), so tests can run the
governor in simulated time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import deque
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


class RateBudget:
    """How many sends are allowed when: pure bookkeeping, every method takes `now`."""

    def __init__(self, requests_per_minute: int, budget_share: float = 1.0,
                 upload_reserve: int = 2, window_s: float = 60.0):
        self.window_s = float(window_s)
        self.share = max(1, math.floor(requests_per_minute * budget_share + 1e-9))
        # Non-uploads must always be able to send at least one request per window.
        self.reserve = max(0, min(upload_reserve, self.share - 1))
        self.sends: deque[float] = deque()
        self.blocked_until = 0.0
        self.server_remaining: int | None = None
        self.server_seen_at = 0.0
        self.server_window_s = self.window_s
        self.sends_since_seen = 0
        # Our sends inside the server's window when it last told us what is left: the server
        # counts them, and each frees a slot there when it ages out of the (rolling) window.
        # Only trusted when this device owns the whole budget (no fleet to take those slots).
        self.sole_device = budget_share >= 1.0
        self.counted_at_seen: list[float] = []
        self.latencies: deque[tuple[float, float]] = deque()

    def _prune(self, now: float) -> None:
        while self.sends and self.sends[0] + self.window_s <= now:
            self.sends.popleft()

    def _server_known(self, now: float) -> bool:
        return (self.server_remaining is not None
                and now < self.server_seen_at + self.server_window_s)

    def ready_at(self, priority: Priority, now: float) -> float:
        """Earliest time (>= now) at which one send of `priority` is allowed."""
        self._prune(now)
        reserve = 0 if priority == Priority.UPLOAD else self.reserve
        allowed = self.share - reserve
        at = now
        excess = len(self.sends) + 1 - allowed
        if excess > 0:
            at = max(at, self.sends[excess - 1] + self.window_s)
        if self._server_known(now):
            assert self.server_remaining is not None
            left = self.server_remaining - self.sends_since_seen
            if left - reserve < 1:
                at = max(at, self._server_slot_at(reserve + 1 - left))
        return max(at, self.blocked_until)

    def _server_slot_at(self, needed: int) -> float:
        """When the server's rolling window will have `needed` more free slots.

        In general only the window's end is certain (other devices may hold the slots). A sole
        device knows its own counted sends are what fills the window: the `needed`-th oldest
        of them ageing out frees the slot — instead of idling a whole window after every
        "0 left" answer, which stalled uploads for up to a minute under a steady load."""
        window_end = self.server_seen_at + self.server_window_s
        if self.sole_device and 0 < needed <= len(self.counted_at_seen):
            # The server stamped that request at most one round trip after we sent it: wait
            # out the slowest recent round trip (and a margin for the two clocks' rates).
            while self.latencies and self.latencies[0][0] + self.server_window_s < self.server_seen_at:
                self.latencies.popleft()
            slowest = max((lat for _, lat in self.latencies), default=self.server_window_s)
            early = self.counted_at_seen[needed - 1] + self.server_window_s + slowest + SLOT_MARGIN_S
            return min(window_end, early)
        return window_end

    def record_send(self, now: float) -> None:
        self._prune(now)
        self.sends.append(now)
        self.sends_since_seen += 1

    def observe(self, now: float, remaining: int | None, window_s: float | None,
                latency_s: float | None = None) -> None:
        """Take in the rate headers of an answer (either may be missing) and how long the
        request took (the server counted it somewhere in that span)."""
        if latency_s is not None:
            self.latencies.append((now, max(0.0, latency_s)))
        if window_s is not None and window_s > 0:
            # The platform states its window length: our own log uses the same window.
            self.server_window_s = self.window_s = float(window_s)
        if remaining is not None:
            self.server_remaining = max(0, remaining)
            self.server_seen_at = now
            self.sends_since_seen = 0
            self._prune(now)
            self.counted_at_seen = list(self.sends)

    def rate_limited(self, now: float, wait_s: float) -> None:
        """The server answered 429: send nothing for `wait_s`."""
        self.blocked_until = max(self.blocked_until, now + max(0.0, wait_s))
        self.server_remaining = 0
        self.server_seen_at = now
        self.sends_since_seen = 0
        self.counted_at_seen = []  # a 429 says wait the window out: no early slots

    def remaining(self, now: float) -> int:
        """Sends this device may still make now (for uploads), by both budgets."""
        self._prune(now)
        left = self.share - len(self.sends)
        if self._server_known(now):
            assert self.server_remaining is not None
            left = min(left, self.server_remaining - self.sends_since_seen)
        return max(0, left) if now >= self.blocked_until else 0


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    future: asyncio.Future[None] = field(compare=False)


class Governor:
    """Async gatekeeper: `await governor.acquire(Priority.UPLOAD)` before each counted request."""

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

    async def acquire(self, priority: Priority) -> None:
        """Wait until a send of `priority` is allowed; the send is counted when this returns."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(int(priority), next(self._seq), loop.create_future())
        heapq.heappush(self._heap, waiter)
        self._kick()
        try:
            await waiter.future
        except asyncio.CancelledError:
            self._kick()  # let the pump drop this waiter and look at the next one
            raise
        self.granted[Priority(priority).name] += 1

    def observe(self, remaining: int | None, window_s: float | None,
                latency_s: float | None = None) -> None:
        self.budget.observe(self.clock.now(), remaining, window_s, latency_s)
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
                self._grant(Priority(head.priority), now)
                head.future.set_result(None)
                continue
            self._wake.clear()
            sleeper = asyncio.ensure_future(self.clock.sleep(at - now))
            woken = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sleeper, woken):
                    if not task.done():
                        task.cancel()
                await asyncio.gather(sleeper, woken, return_exceptions=True)

    def _grant(self, priority: Priority, now: float) -> None:
        """Count one send of `priority` at `now` (a seam for tests that audit every grant)."""
        self.budget.record_send(now)

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
            "next_slot_in_s": round(self.budget.ready_at(Priority.UPLOAD, now) - now, 3),
            "rate_limited_for_s": round(max(0.0, self.budget.blocked_until - now), 3),
            "queued": queued,
            "granted": dict(self.granted),
        }
