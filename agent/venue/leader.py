"""Venue mode beyond claims, for one device: elect a leader; the leader talks to the platform
for the whole venue, every gate works from the bus.

`VenueRole.run()` (one asyncio loop, its own NATS connection) does, on every device:
- the election (agent.venue.election) when `venue.leader` allows this device to lead;
- member work: hand this gate's journaled scans to the bus (agent.venue.uplink.hand_over)
  and apply the leader's catalog to this gate's cache (agent.venue.catalog); no ticket-list
  request of its own;
- fallback: cut off from the bus for longer than `venue.fallback_after_s`, upload this
  gate's own scans directly with its own budget share (round one's Uploader); rows the bus
  took but whose acknowledgement was lost may then reach the platform twice (harmless: the
  scan uuid; counted in `fallback_rows`, see the sandbox's `duplicate uuid`).
and, while this device holds a valid lease, leader work:
- the sync passes of round one (events/zones refresh, deltas, the daily full pass at
  `sync.full_resync_at`) with a `CatalogPublisher`
  observing them, and the venue's uploads (`VenueUploader`), through one `PlatformClient`
  whose governor owns `requests_per_minute - platform_reserve`, seeded with the previous
  leader's recent requests, and whose `before_send` re-checks the lease on the bus.
A device that may lead also keeps its platform reachability on the bus and, leading without a
working platform link while another device has one, hands the lease over
(agent.venue.stepdown).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.config import Config
from agent.core.codes import epoch_iso, utc_iso
from agent.errors import GateAgentError, VenueStreamLost
from agent.platform.client import PlatformClient
from agent.platform.governor import Governor
from agent.platform.sync import Syncer
from agent.platform.upload import Uploader, UploadStatus
from agent.store.cache import TicketCache
from agent.store.journal import Journal
from agent.store.venue import VENUE_FILE
from agent.venue import catalog, passrequest, quarantine, stream_identity, uplink
from agent.venue.budget import (
    WINDOW_S,
    LeaderFence,
    budget_bucket,
    leader_governor,
    leader_share,
    lost_log_counts,
    unrecorded_loss_age,
    venue_requests,
)
from agent.venue.budget import bucket_name as budget_bucket_name
from agent.venue.bus import connect_options, device_name
from agent.venue.election import Election, cancelled, connect, lease_bucket
from agent.venue.lease import NotLeader, bucket_name
from agent.venue.stepdown import StepDown
from agent.venue.streams import kv_stream
from agent.venue.term import Term

log = logging.getLogger("gate_agent.venue.leader")

FULL_RETRY_S = 300.0  # a daily full pass that failed is tried again this much later
HAND_OVER_LIMIT = 500  # journal rows a member round hands to the bus at most


def next_daily(hhmm: str, now: float) -> float:
    """Epoch of the next local `HH:MM` after `now` (`sync.full_resync_at`, as the daemon's
    scheduler reads it)."""
    hour, minute = (int(x) for x in hhmm.split(":"))
    local = datetime.fromtimestamp(now).astimezone()
    at = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if at <= local:
        at += timedelta(days=1)
    return at.timestamp()


class VenueRole:
    """One device's part in the venue (see the module docstring)."""

    def __init__(self, config: Config, token: str, *, config_path: str | None = None,
                 ack_wait_s: float = 10.0,
                 on_catalog_change: Callable[[], None] | None = None,
                 on_server_time: Callable[[float, float], None] | None = None):
        """`on_catalog_change()`: the cache was changed from the bus (the daemon reloads its
        lanes' caches); `ack_wait_s`: how long a fetched, unacknowledged scan waits before
        the bus hands it to the (next) leader again."""
        assert config.venue is not None
        self.config = config
        self.venue = config.venue
        self.name = self.venue["name"]
        self.device = device_name(self.venue)
        self.token = token
        self.options = connect_options(self.venue, config_path)
        self.replicas = 3 if len(self.venue["servers"]) >= 3 else 1
        self.ttl_s = float(self.venue["lease_ttl_s"])
        self.ack_wait_s = ack_wait_s
        self.cache_path = config.store_dir / "cache.db"
        self.journal_path = config.store_dir / "journal.db"
        self.election: Election | None = None
        self.follower: catalog.CatalogFollower | None = None
        self.uploader: uplink.VenueUploader | None = None
        self.fence: LeaderFence | None = None
        self.client: PlatformClient | None = None
        self.syncer: Syncer | None = None
        self.connected_at = time.monotonic()
        self.counters = {"handed_over": 0, "fallback_rows": 0, "leader_errors": 0,
                         "seeded_requests": 0, "buckets_made_again": 0}
        self.on_catalog_change = on_catalog_change
        # every platform answer's Date, for the gate's clock (agent.runtime.clock)
        self.on_server_time = on_server_time
        self.upload_status = UploadStatus()  # the venue's uploads while this device leads
        # when this device last stopped leading (wall clock); None while it leads, or before
        # it first led: its client's link status is measured only meanwhile
        self.led_until: float | None = None
        self.last_error: str | None = None
        self.drift: dict[str, str] = {}  # streams/buckets used with other settings
        self._catalog_watch: stream_identity.StreamWatch | None = None  # this session's
        self._upload_watch: stream_identity.StreamWatch | None = None  # this session's
        # this session's watches of the KV buckets (lease, budget, quarantine, and the
        # batches while leading): stream name -> watch (agent.venue.stream_identity)
        self._bucket_watches: dict[str, stream_identity.StreamWatch] = {}
        # buckets found made again whose loss is still being dealt with: stream -> since,
        # what (the budget until its lost requests no longer count, the quarantine until this
        # gate's scans are handed over again); status `buckets_lost`, reason venue_bucket_lost
        self.buckets_lost: dict[str, dict[str, str]] = {}
        self._budget_lost_at: float | None = None  # monotonic: the budget bucket found lost
        self._budget_created = ""  # the budget bucket's creation time this session
        self._hand_over_tag = ""  # the quarantine bucket's (uplink.hand_over_headers)
        # the upload stream lost under this gate (agent.venue.uplink): since when, what
        # happened; None again once this gate's scans are handed over again
        self.upload_stream_lost: dict[str, str] | None = None
        self._js: Any = None
        self._nc: Any = None
        self._wake = asyncio.Event()
        self._next_fallback = 0.0
        self._next_status = 0.0
        self._sync_task: asyncio.Task[None] | None = None
        self._lead_term = 0  # the lease term the leader work (uploader, sync task) was set up for
        self._pass_sub: Any = None  # the leader's subscription to gates' sync requests
        self._budget_kv: Any = None
        self.budget_in_use: int | None = None  # the venue's requests in the last minute
        self.upload_lag: int | None = None  # scans on the bus not yet at the platform
        self.upload_lag_s: float | None = None  # how long the oldest of them has waited
        self.budget_per_min = int(config.api["requests_per_minute"]
                                  * leader_share(config.api, self.venue["platform_reserve"]))
        self._quarantine_kv: Any = None
        self.quarantined: int | None = None  # venue scans the platform refused, held on the bus
        self.next_full: float | None = None  # epoch of the leader's next daily full pass
        self.last_full: dict[str, Any] | None = None  # the last full pass this device led
        # a leader that lost only its platform link hands the lease over (kept across sessions:
        # a hold-down outlives a reconnect); None for a device that may not lead
        self.stepdown = StepDown(self.device, self.venue, config.api, self.ttl_s,
                                 lambda: self.client.status if self.client else None) \
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
                await self._member_round(journal)
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
                    self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    log.warning("venue session ended (%s); starting again", self.last_error)
                    await self._pause(stop, 1.0)
        finally:
            await self._close_client()
            journal.close()
            cache.close()

    async def _session(self, stop: asyncio.Event, journal: Journal, cache: TicketCache) -> None:
        tasks: list[asyncio.Task[None]] = []
        self.election = None
        self._upload_watch = None  # set once this session adopted the upload stream
        self._bucket_watches = {}
        ended = asyncio.Event()  # this session's end, for its step-down task
        try:
            if not await self._connect(stop, journal):
                return
            await catalog.ensure_stream(self._js, self.name, self.replicas, self.drift)
            await uplink.ensure_upload_stream(self._js, self.name, self.replicas, self.drift)
            uploads, again = await uplink.adopt_upload_stream(
                self._js, self.name, journal, self.config.store_dir / VENUE_FILE,
                [catalog.stream_name(self.name), kv_stream(bucket_name(self.name))])
            if again:
                self._upload_lost(f"made again: {again} scan(s) of this gate handed over again")
            self._upload_watch = stream_identity.StreamWatch(uplink.stream_name(self.name),
                                                             uploads)
            created = await stream_identity.adopt_catalog(
                self._js, catalog.stream_name(self.name), cache,
                self.config.store_dir / VENUE_FILE)
            self._catalog_watch = stream_identity.StreamWatch(catalog.stream_name(self.name),
                                                              created)
            self.follower = catalog.CatalogFollower(self._js, self.name, cache,
                                                    own_term=self._own_term,
                                                    on_change=self.on_catalog_change)
            tasks.append(asyncio.create_task(self.follower.follow(stop)))
            self._budget_kv = await budget_bucket(self._js, self.name, self.replicas,
                                                  self.drift)
            self._quarantine_kv = await quarantine.quarantine_bucket(self._js, self.name,
                                                                     self.replicas, self.drift)
            kv = await lease_bucket(self._js, self.name, self.ttl_s, self.replicas, self.drift)
            await self._adopt_buckets(journal)
            self.election = Election(kv, self.device, self.ttl_s, self._changed,
                                     candidate=self.venue["leader"], handover=self.stepdown)
            tasks.append(asyncio.create_task(self.election.run()))
            if self.stepdown is not None:
                tasks.append(asyncio.create_task(self.stepdown.run(self._js, kv, ended),
                                                 name="venue reach"))
            if self.venue["leader"]:
                self.fence = LeaderFence(self._budget_kv, self.election.lease,
                                         request_timeout_s=self.config.api["timeout_s"])
            await self._loop(stop, journal, tasks)
        finally:
            if self.election is not None:
                self.election.stop()  # it releases the lease on its way out
            ended.set()  # the step-down task deletes this gate's reach record on its way out
            if self.stepdown is not None:
                self.stepdown.set_leading(False)
            if self.client is not None and self.led_until is None:
                self.led_until = time.time()
            if tasks:
                tasks[0].cancel()  # the catalog follower
                await asyncio.wait(tasks, timeout=5.0)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            await self._step_down()
            if self._nc is not None:
                nc, self._nc = self._nc, None
                try:
                    await asyncio.wait_for(nc.close(), 2.0)
                except Exception:  # noqa: BLE001 - closing a dead link
                    pass

    async def _adopt_buckets(self, journal: Journal) -> None:
        """Session setup: each KV bucket's creation time against the one venue.db recorded,
        and a watch on each (deleted or made again under the session ends it, and this runs
        again). What a bucket made again empty means, bucket by bucket:
        - budget: its request log is gone while those requests still count at the platform;
          the company's whole budget is taken as spent until they no longer do (fail closed,
          agent.venue.budget), and only then is the new creation time recorded (a restart
          meanwhile finds it made again once more);
        - quarantine: the rows the platform refused are gone; every row this gate handed over
          since the lost bucket was made goes again (agent.venue.uplink
          `adopt_handed_over`): the platform keeps the ones it has once (scan uuid) and
          refuses the others again, into the new bucket;
        - lease: the election goes on in the new bucket (terms rank by the bucket's creation
          time, agent.venue.lease);
        - batches (watched while this device leads, `_lead`): the stored batches not done are
          gone with it; their messages were not acked, so the bus hands them to the next
          term's uploader, which sends them under new request uuids (the platform keeps each
          scan uuid once)."""
        db = self.config.store_dir / VENUE_FILE
        budget = kv_stream(budget_bucket_name(self.name))
        # streams and buckets a new venue makes in one setup (stream_identity.made_again_unseen)
        venue_streams = [catalog.stream_name(self.name), uplink.stream_name(self.name),
                         kv_stream(bucket_name(self.name))]

        async def unseen() -> tuple[str, float] | None:  # no record: made again unseen?
            age = await unrecorded_loss_age(self._js, budget, venue_streams,
                                            float(self.config.api["timeout_s"]))
            return None if age is None else ("", age)

        self._budget_created, lost = await stream_identity.adopt(
            self._js, budget, db, lambda recorded: (recorded, 0.0), record=False,
            unrecorded=unseen)
        if lost is not None:
            recorded, ago = lost
            self._budget_lost(budget, f"made again at {self._budget_created} (the log of the "
                                      f"one of {recorded} is gone)" if recorded else
                              f"made {ago:.0f} s ago, after the venue's other streams, and "
                              "venue.db has no record of the one before (its log may be "
                              "gone)", ago_s=ago)
        held = kv_stream(quarantine.bucket_name(self.name))
        held_created, again = await uplink.adopt_handed_over(
            self._js, held, journal, db, "the quarantine bucket", venue_streams)
        self._hand_over_tag = held_created  # uplink.hand_over_headers
        if again is not None:
            self._bucket_made_again(held, f"made again: {again} scan(s) of this gate handed "
                                          "over again")
        lease = kv_stream(bucket_name(self.name))
        lease_created, _ = await stream_identity.adopt(self._js, lease, db)
        for stream, created in ((budget, self._budget_created), (held, held_created),
                                (lease, lease_created)):
            self._bucket_watches[stream] = stream_identity.StreamWatch(stream, created)

    def _budget_lost(self, stream: str, what: str, ago_s: float = 0.0) -> None:
        """The budget bucket found made again (or gone) `ago_s` ago: from then on, the
        company's budget is taken as spent for a window (agent.venue.budget
        `LeaderFence.seed`)."""
        self._budget_lost_at = time.monotonic() - ago_s
        self._bucket_made_again(stream, what)

    def _bucket_made_again(self, stream: str, what: str) -> None:
        self.counters["buckets_made_again"] += 1
        self.buckets_lost[stream] = {"since": utc_iso(datetime.now(UTC)), "error": what}
        log.warning("venue %s: bucket %s %s", self.name, stream, what)

    def _lost_budget(self) -> tuple[float | None, int]:
        """For `LeaderFence.seed`: how long ago the budget log was lost, and the requests
        taken as spent then (the company's whole budget)."""
        if self._budget_lost_at is None:
            return None, 0
        return time.monotonic() - self._budget_lost_at, int(self.config.api["requests_per_minute"])

    async def _settle_buckets(self) -> None:
        """Clear what was lost once dealt with: the budget once its lost requests no longer
        count (the new creation time recorded only then), the quarantine once this gate's
        scans are on the bus again (see `_member_round`)."""
        budget = kv_stream(budget_bucket_name(self.name))
        ago, _ = self._lost_budget()
        if ago is not None and not lost_log_counts(ago, self.config.api["timeout_s"]) \
                and self._budget_created:
            await stream_identity.record_created(self.config.store_dir / VENUE_FILE, budget,
                                                 self._budget_created)
            self._budget_lost_at = None
            self.buckets_lost.pop(budget, None)

    def _own_term(self) -> Term | None:
        lease = self.election.lease if self.election else None
        return lease.stamp() if lease is not None and lease.valid() else None

    async def _changed(self, leading: bool) -> None:
        if self.stepdown is not None:
            self.stepdown.set_leading(leading)
        self.led_until = None if leading else time.time()
        if not leading:
            await self._step_down()

    async def _loop(self, stop: asyncio.Event, journal: Journal,
                    tasks: list[asyncio.Task[None]]) -> None:
        sync_cfg = self.config.sync
        next_upload = 0.0
        while not stop.is_set():
            now = time.monotonic()
            for task in tasks:
                if task.done():  # the catalog follower or the election died: new session
                    raise RuntimeError(f"venue task ended: {task.exception() or 'stopped'}")
            try:
                await self._watch_streams()  # before the hand-over, which fails without it
                await self._member_round(journal)  # first: a bus gone must not hold back
                if self._catalog_watch is not None and self.follower is not None \
                        and self._nc is not None and self._nc.is_connected:  # the fallback
                    await self._catalog_watch.check(self._js, self.follower.position)
                if self.election is not None and self.election.lease.valid():
                    await self._lead()
                    assert self.uploader is not None
                    # full batches at once, the rest every upload_interval_s: the venue's
                    # request rate does not grow with its number of gates
                    waiting = await self.uploader.lag()
                    if waiting and (now >= next_upload or waiting >= self.uploader.max_batch):
                        await self._upload(waiting)
                        next_upload = now + sync_cfg["upload_interval_s"]
                await self._refresh_status(now)
            except NotLeader as exc:
                log.warning("venue: %s", exc)
                await self._step_down()
            except VenueStreamLost:
                raise  # a stream deleted or made again: a new session sets it up
            except Exception as exc:  # noqa: BLE001 - the platform or the bus: next round
                if cancelled():
                    raise asyncio.CancelledError from exc
                self.counters["leader_errors"] += 1
                log.warning("venue round failed: %s: %s", type(exc).__name__, exc)
            await self._pause(stop, 0.2)

    async def _watch_streams(self) -> None:
        """The upload stream or a KV bucket deleted or made again ends the session
        (VenueStreamLost; only their identity counts, so the position given is 0): its setup
        makes them again and deals with what was lost (`_adopt_buckets`; the upload stream:
        this gate's scans handed over again, agent.venue.uplink). Not made again within a
        session, a bucket's every write failed: no leader without the lease bucket, no
        platform request without the budget's log, no upload without the batches, until
        every gate restarted."""
        if self._nc is None or not self._nc.is_connected:
            return
        for stream, watch in list(self._bucket_watches.items()):
            try:
                await watch.check(self._js, 0)
            except VenueStreamLost as exc:
                if stream == kv_stream(budget_bucket_name(self.name)):
                    self._budget_lost_at = time.monotonic()  # from now: the log is gone
                elif stream != kv_stream(quarantine.bucket_name(self.name)):
                    # lease, batches: nothing to rebuild but the session (the setup counts
                    # the budget and the quarantine, found made again there)
                    self.counters["buckets_made_again"] += 1
                    log.warning("venue %s: %s", self.name, exc)
                raise
        if self._upload_watch is None:
            return
        try:
            await self._upload_watch.check(self._js, 0)
        except VenueStreamLost as exc:
            self._upload_lost(str(exc))
            raise

    def _upload_lost(self, what: str) -> None:
        if self.upload_stream_lost is None:
            self.upload_stream_lost = {"since": utc_iso(datetime.now(UTC)), "error": what}
            log.warning("venue %s: the upload stream was lost (%s); this gate's scans are "
                        "handed over again", self.name, what)
        else:
            self.upload_stream_lost["error"] = what

    async def _upload(self, waiting: int) -> None:
        """The scans waiting when the round starts, in as few requests as possible. Chasing
        every newcomer would spend a request per scan on a busy venue (round one's soak
        bench saw that stall uploads); newcomers wait for the next round or a full batch."""
        assert self.uploader is not None
        sent = 0
        while sent < waiting:  # one round: its split budget holds across these calls
            done = await self.uploader.upload_round(new_round=sent == 0)
            if not done:
                break
            sent += done

    async def _refresh_status(self, now: float) -> None:
        """Venue-wide figures every gate shows (two small bus requests every 2 s)."""
        if now < self._next_status or self._budget_kv is None:
            return
        self._next_status = now + 2.0
        await self._settle_buckets()
        self.budget_in_use = await venue_requests(self._budget_kv, time.time())
        try:
            self.quarantined = await quarantine.count(self._quarantine_kv)
        except Exception:  # noqa: BLE001 - the bus is away: unknown, not zero
            self.quarantined = None
        try:
            self.upload_lag, self.upload_lag_s = await uplink.backlog(self._js, self.name)
        except Exception:  # noqa: BLE001 - the bus is away: unknown, not zero
            self.upload_lag = self.upload_lag_s = None

    # -- member ----------------------------------------------------------------------------

    async def _member_round(self, journal: Journal) -> None:
        if self._nc is not None and self._nc.is_connected:
            self.connected_at = time.monotonic()
            handed = await uplink.hand_over(
                self._js, self.name, self.device, journal, self.config.api["scanned_by"] or None,
                limit=HAND_OVER_LIMIT, tag=self._hand_over_tag)
            self.counters["handed_over"] += handed
            if handed < HAND_OVER_LIMIT and self.upload_stream_lost is not None \
                    and self._upload_watch is not None:  # handed over again, to the new one
                log.warning("venue %s: this gate's scans are on the new upload stream",
                            self.name)
                self.upload_stream_lost = None
            held = kv_stream(quarantine.bucket_name(self.name))
            if handed < HAND_OVER_LIMIT and held in self.buckets_lost \
                    and held in self._bucket_watches:  # this session handed them over again
                self.buckets_lost.pop(held)
        elif (time.monotonic() - self.connected_at > self.venue["fallback_after_s"]
              and time.monotonic() >= self._next_fallback):
            self._next_fallback = time.monotonic() + self.config.sync["upload_interval_s"]
            self.counters["fallback_rows"] += await self._fallback(journal)

    async def upload_now(self, drain: bool) -> dict[str, Any]:
        """`gate-agent upload` beside the daemon in venue mode: this gate's pending scans to
        the bus now (agent.venue.uplink.hand_over_now); the bus out of reach is an error that
        says when the fallback takes over."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            raise GateAgentError(
                f"the venue bus is not reachable ({self.last_error or 'not connected'}); this "
                f"gate uploads its own scans once cut off for venue.fallback_after_s "
                f"({self.venue['fallback_after_s']:g} s)")
        journal = await asyncio.to_thread(Journal, self.journal_path)
        try:
            out = await uplink.hand_over_now(self._js, self.name, self.device, journal,
                                             self.config.api["scanned_by"] or None, drain,
                                             self._hand_over_tag)
        finally:
            await asyncio.to_thread(journal.close)
        self.counters["handed_over"] += out["handed"]
        return out

    async def _fallback(self, journal: Journal) -> int:
        """Cut off from the bus: this gate's own scans, directly, with its own share."""
        async with PlatformClient.from_config(
                self.config.api, self.token, Governor.from_config(self.config.api)) as client:
            client.on_server_time = self.on_server_time
            uploader = Uploader(journal, client, batch_size=self.config.sync["upload_batch_size"],
                                scanned_by=self.config.api["scanned_by"] or None)
            return await uploader.upload_round()

    # -- leader ----------------------------------------------------------------------------

    async def _lead(self) -> None:
        """Set up leader work once per term, and again for a new one (see `_term_over`)."""
        if self.uploader is not None and not self._term_over():
            return
        if self.uploader is not None:
            log.warning("venue %s: leader work of term %d ends (lease term now %d, sync task "
                        "%s); set up again", self.name, self._lead_term,
                        self.election.lease.term if self.election else 0,
                        "ended" if self._sync_task is None or self._sync_task.done()
                        else "running")
            await self._step_down()
        assert self.election is not None and self.fence is not None
        lease = self.election.lease
        self._lead_term = lease.term
        governor = leader_governor(self.config.api, self.venue["platform_reserve"])
        self.counters["seeded_requests"] = await self.fence.seed(governor, *self._lost_budget())
        if self.client is None:  # one client for the device's life: its link status stays
            self.client = PlatformClient.from_config(self.config.api, self.token, governor)
            self.client.on_server_time = self.on_server_time
        self.client.governor = governor  # a fresh budget per term, seeded above
        self.client.before_send = self.fence.check
        uploader = uplink.VenueUploader(self._js, self.name, self.client, lease,
                                        max_batch=self.config.sync["upload_batch_size"],
                                        ack_wait_s=self.ack_wait_s,
                                        status=self.upload_status, replicas=self.replicas)
        await uploader.start()  # may fail on the bus: the next round starts the term again
        batches = kv_stream(uplink.batches_bucket(self.name))
        self._bucket_watches[batches] = stream_identity.StreamWatch(
            batches, stream_identity.created_of(await self._js.stream_info(batches)))
        self.syncer = Syncer(self.config, self.client, self.cache_path,
                             observer=catalog.CatalogPublisher(self._js, self.name, lease))
        self.uploader = uploader
        self._sync_task = asyncio.create_task(self._sync_loop(self.syncer), name="venue sync")
        self._pass_sub = await passrequest.serve(self._nc, self.name, self._requested_pass)
        log.warning("venue %s: %s leads (term %d); %d recent requests of the previous "
                    "leader counted", self.name, self.device, lease.term,
                    self.counters["seeded_requests"])

    def _term_over(self) -> bool:
        """The leader work running was set up for another term, or its sync task ended.

        A fence check that fails (one `kv.update` timing out before a platform request) drops
        the lease; the election's next round takes it back under this device's name with a
        new term, so `leading` never turns False and `_step_down` is not called, while the
        sync task ended on the NotLeader. The whole term's work is then set up again rather
        than the sync task alone: the budget is seeded anew from the log (counting the
        requests of the term that ended, which may still be in flight), stored batches are
        resent under their uuids, and nothing of one term runs on into the next."""
        lease = self.election.lease if self.election is not None else None
        task = self._sync_task
        return (lease is None or lease.term != self._lead_term or task is None
                or task.done())

    async def _sync_loop(self, syncer: Syncer) -> None:
        """The leader's sync passes, beside its uploads (a long delta must not hold the
        venue's scans back; the governor serves uploads first): events/zones refresh, deltas,
        and round one's daily full pass at `sync.full_resync_at` (local time), in place and
        published (agent.venue.catalog: every gate replaces the event's items with it)."""
        sync_cfg = self.config.sync
        next_delta = next_refresh = 0.0
        if self.next_full is None:  # kept across terms: the schedule is daily either way
            self.next_full = next_daily(sync_cfg["full_resync_at"], time.time())
        while True:
            now = time.monotonic()
            try:
                if self.next_full is not None and time.time() >= self.next_full:
                    self.next_full = time.time() + FULL_RETRY_S  # failed: again a bit later
                    listed = await syncer.full_in_place()
                    self.last_full = {"at": utc_iso(datetime.now(UTC)), "items": listed}
                    self.next_full = next_daily(sync_cfg["full_resync_at"], time.time())
                    next_refresh = now + sync_cfg["refresh_interval_s"]
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

    async def _requested_pass(self, request: passrequest.PassRequest) -> dict[str, Any]:
        """A gate's `gate-agent sync` (agent.venue.passrequest): the pass it asked for, run by
        this leader's syncer (its lock queues it behind a scheduled pass) and published to the
        catalog like every other pass; answered when done."""
        syncer, client, election = self.syncer, self.client, self.election
        if syncer is None or client is None or election is None or not election.lease.valid():
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
        info = await self._js.stream_info(catalog.stream_name(self.name))
        return {"leader": self.device, "term": election.lease.term,
                "mode": "full" if request.full else "delta", "applied": applied,
                "passes": passes, "requests": sum(client.governor.granted.values()) - before,
                "catalog_seq": int(info.state.last_seq)}

    def full_resync_now(self) -> None:
        """Run the daily full pass at the leader's next sync round (when this device leads)."""
        self.next_full = 0.0

    async def _step_down(self) -> None:
        self.uploader = None
        self._bucket_watches.pop(kv_stream(uplink.batches_bucket(self.name)), None)
        sub, self._pass_sub = self._pass_sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the link is gone: so is the subscription
                pass
        task, self._sync_task = self._sync_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.syncer is not None:
            self.syncer.close()
            self.syncer = None

    async def _close_client(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    # -- status ------------------------------------------------------------------------------

    def platform_status(self) -> dict[str, Any] | None:
        """The leader's platform link for this gate's `/status` `platform` (None before this
        device first led). Only the leader measures the link: members send the platform
        nothing (they probe it: `venue.leader.platform_reachable`). Once this device no
        longer leads, what its client last saw is history, not the link's state now:
        `not_measured_since` says since when, and no reason (`platform_unreachable`,
        `auth_failed`, `clock_skew` from its last `clock_skew_s`) is drawn from it
        (agent.ops.status), nor the `gate_clock_skew_seconds` metric or the heartbeat's skew —
        after a step-down the `leader_stepped_down` reason says what failed and what the probe
        says now."""
        if self.client is None:
            return None
        out = self.client.get_status()
        out["not_measured_since"] = epoch_iso(self.led_until) if self.led_until else None
        return out

    def get_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"device": self.device, "bus_error": self.last_error,
                               **self.counters}
        if self.election is not None:
            out.update(self.election.get_status())
        if self.stepdown is not None:
            out.update(self.stepdown.get_status())
        out["budget_in_use_per_min"] = self.budget_in_use
        out["budget_per_min"] = self.budget_per_min
        out["upload_lag"] = self.upload_lag
        out["upload_lag_s"] = None if self.upload_lag_s is None else round(self.upload_lag_s, 1)
        out["quarantined"] = self.quarantined
        out["upload_stream_lost"] = self.upload_stream_lost
        out["buckets_lost"] = dict(self.buckets_lost)
        ago, _ = self._lost_budget()
        out["budget_unknown_for_s"] = None if ago is None else round(
            max(0.0, WINDOW_S + float(self.config.api["timeout_s"]) - ago), 1)
        out["last_full_pass"] = self.last_full
        uploader_drift = self.uploader.drift if self.uploader is not None else {}
        out["settings_drift"] = sorted({**self.drift, **uploader_drift}.values())
        if self.follower is not None:
            out.update(self.follower.get_status())
        if self.uploader is not None:
            out["upload"] = self.uploader.get_status()
        return out
