"""The venue's upload stream and KV buckets as this gate adopted them, and what their loss
still costs: the part of `VenueRole` (agent.venue.leader) that notices a stream or bucket
deleted or made again under it and keeps the consequences until they are dealt with.

Separate from the role because it is one question asked at three moments — at session setup
(each one's creation time against venue.db), every round (a watch on each), and until what
was lost is made good (the budget taken as spent, this gate's scans handed over again) — and
its answers feed the leader's budget, the member's hand-over and the status alike.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from agent.config import Config
from agent.core.codes import utc_iso
from agent.errors import VenueStreamLost
from agent.store.journal import Journal
from agent.store.venue import VENUE_FILE
from agent.venue import catalog, quarantine, stream_identity, uplink
from agent.venue.budget import WINDOW_S, lost_log_counts, unrecorded_loss_age
from agent.venue.budget import bucket_name as budget_bucket_name
from agent.venue.lease import bucket_name
from agent.venue.streams import kv_stream

log = logging.getLogger("gate_agent.venue.leader")


class LostStreams:
    """One device's record of the venue's streams and buckets (kept across sessions: a loss
    outlives the session that found it); `new_session()` forgets only the watches."""

    def __init__(self, config: Config, name: str, counters: dict[str, int]):
        """`counters`: the role's, where `buckets_made_again` is counted."""
        self.config = config
        self.name = name
        self.counters = counters
        self.venue_db = config.store_dir / VENUE_FILE
        # this session's watch of the upload stream, set once the session adopted it
        self.upload_watch: stream_identity.StreamWatch | None = None
        # this session's watches of the KV buckets (lease, budget, quarantine, and the
        # batches while leading): stream name -> watch (agent.venue.stream_identity)
        self.watches: dict[str, stream_identity.StreamWatch] = {}
        # buckets found made again whose loss is still being dealt with: stream -> since,
        # what (the budget until its lost requests no longer count, the quarantine until this
        # gate's scans are handed over again); status `buckets_lost`, reason venue_bucket_lost
        self.buckets_lost: dict[str, dict[str, str]] = {}
        self.budget_lost_at: float | None = None  # monotonic: the budget bucket found lost
        self.budget_created = ""  # the budget bucket's creation time this session
        self.hand_over_tag = ""  # the quarantine bucket's (uplink.hand_over_headers)
        # the upload stream lost under this gate (agent.venue.uplink): since when, what
        # happened; None again once this gate's scans are handed over again
        self.upload_stream_lost: dict[str, str] | None = None

    def new_session(self) -> None:
        self.upload_watch = None
        self.watches = {}

    async def adopt_upload_stream(self, js: Any, journal: Journal) -> None:
        """Session setup: the upload stream's creation time against venue.db; made again,
        this gate's scans since then go to the bus again (agent.venue.uplink)."""
        uploads, again = await uplink.adopt_upload_stream(
            js, self.name, journal, self.venue_db,
            [catalog.stream_name(self.name), kv_stream(bucket_name(self.name))])
        if again:
            self.upload_lost(f"made again: {again} scan(s) of this gate handed over again")
        self.upload_watch = stream_identity.StreamWatch(uplink.stream_name(self.name), uploads)

    async def adopt_buckets(self, js: Any, journal: Journal) -> None:
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
        - batches (watched while this device leads, `watch_batches`): the stored batches not
          done are gone with it; their messages were not acked, so the bus hands them to the
          next term's uploader, which sends them under new request uuids (the platform keeps
          each scan uuid once)."""
        db = self.venue_db
        budget = kv_stream(budget_bucket_name(self.name))
        # streams and buckets a new venue makes in one setup (stream_identity.made_again_unseen)
        venue_streams = [catalog.stream_name(self.name), uplink.stream_name(self.name),
                         kv_stream(bucket_name(self.name))]

        async def unseen() -> tuple[str, float] | None:  # no record: made again unseen?
            age = await unrecorded_loss_age(js, budget, venue_streams,
                                            float(self.config.api["timeout_s"]))
            return None if age is None else ("", age)

        self.budget_created, lost = await stream_identity.adopt(
            js, budget, db, lambda recorded: (recorded, 0.0), record=False,
            unrecorded=unseen)
        if lost is not None:
            recorded, ago = lost
            self._budget_lost(budget, f"made again at {self.budget_created} (the log of the "
                                      f"one of {recorded} is gone)" if recorded else
                              f"made {ago:.0f} s ago, after the venue's other streams, and "
                              "venue.db has no record of the one before (its log may be "
                              "gone)", ago_s=ago)
        held = kv_stream(quarantine.bucket_name(self.name))
        held_created, again = await uplink.adopt_handed_over(
            js, held, journal, db, "the quarantine bucket", venue_streams)
        self.hand_over_tag = held_created  # uplink.hand_over_headers
        if again is not None:
            self._bucket_made_again(held, f"made again: {again} scan(s) of this gate handed "
                                          "over again")
        lease = kv_stream(bucket_name(self.name))
        lease_created, _ = await stream_identity.adopt(js, lease, db)
        for stream, created in ((budget, self.budget_created), (held, held_created),
                                (lease, lease_created)):
            self.watches[stream] = stream_identity.StreamWatch(stream, created)

    async def watch_batches(self, js: Any) -> None:
        """Leader work set up: the batches bucket is watched like the others while it lasts."""
        batches = kv_stream(uplink.batches_bucket(self.name))
        self.watches[batches] = stream_identity.StreamWatch(
            batches, stream_identity.created_of(await js.stream_info(batches)))

    def unwatch_batches(self) -> None:
        self.watches.pop(kv_stream(uplink.batches_bucket(self.name)), None)

    def _budget_lost(self, stream: str, what: str, ago_s: float = 0.0) -> None:
        """The budget bucket found made again (or gone) `ago_s` ago: from then on, the
        company's budget is taken as spent for a window (agent.venue.budget
        `LeaderFence.seed`)."""
        self.budget_lost_at = time.monotonic() - ago_s
        self._bucket_made_again(stream, what)

    def _bucket_made_again(self, stream: str, what: str) -> None:
        self.counters["buckets_made_again"] += 1
        self.buckets_lost[stream] = {"since": utc_iso(datetime.now(UTC)), "error": what}
        log.warning("venue %s: bucket %s %s", self.name, stream, what)

    def lost_budget(self) -> tuple[float | None, int]:
        """For `LeaderFence.seed`: how long ago the budget log was lost, and the requests
        taken as spent then (the company's whole budget)."""
        if self.budget_lost_at is None:
            return None, 0
        return time.monotonic() - self.budget_lost_at, int(self.config.api["requests_per_minute"])

    async def settle(self) -> None:
        """Clear what was lost once dealt with: the budget once its lost requests no longer
        count (the new creation time recorded only then), the quarantine once this gate's
        scans are on the bus again (see `handed_over`)."""
        budget = kv_stream(budget_bucket_name(self.name))
        ago, _ = self.lost_budget()
        if ago is not None and not lost_log_counts(ago, self.config.api["timeout_s"]) \
                and self.budget_created:
            await stream_identity.record_created(self.venue_db, budget, self.budget_created)
            self.budget_lost_at = None
            self.buckets_lost.pop(budget, None)

    def handed_over(self) -> None:
        """Every pending scan of this gate is on the bus (a member round handed over less
        than its limit): what waited for this gate's scans to be handed over again is done."""
        if self.upload_stream_lost is not None \
                and self.upload_watch is not None:  # handed over again, to the new one
            log.warning("venue %s: this gate's scans are on the new upload stream", self.name)
            self.upload_stream_lost = None
        held = kv_stream(quarantine.bucket_name(self.name))
        if held in self.buckets_lost \
                and held in self.watches:  # this session handed them over again
            self.buckets_lost.pop(held)

    async def check(self, nc: Any, js: Any) -> None:
        """The upload stream or a KV bucket deleted or made again ends the session
        (VenueStreamLost; only their identity counts, so the position given is 0): its setup
        makes them again and deals with what was lost (`adopt_buckets`; the upload stream:
        this gate's scans handed over again, agent.venue.uplink). Not made again within a
        session, a bucket's every write failed: no leader without the lease bucket, no
        platform request without the budget's log, no upload without the batches, until
        every gate restarted."""
        if nc is None or not nc.is_connected:
            return
        for stream, watch in list(self.watches.items()):
            try:
                await watch.check(js, 0)
            except VenueStreamLost as exc:
                if stream == kv_stream(budget_bucket_name(self.name)):
                    self.budget_lost_at = time.monotonic()  # from now: the log is gone
                elif stream != kv_stream(quarantine.bucket_name(self.name)):
                    # lease, batches: nothing to rebuild but the session (the setup counts
                    # the budget and the quarantine, found made again there)
                    self.counters["buckets_made_again"] += 1
                    log.warning("venue %s: %s", self.name, exc)
                raise
        if self.upload_watch is None:
            return
        try:
            await self.upload_watch.check(js, 0)
        except VenueStreamLost as exc:
            self.upload_lost(str(exc))
            raise

    def upload_lost(self, what: str) -> None:
        if self.upload_stream_lost is None:
            self.upload_stream_lost = {"since": utc_iso(datetime.now(UTC)), "error": what}
            log.warning("venue %s: the upload stream was lost (%s); this gate's scans are "
                        "handed over again", self.name, what)
        else:
            self.upload_stream_lost["error"] = what

    def get_status(self) -> dict[str, Any]:
        ago, _ = self.lost_budget()
        return {"upload_stream_lost": self.upload_stream_lost,
                "buckets_lost": dict(self.buckets_lost),
                "budget_unknown_for_s": None if ago is None else round(
                    max(0.0, WINDOW_S + float(self.config.api["timeout_s"]) - ago), 1)}
