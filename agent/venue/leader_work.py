"""The work of the device that holds the venue's lease, term by term: one `PlatformClient`
whose governor owns `requests_per_minute - platform_reserve`, seeded with the previous
leader's recent requests, and whose `before_send` re-checks the lease on the bus
(agent.venue.budget `LeaderFence`); the venue's uploads (`VenueUploader`); the sync passes
(agent.venue.leader_sync) with a `CatalogPublisher` observing them; the answer to gates'
pass requests. Set up once per term, torn down when the term ends (`stop`).

Separate from `VenueRole` (agent.venue.leader) because what must hold across a term change
— nothing of one term runs on into the next, the budget seeded anew each term — is easiest
to check when setting up and tearing down sit side by side, apart from the session's life.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from agent.config import Config
from agent.core.codes import epoch_iso
from agent.platform.client import PlatformClient
from agent.platform.sync import Syncer
from agent.platform.upload import UploadStatus
from agent.venue import catalog, passrequest, uplink
from agent.venue.budget import LeaderFence, leader_governor
from agent.venue.election import Election
from agent.venue.leader_sync import LeaderSync
from agent.venue.lost_streams import LostStreams
from agent.venue.setup import SetUp

log = logging.getLogger("gate_agent.venue.leader")


class LeaderWork:
    """One device's leader work (kept for the device's life: its client, whose link status
    outlives a term; `passes`, whose daily schedule does too)."""

    def __init__(self, config: Config, token: str, device: str, *, replicas: int,
                 ack_wait_s: float, counters: dict[str, int], losses: LostStreams,
                 upload_status: UploadStatus,
                 on_server_time: Callable[[float, float], None] | None = None):
        """`counters`: the role's (`seeded_requests`, `leader_errors`); `losses`: the
        budget lost (seeded as spent) and the batches bucket's watch; `upload_status`: the
        venue's uploads while this device leads (the daemon's `/status` `upload`)."""
        assert config.venue is not None
        self.config = config
        self.venue = config.venue
        self.name = self.venue["name"]
        self.device = device
        self.token = token
        self.replicas = replicas
        self.ack_wait_s = ack_wait_s
        self.counters = counters
        self.losses = losses
        self.upload_status = upload_status
        self.on_server_time = on_server_time
        self.passes = LeaderSync(config, self.name, device, counters)
        self.fence: LeaderFence | None = None  # the session's (`new_session`)
        self.client: PlatformClient | None = None
        self.syncer: Syncer | None = None
        self.uploader: uplink.VenueUploader | None = None
        self.sync_task: asyncio.Task[None] | None = None
        self.term = 0  # the lease term the leader work (uploader, sync task) was set up for
        # when this device last stopped leading (wall clock); None while it leads, or before
        # it first led: its client's link status is measured only meanwhile
        self.led_until: float | None = None
        self._pass_sub: Any = None  # the leader's subscription to gates' sync requests
        self._election: Election | None = None  # the session's, for requested passes
        self._js: Any = None  # the session's
        self._next_upload = 0.0
        # the term's set-up (buckets, consumer) while it fails, why and since when: status
        # `leader.term_setup` (reason venue_degraded); idle while this device does not lead
        self.setup = SetUp(log, "venue leader term")

    def new_session(self, fence: LeaderFence | None) -> None:
        """A bus session set up: its fence (None for a device that may not lead), and the
        upload cadence starts over."""
        if fence is not None:
            self.fence = fence
        self._next_upload = 0.0

    async def round(self, nc: Any, js: Any, election: Election, now: float) -> None:
        """A round of the role's loop while `election`'s lease is valid: the term's work set
        up if it is not, then the uploads: full batches at once, the rest every
        `upload_interval_s` (the venue's request rate does not grow with its number of
        gates)."""
        await self._lead(nc, js, election)
        assert self.uploader is not None
        waiting = await self.uploader.lag()
        if waiting and (now >= self._next_upload or waiting >= self.uploader.max_batch):
            await self._upload(waiting)
            self._next_upload = now + self.config.sync["upload_interval_s"]

    async def _lead(self, nc: Any, js: Any, election: Election) -> None:
        """Set up leader work once per term, and again for a new one (see `term_over`)."""
        if self.uploader is not None and not self.term_over(election):
            return
        if self.uploader is not None:
            log.warning("venue %s: leader work of term %d ends (lease term now %d, sync task "
                        "%s); set up again", self.name, self.term, election.lease.term,
                        "ended" if self.sync_task is None or self.sync_task.done()
                        else "running")
            await self.stop()
        assert self.fence is not None
        try:
            await self._set_up(nc, js, election)
        except Exception as exc:  # in status until the term runs; the next round tries again
            if self.uploader is not None:  # a part of the term runs: none of it runs on
                step = self.setup.step
                await self.stop()
                self.setup.begin(step)
            if self.setup.since is not None:  # not a term that ended meanwhile (`stop`)
                self.setup.failed(exc)
            raise
        self.setup.running()
        lease = election.lease
        log.warning("venue %s: %s leads (term %d); %d recent requests of the previous "
                    "leader counted", self.name, self.device, lease.term,
                    self.counters["seeded_requests"])

    async def _set_up(self, nc: Any, js: Any, election: Election) -> None:
        """The term's work, step by step in `setup` (a step that fails raises: the role's
        next round tries the term again, and `setup` keeps since when)."""
        assert self.fence is not None
        setup = self.setup
        setup.begin("seeding the leader's request budget")
        lease = election.lease
        self.term = lease.term
        self._election, self._js = election, js
        governor = leader_governor(self.config.api, self.venue["platform_reserve"])
        self.counters["seeded_requests"] = await self.fence.seed(governor,
                                                                 *self.losses.lost_budget())
        if self.client is None:  # one client for the device's life: its link status stays
            self.client = PlatformClient.from_config(self.config.api, self.token, governor)
            self.client.on_server_time = self.on_server_time
        self.client.governor = governor  # a fresh budget per term, seeded above
        self.client.before_send = self.fence.check
        uploader = uplink.VenueUploader(js, self.name, self.client, lease,
                                        max_batch=self.config.sync["upload_batch_size"],
                                        ack_wait_s=self.ack_wait_s,
                                        status=self.upload_status, replicas=self.replicas)
        await uploader.start(setup)  # its buckets' creates: each failed try said at once
        setup.at("watching the batches bucket")
        await self.losses.watch_batches(js)
        self.syncer = Syncer(self.config, self.client, self.config.store_dir / "cache.db",
                             observer=catalog.CatalogPublisher(js, self.name, lease))
        self.uploader = uploader
        self.sync_task = asyncio.create_task(self.passes.run(self.syncer), name="venue sync")
        setup.at("answering the gates' pass requests")
        self._pass_sub = await passrequest.serve(nc, self.name, self._requested_pass)

    def term_over(self, election: Election | None) -> bool:
        """The leader work running was set up for another term, or its sync task ended.

        A fence check that fails (one `kv.update` timing out before a platform request) drops
        the lease; the election's next round takes it back under this device's name with a
        new term, so `leading` never turns False and `stop` is not called, while the sync
        task ended on the NotLeader. The whole term's work is then set up again rather than
        the sync task alone: the budget is seeded anew from the log (counting the requests
        of the term that ended, which may still be in flight), stored batches are resent
        under their uuids, and nothing of one term runs on into the next."""
        lease = election.lease if election is not None else None
        task = self.sync_task
        return (lease is None or lease.term != self.term or task is None
                or task.done())

    async def _requested_pass(self, request: passrequest.PassRequest) -> dict[str, Any]:
        lease = self._election.lease if self._election is not None else None
        return await self.passes.requested(request, self.syncer, self.client, lease, self._js)

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

    async def stop(self) -> None:
        """The term's work ends (the lease lost, a new term, or the session's end): no upload,
        no sync pass and no requested pass of it runs on. The client stays (`close`)."""
        self.uploader = None
        self.setup.idle()
        self.losses.unwatch_batches()
        sub, self._pass_sub = self._pass_sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the link is gone: so is the subscription
                pass
        task, self.sync_task = self.sync_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.syncer is not None:
            self.syncer.close()
            self.syncer = None

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

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
