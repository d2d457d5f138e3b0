"""The venue leader's sync passes: its own schedule (events/zones refresh, deltas, round one's
daily full pass at `sync.full_resync_at`) and the passes gates ask it for
(`gate-agent sync` on a gate, agent.venue.passrequest).

Separate from the leader's term set-up (agent.venue.leader_work) because the schedule outlives
a term (the daily full pass is due at the same time whoever leads when), and a requested pass
is the one way another device makes the leader spend platform requests: whether it is run at
all (only by a device that leads now) is decided here, in one place.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from agent.config import Config
from agent.core.codes import utc_iso
from agent.platform.client import PlatformClient
from agent.platform.sync import Syncer, next_nightly
from agent.platform.workers import cancel_until_done
from agent.venue import catalog, passrequest
from agent.venue.election import cancelled
from agent.venue.lease import Lease, NotLeader

log = logging.getLogger("gate_agent.venue.leader")

FULL_RETRY_S = 300.0  # a daily full pass that failed is tried again this much later
# A daily full pass missed (no leader ran, or the leader's device was off, when it came due):
# run this long after the leader's first round starts, so that round's delta goes first.
MISSED_FULL_AFTER_S = 1.0


def next_daily(hhmm: str, now: float) -> float:
    """Epoch of the next local `HH:MM` after `now` (`sync.full_resync_at`, as the daemon's
    scheduler reads it)."""
    return next_nightly(hhmm, datetime.fromtimestamp(now).astimezone()).timestamp()


class LeaderSync:
    """One device's leader passes (kept for the device's life, across terms)."""

    def __init__(self, config: Config, name: str, device: str, counters: dict[str, int]):
        """`counters`: the role's, where a failed pass counts in `leader_errors`."""
        self.sync_cfg = config.sync
        self.name = name
        self.device = device
        self.counters = counters
        self.next_full: float | None = None  # epoch of the leader's next daily full pass
        self.last_full: dict[str, Any] | None = None  # the last full pass this device led

    def full_resync_now(self) -> None:
        """Run the daily full pass at the leader's next sync round (when this device leads)."""
        self.next_full = 0.0

    async def run(self, syncer: Syncer) -> None:
        """The leader's sync passes, beside its uploads (a long delta must not hold the
        venue's scans back; the governor serves uploads first): events/zones refresh, deltas,
        and round one's daily full pass at `sync.full_resync_at` (local time), in place and
        published (agent.venue.catalog: every gate replaces the event's items with it). The
        full pass runs as a task of its own, so the deltas and refreshes go on beside it
        (`Syncer.full_in_place`). A pass missed while no leader ran (a venue switched off at
        night) runs after the first round's delta. Returns when the lease is no longer this
        device's (NotLeader)."""
        sync_cfg = self.sync_cfg
        next_delta = next_refresh = 0.0
        if self.next_full is None:  # kept across terms: the schedule is daily either way
            self.next_full = next_daily(sync_cfg["full_resync_at"], time.time())
            if await syncer.rebuild_missed() is not None:
                # the venue's last full pass on record (this cache's, from the catalog) is
                # older than the last nightly time: run it now, after this round's delta
                self.next_full = time.time() + MISSED_FULL_AFTER_S
        full: asyncio.Task[None] | None = None
        try:
            while True:
                now = time.monotonic()
                try:
                    if full is not None and full.done():
                        done, full = full, None
                        failed = None if done.cancelled() else done.exception()
                        if isinstance(failed, NotLeader):
                            raise failed
                        if failed is not None:  # tried again FULL_RETRY_S after it started
                            self.counters["leader_errors"] += 1
                            log.warning("venue daily full pass failed: %s: %s",
                                        type(failed).__name__, failed)
                    if full is None and self.next_full is not None and \
                            time.time() >= self.next_full:
                        self.next_full = time.time() + FULL_RETRY_S  # failed: again later
                        full = asyncio.create_task(self._full_pass(syncer),
                                                   name=f"venue {self.name} full pass")
                    if now >= next_refresh:
                        await syncer.refresh_events()
                        next_refresh = now + sync_cfg["refresh_interval_s"]
                    if now >= next_delta:
                        await syncer.delta_all()
                        next_delta = now + sync_cfg["delta_interval_s"]
                except NotLeader as exc:
                    log.warning("venue sync: %s", exc)
                    return
                except Exception as exc:  # noqa: BLE001 - the platform or the bus: next round
                    if cancelled():
                        raise asyncio.CancelledError from exc
                    self.counters["leader_errors"] += 1
                    log.warning("venue sync failed: %s: %s", type(exc).__name__, exc)
                    next_delta = now + min(sync_cfg["delta_interval_s"], 10.0)
                await asyncio.sleep(0.5)
        finally:
            if full is not None:
                await cancel_until_done(full)
                if not full.cancelled() and full.exception() is not None:  # retrieved
                    log.info("venue daily full pass ended with the term: %r", full.exception())

    async def _full_pass(self, syncer: Syncer) -> None:
        """The daily full pass (`run`'s task); the next one is planned when it succeeds."""
        listed = await syncer.full_in_place()
        self.last_full = {"at": utc_iso(datetime.now(UTC)), "items": listed}
        self.next_full = next_daily(self.sync_cfg["full_resync_at"], time.time())

    async def requested(self, request: passrequest.PassRequest, syncer: Syncer | None,
                        client: PlatformClient | None, lease: Lease | None,
                        js: Any) -> dict[str, Any]:
        """A gate's `gate-agent sync` (agent.venue.passrequest): the pass it asked for, run by
        this leader's syncer (its lock queues it behind a scheduled pass) and published to the
        catalog like every other pass; answered when done. Refused (NotLeader) unless this
        device has leader work set up (`syncer`, `client`) and holds a valid lease now."""
        if syncer is None or client is None or lease is None or not lease.valid():
            raise NotLeader(f"{self.device} does not lead venue {self.name} now")
        served = await syncer.event_ids()
        unknown = [e for e in request.events if e not in served]
        if unknown:
            raise ValueError(f"event(s) {', '.join(map(str, unknown))} not served by the venue "
                             f"(the leader serves {', '.join(map(str, served)) or 'none'})")
        log.warning("venue %s: %s asked for a %s pass%s", self.name, request.device or "a gate",
                    "full" if request.full else "delta",
                    f" of event(s) {list(request.events)}" if request.events else "")
        before = sum(client.governor.granted.values())
        passes: list[dict[str, int]] = []
        if request.full and not request.events:
            applied = await syncer.full_in_place()
            self.last_full = {"at": utc_iso(datetime.now(UTC)), "items": applied}
        else:
            await syncer.refresh_events()
            for event_id in request.events or await syncer.event_ids():
                passes.append({"event": event_id,
                               "items": await syncer.sync_tickets(event_id, full=request.full)})
            applied = sum(p["items"] for p in passes)
        info = await js.stream_info(catalog.stream_name(self.name))
        return {"leader": self.device, "term": lease.term,
                "mode": "full" if request.full else "delta", "applied": applied,
                "passes": passes, "requests": sum(client.governor.granted.values()) - before,
                "catalog_seq": int(info.state.last_seq)}
