"""Venue mode beyond claims, for one device: elect a leader; the leader talks to the platform
for the whole venue, every gate works from the bus.

`VenueRole.run()` (one asyncio loop, its own NATS connection) does, on every device:
- the election (agent.venue.election) when `venue.leader` allows this device to lead;
- member work (agent.venue.member): hand this gate's journaled scans to the bus and, cut off
  from the bus for longer than `venue.fallback_after_s`, upload them directly with its own
  budget share; and apply the leader's catalog to this gate's cache (agent.venue.catalog);
  no ticket-list request of its own;
- the watch on the venue's streams and buckets, deleted or made again under it, and what
  their loss costs until dealt with (agent.venue.lost_streams);
- the venue-wide figures every gate shows (agent.venue.figures);
and, while this device holds a valid lease, leader work (agent.venue.leader_work): the sync
passes of round one and the gates' requested passes (agent.venue.leader_sync) and the venue's
uploads, through one `PlatformClient` whose budget is fenced by the lease.
A device that may lead also keeps its platform reachability on the bus and, leading without a
working platform link while another device has one, hands the lease over
(agent.venue.stepdown).

This module is the coordinator: a bus session's set-up (in an order that matters: streams,
then what was lost, then the election) and end, and the loop that drives each part a round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from agent.config import Config
from agent.errors import VenueStreamLost
from agent.platform.upload import UploadStatus
from agent.store.cache import TicketCache
from agent.store.journal import Journal
from agent.store.venue import VENUE_FILE
from agent.venue import catalog, quarantine, stream_identity, uplink
from agent.venue.budget import LeaderFence, budget_bucket, leader_share
from agent.venue.bus import connect_options, device_name
from agent.venue.election import Election, cancelled, connect, lease_bucket
from agent.venue.figures import VenueFigures
from agent.venue.leader_work import LeaderWork
from agent.venue.lease import NotLeader
from agent.venue.lost_streams import LostStreams
from agent.venue.member import MemberWork
from agent.venue.setup import SetUp
from agent.venue.stepdown import StepDown
from agent.venue.term import Term

log = logging.getLogger("gate_agent.venue.leader")


class VenueRole:
    """One device's part in the venue (see the module docstring)."""

    def __init__(self, config: Config, token: str, *, config_path: str | None = None,
                 ack_wait_s: float = 10.0,
                 on_catalog_change: Callable[[], None] | None = None,
                 on_server_time: Callable[[float, float], None] | None = None):
        """`on_catalog_change()`: the cache was changed from the bus (the daemon reloads its
        lanes' caches); `ack_wait_s`: how long a fetched, unacknowledged scan waits before
        the bus hands it to the (next) leader again; `on_server_time`: every platform
        answer's Date, for the gate's clock (agent.runtime.clock)."""
        assert config.venue is not None
        self.config = config
        self.venue = config.venue
        self.name = self.venue["name"]
        self.device = device_name(self.venue)
        self.options = connect_options(self.venue, config_path)
        self.replicas = 3 if len(self.venue["servers"]) >= 3 else 1
        self.ttl_s = float(self.venue["lease_ttl_s"])
        self.cache_path = config.store_dir / "cache.db"
        self.journal_path = config.store_dir / "journal.db"
        self.election: Election | None = None
        self.follower: catalog.CatalogFollower | None = None
        self.counters = {"handed_over": 0, "fallback_rows": 0, "leader_errors": 0,
                         "seeded_requests": 0, "buckets_made_again": 0}
        self.on_catalog_change = on_catalog_change
        self.upload_status = UploadStatus()  # the venue's uploads while this device leads
        self.last_error: str | None = None
        # the session's set-up steps (streams, buckets), and while one fails why and since
        # when (status `leader` session_step, setup_error, setup_since: venue_degraded)
        self.setup = SetUp(log, "venue role session")
        self.drift: dict[str, str] = {}  # streams/buckets used with other settings
        self._catalog_watch: stream_identity.StreamWatch | None = None  # this session's
        self.losses = LostStreams(config, self.name, self.counters)
        self.member = MemberWork(config, token, self.device, self.counters, self.losses,
                                 self.journal_path, on_server_time)
        self.lead = LeaderWork(config, token, self.device, replicas=self.replicas,
                               ack_wait_s=ack_wait_s, counters=self.counters,
                               losses=self.losses, upload_status=self.upload_status,
                               on_server_time=on_server_time)
        self.figures = VenueFigures(self.name, int(
            config.api["requests_per_minute"]
            * leader_share(config.api, self.venue["platform_reserve"])))
        self._js: Any = None
        self._nc: Any = None
        self._wake = asyncio.Event()
        # a leader that lost only its platform link hands the lease over (kept across sessions:
        # a hold-down outlives a reconnect); None for a device that may not lead
        self.stepdown = StepDown(self.device, self.venue, config.api, self.ttl_s,
                                 lambda: self.lead.client.status if self.lead.client else None) \
            if self.venue["leader"] else None

    # -- life cycle ------------------------------------------------------------------------

    def wake(self) -> None:
        """A scan was journaled: hand it to the bus now (call on this role's loop)."""
        self._wake.set()

    async def _pause(self, stop: asyncio.Event, seconds: float) -> None:
        self._wake.clear()
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)

    async def _connect(self, stop: asyncio.Event, journal: Journal) -> bool:
        """Until the bus answers (the client reconnects by itself after that); meanwhile the
        fallback uploads this gate's scans once `fallback_after_s` has passed."""
        while not stop.is_set():
            try:
                self._nc, self._js = await connect(self.options, max(2.0, self.ttl_s / 4))
                return True
            except Exception as exc:  # noqa: BLE001 - no bus yet: the gate works alone
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                await self.member.round(self._nc, self._js, journal)
                await self._pause(stop, 1.0)
        return False

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: sessions on the bus; any failure of one ends it and a new one starts
        a second later (the gate keeps deciding meanwhile; the fallback covers uploads)."""
        # opened in a thread: the daemon's loop must not wait on a cold 100 MB file; the
        # daemon checked the cache's integrity at start already
        journal = await asyncio.to_thread(Journal, self.journal_path)
        cache = await asyncio.to_thread(
            TicketCache, self.cache_path,
            keep_personal_data=self.config.store["keep_personal_data"], check=False)
        try:
            while not stop.is_set():
                try:
                    await self._session(stop, journal, cache)
                except Exception as exc:  # noqa: BLE001 - logged; a new session follows
                    if cancelled():
                        raise asyncio.CancelledError from exc
                    if self.setup.is_running:
                        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                        log.warning("venue session ended (%s); starting again",
                                    self.last_error)
                    else:  # in status until a session runs (logged once per error)
                        self.last_error = self.setup.failed(exc)
                    await self._pause(stop, 1.0)
        finally:
            await self.lead.close()
            journal.close()
            cache.close()

    async def _session(self, stop: asyncio.Event, journal: Journal, cache: TicketCache) -> None:
        tasks: list[asyncio.Task[None]] = []
        self.election = None
        self.losses.new_session()
        ended = asyncio.Event()  # this session's end, for its step-down task
        setup, waiting = self.setup, self.setup.failed  # each failed create try, said at once
        try:
            setup.begin("connecting")
            if not await self._connect(stop, journal):
                return
            setup.at("making sure the catalog stream exists")
            await catalog.ensure_stream(self._js, self.name, self.replicas, self.drift, waiting)
            setup.at("making sure the upload stream exists")
            await uplink.ensure_upload_stream(self._js, self.name, self.replicas, self.drift,
                                              waiting)
            setup.at("checking the upload and catalog streams' identity")
            await self.losses.adopt_upload_stream(self._js, journal)
            created = await stream_identity.adopt_catalog(
                self._js, catalog.stream_name(self.name), cache,
                self.config.store_dir / VENUE_FILE)
            self._catalog_watch = stream_identity.StreamWatch(catalog.stream_name(self.name),
                                                              created)
            self.follower = catalog.CatalogFollower(self._js, self.name, cache,
                                                    own_term=self._own_term,
                                                    on_change=self.on_catalog_change)
            tasks.append(asyncio.create_task(self.follower.follow(stop)))
            setup.at("making sure the venue's buckets exist")
            self.figures.budget_kv = await budget_bucket(self._js, self.name, self.replicas,
                                                         self.drift, waiting)
            self.figures.quarantine_kv = await quarantine.quarantine_bucket(
                self._js, self.name, self.replicas, self.drift, waiting)
            kv = await lease_bucket(self._js, self.name, self.ttl_s, self.replicas, self.drift,
                                    waiting)
            setup.at("checking the buckets' identity")
            await self.losses.adopt_buckets(self._js, journal)
            self.election = Election(kv, self.device, self.ttl_s, self._changed,
                                     candidate=self.venue["leader"], handover=self.stepdown)
            tasks.append(asyncio.create_task(self.election.run()))
            if self.stepdown is not None:
                tasks.append(asyncio.create_task(self.stepdown.run(self._js, kv, ended),
                                                 name="venue reach"))
            self.lead.new_session(LeaderFence(
                self.figures.budget_kv, self.election.lease,
                request_timeout_s=self.config.api["timeout_s"]) if self.venue["leader"] else None)
            setup.running()
            await self._loop(stop, journal, tasks)
        finally:
            if self.election is not None:
                self.election.stop()  # it releases the lease on its way out
            ended.set()  # the step-down task deletes this gate's reach record on its way out
            if self.stepdown is not None:
                self.stepdown.set_leading(False)
            if self.lead.client is not None and self.lead.led_until is None:
                self.lead.led_until = time.time()
            if tasks:
                tasks[0].cancel()  # the catalog follower
                await asyncio.wait(tasks, timeout=5.0)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            await self.lead.stop()
            if self._nc is not None:
                nc, self._nc = self._nc, None
                try:
                    await asyncio.wait_for(nc.close(), 2.0)
                except Exception:  # noqa: BLE001 - closing a dead link
                    pass

    def _own_term(self) -> Term | None:
        lease = self.election.lease if self.election else None
        return lease.stamp() if lease is not None and lease.valid() else None

    async def _changed(self, leading: bool) -> None:
        if self.stepdown is not None:
            self.stepdown.set_leading(leading)
        self.lead.led_until = None if leading else time.time()
        if not leading:
            await self.lead.stop()

    async def _loop(self, stop: asyncio.Event, journal: Journal,
                    tasks: list[asyncio.Task[None]]) -> None:
        while not stop.is_set():
            now = time.monotonic()
            for task in tasks:
                if task.done():  # the catalog follower or the election died: new session
                    raise RuntimeError(f"venue task ended: {task.exception() or 'stopped'}")
            try:
                # before the hand-over, which fails without it
                await self.losses.check(self._nc, self._js)
                # first: a bus gone must not hold back
                await self.member.round(self._nc, self._js, journal)
                if self._catalog_watch is not None and self.follower is not None \
                        and self._nc is not None and self._nc.is_connected:  # the fallback
                    await self._catalog_watch.check(self._js, self.follower.position)
                if self.election is not None and self.election.lease.valid():
                    await self.lead.round(self._nc, self._js, self.election, now)
                if self.figures.due(now):
                    await self.losses.settle()
                    await self.figures.refresh(self._js)
            except NotLeader as exc:
                log.warning("venue: %s", exc)
                await self.lead.stop()
            except VenueStreamLost:
                raise  # a stream deleted or made again: a new session sets it up
            except Exception as exc:  # noqa: BLE001 - the platform or the bus: next round
                if cancelled():
                    raise asyncio.CancelledError from exc
                self.counters["leader_errors"] += 1
                if self.lead.setup.error is None:  # a term's failing set-up: said once by it
                    log.warning("venue round failed: %s: %s", type(exc).__name__, exc)
            await self._pause(stop, 0.2)

    # -- for the daemon ----------------------------------------------------------------------

    async def upload_now(self, drain: bool) -> dict[str, Any]:
        """`gate-agent upload` beside the daemon (agent.venue.member `upload_now`)."""
        return await self.member.upload_now(self._nc, self._js, drain, self.last_error)

    def platform_status(self) -> dict[str, Any] | None:
        """The leader's platform link (agent.venue.leader_work `platform_status`)."""
        return self.lead.platform_status()

    def get_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"device": self.device, "bus_error": self.last_error,
                               **self.setup.get_status(), **self.counters}
        if self.election is not None:
            out.update(self.election.get_status())
        if self.stepdown is not None:
            out.update(self.stepdown.get_status())
        out.update(self.figures.get_status())
        out.update(self.losses.get_status())
        out["term_setup"] = self.lead.setup.get_status()  # its set-up while it fails
        out["last_full_pass"] = self.lead.passes.last_full
        uploader = self.lead.uploader
        uploader_drift = uploader.drift if uploader is not None else {}
        out["settings_drift"] = sorted({**self.drift, **uploader_drift}.values())
        if self.follower is not None:
            out.update(self.follower.get_status())
        if uploader is not None:
            out["upload"] = uploader.get_status()
        return out
