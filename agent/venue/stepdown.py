"""A leader that lost only its platform link gives the lease to a gate that has one.

The lease depends only on the bus (agent.venue.lease), so a leader whose own route, firewall,
DNS or token fails keeps renewing it while the whole venue stops uploading and syncing. This
module decides, for one device that may lead, using the records of agent.venue.reach:

- it keeps this device's record up to date: while a member, a connection test to the platform
  every `venue.platform_probe_s` (agent.platform.probe: no request, so the leader's budget is
  not spent); while leading, its real requests (the client's last success and last error);
- `release_why()`: the leader has had no successful request for `venue.leader_stepdown_after_s`
  — the last one failed on the link or the token (Transport, 401, 403: what another device
  may not share; a 429 or a 5xx is the platform's own and moving would not help) — and
  another live gate that may lead reports the platform reachable. With no such gate (the
  venue's internet is down) it keeps leading: nothing is gained by moving. The gate found by
  the last look (up to `min(lease TTL, probe interval)` old) is read again just before the
  release: one that lost the platform, stepped down or went since is not handed a lease it
  could not use (a fresh look names another, or the leader keeps the lease);
- after a step-down this device stays out of elections for HOLD_FACTOR times that time
  (`held`), so leadership cannot flap between two half-working gates — unless its own probe
  reaches the platform and no other live gate that may lead does (its successor died): a
  venue is not left without a leader that could work;
- `may_acquire()`: a gate whose own probe fails does not take a free lease while another live
  gate reports the platform reachable, so the lease does not land on a gate just as blind.
  With every gate blind, election works as without this module.

`Election` (agent.venue.election) calls the two hooks in its rounds; `run()` is a task of its
own because a probe may take `api.timeout_s` and must not delay a renewal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agent.core.codes import epoch_iso, utc_iso
from agent.platform.client import LinkStatus
from agent.platform.probe import probe
from agent.venue import reach
from agent.venue.election import cancelled
from agent.venue.lease import bucket_name
from agent.venue.reach import Reach

log = logging.getLogger("gate_agent.venue.leader")

HOLD_FACTOR = 5.0  # a leader that stepped down stays out of elections this many step-down times
FRESH_PROBES = 3.0  # a probe older than this many intervals says nothing (its task is stuck)
LINK_KINDS = ("transport", "unauthenticated", "forbidden")  # LinkStatus.last_error_kind
PROBE_TIMEOUT_S = 10.0


class StepDown:
    """One device's part (see the module docstring). Kept across bus sessions: a hold-down
    outlives a reconnect."""

    def __init__(self, device: str, venue: dict[str, Any], api: dict[str, Any], ttl_s: float,
                 link: Callable[[], LinkStatus | None], *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        """`link()`: the leader's client's link status (None before its first term)."""
        self.device = device
        self.bucket = bucket_name(str(venue["name"]))
        self.after_s = float(venue["leader_stepdown_after_s"])
        self.hold_s = HOLD_FACTOR * self.after_s
        self.probe_s = float(venue["platform_probe_s"])
        self.base_url = str(api["base_url"])
        self.ca_file = api["ca_file"] or None
        self.probe_timeout_s = min(float(api["timeout_s"]), PROBE_TIMEOUT_S)
        self.ttl_s = ttl_s
        self.link = link
        self.clock, self.wall = clock, wall
        self.leading = False
        self.leading_since = 0.0  # wall clock: a term's silence is counted from its start
        self.probed: tuple[float, str | None] | None = None  # (clock, error) of the last probe
        self.held_until = 0.0  # clock
        self.held_from = 0.0  # clock of the step-down
        self.last_step: dict[str, Any] | None = None
        self.successor: str | None = None  # a gate that can take over, looked up when needed
        self.seen: set[str] = set()  # every gate found able to take over (read by name)
        self._looked_at = float("-inf")  # the last look for a successor that was answered
        self._tried_at = float("-inf")
        self._put_at = float("-inf")
        self._put: tuple[Any, ...] | None = None
        self._bus: tuple[Any, Any] | None = None  # (js, lease bucket) of the last tick
        self._deferred = False
        self._alone = False

    # -- what this device knows ------------------------------------------------------------

    def set_leading(self, leading: bool) -> None:
        """The election's view changed. A new term counts its silence from now. A leader
        that becomes a member keeps what its own requests said as its first probe (its last
        probe is from before it led; unknown, a blind gate would not leave it a free lease)."""
        if leading and not self.leading:
            self.leading_since = self.wall()
        if not leading and self.leading:
            status, failure = self.link(), self.link_failure()
            known = failure is not None or bool(status and status.last_success)
            self.probed = (self.clock(), failure[1] if failure else None) if known else None
        self.leading = leading

    def link_failure(self) -> tuple[float, str] | None:
        """(seconds without a successful request, last error) while the leader's last request
        failed on the link or the token; None otherwise."""
        status = self.link()
        if status is None or not status.last_error_at \
                or status.last_error_kind not in LINK_KINDS:
            return None
        if status.last_success and status.last_success >= status.last_error_at:
            return None
        since = max(status.last_success or 0.0, self.leading_since)
        return max(0.0, self.wall() - since), str(status.last_error)

    def probe_ok(self) -> bool | None:
        """This member's last probe: True/False, None when there is none recent enough."""
        if self.probed is None or self.clock() - self.probed[0] > FRESH_PROBES * self.probe_s:
            return None
        return self.probed[1] is None

    def held(self) -> bool:
        return self.clock() < self.held_until

    def record(self) -> Reach:
        """This device's record for agent.venue.reach: a leader's requests once they said
        something, else (a member; a new leader before its first answer) its last probe."""
        status, failure = self.link(), self.link_failure()
        if self.leading and status is not None and (failure or status.last_success):
            times = [t for t in (status.last_success, status.last_error_at) if t]
            return Reach(self.device, failure is None, "requests",
                         round(self.wall() - max(times), 1),
                         failure[1][:300] if failure else None, self.held())
        age = None if self.probed is None else round(self.clock() - self.probed[0], 1)
        return Reach(self.device, self.probe_ok(), "probe", age,
                     self.probed[1] if self.probed else None, self.held())

    # -- the election's hooks --------------------------------------------------------------

    async def release_why(self) -> str | None:
        """Why the leader should give the lease up now, or None (see the module docstring)."""
        failure = self.link_failure() if self.leading else None
        if failure is None or failure[0] <= self.after_s or self.successor is None \
                or not await self._successor_now():
            return None
        return (f"no successful platform request for {failure[0]:.0f} s (last error: "
                f"{failure[1]}); {self.successor} reaches the platform")

    async def _successor_now(self) -> bool:
        """The successor of the last look, read again now; if it is no longer one, a fresh
        look for another. False (keep the lease) when none, or the bus does not answer."""
        if self._bus is None or self.successor is None:
            return False
        js, kv = self._bus
        try:
            if await reach.is_successor(kv, self.successor):
                return True
            found = await reach.successors(js, self.bucket, kv, self.device, self.seen)
        except Exception as exc:  # noqa: BLE001 - the bus is away: no hand-over this round
            log.info("venue: successor not confirmed (%s: %s)", type(exc).__name__, exc)
            return False
        log.warning("venue: %s no longer reaches the platform (or is held, or gone); %s",
                    self.successor, f"{found[0]} does" if found else "no other gate does")
        self.seen.update(found)
        self.successor = found[0] if found else None
        self._tried_at = self._looked_at = self.clock()
        return self.successor is not None

    def stepped_down(self, why: str) -> None:
        """The lease was released for `why`: out of elections for the hold-down."""
        self.held_from = self.clock()
        self.held_until = self.held_from + self.hold_s
        self.last_step = {"at": utc_iso(datetime.now(UTC)), "why": why,
                          "successor": self.successor,
                          "held_until": epoch_iso(self.wall() + self.hold_s)}
        self.successor = None
        self._looked_at = self._tried_at = float("-inf")
        log.warning("venue leader %s steps down and stays out of elections for %.0f s: %s",
                    self.device, self.hold_s, why)

    def may_acquire(self) -> bool:
        """Whether this candidate may take a free lease now."""
        if self.held():  # only when it can work and nobody else can, looked at since then
            alone = self.probe_ok() is True and self.successor is None \
                and self.held_from < self._looked_at \
                and self.clock() - self._looked_at <= 2 * self._look_every()
            if alone and not self._alone:
                log.warning("venue: %s may lead again within its hold-down: it reaches the "
                            "platform and no other gate that may lead does", self.device)
            self._alone = alone
            return alone
        defer = self.probe_ok() is False and self.successor is not None
        if defer and not self._deferred:
            log.warning("venue: %s cannot reach the platform (%s): leaves a free lease to %s",
                        self.device, self.probed[1] if self.probed else "?", self.successor)
        self._deferred = defer
        return not defer

    # -- the task --------------------------------------------------------------------------

    def _wants_successor(self) -> bool:
        if self.leading:
            failure = self.link_failure()
            return failure is not None and failure[0] > self.after_s
        return self.probe_ok() is False or self.held()

    def _look_every(self) -> float:
        return min(self.ttl_s, self.probe_s)

    async def tick(self, js: Any, kv: Any) -> None:
        """Probe when due, put this device's record when changed or a quarter TTL old, and
        look for a successor while this device could use one."""
        self._bus = (js, kv)
        if not self.leading and (self.probed is None
                                 or self.clock() - self.probed[0] >= self.probe_s):
            error = await probe(self.base_url, self.probe_timeout_s, self.ca_file)
            if error != (self.probed[1] if self.probed else None):
                log.log(logging.WARNING if error else logging.INFO,
                        "venue: platform %s from %s%s", "not reachable" if error else "reachable",
                        self.device, f" ({error})" if error else "")
            self.probed = (self.clock(), error)
        record = self.record()
        now = self.clock()
        shown = (record.reachable, record.source, record.error, record.held)
        if shown != self._put or now - self._put_at >= self.ttl_s / 4:
            await reach.put(kv, record)
            self._put, self._put_at = shown, now
        if not self._wants_successor():
            self.successor = None
        elif now - self._tried_at >= self._look_every():
            self._tried_at = now  # a failed look keeps what the last one found
            found = await reach.successors(js, self.bucket, kv, self.device, self.seen)
            self.seen.update(found)
            self.successor = found[0] if found else None
            self._looked_at = now

    async def run(self, js: Any, kv: Any, stop: asyncio.Event) -> None:
        """Until `stop` (the bus session's): a tick every second (a quarter TTL if shorter);
        the record goes at a clean stop."""
        pause = min(1.0, self.ttl_s / 4)
        while not stop.is_set():
            try:
                await self.tick(js, kv)
            except Exception as exc:  # noqa: BLE001 - the bus is away: the record expires
                if cancelled():
                    raise asyncio.CancelledError from exc
                log.debug("venue reach record not put: %s: %s", type(exc).__name__, exc)
            try:
                await asyncio.wait_for(stop.wait(), pause)
            except TimeoutError:
                pass
        await reach.remove(kv, self.device)

    def get_status(self) -> dict[str, Any]:
        record = self.record()
        return {"platform_reachable": record.reachable, "platform_checked_by": record.source,
                "platform_checked_age_s": record.age_s, "platform_error": record.error,
                "reachable_successor": self.successor,
                "held_until": epoch_iso(self.wall() + self.held_until - self.clock())
                if self.held() else None,
                "stepped_down": self.last_step}
