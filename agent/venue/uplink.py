"""Upload once: every gate hands its scans to the bus, the leader uploads the venue's.

Gate side (`hand_over`): journal rows still pending are published as the exact ticket rows
`POST /entry/tickets` takes (agent.platform.upload.ticket_row) on `venueup.<venue>.<device>`
of the stream `VENUE_<name>_UPLOAD`, with `Nats-Msg-Id` = scan uuid (stored once however often
it is published), and marked sent in the journal only after the bus acknowledged them: from
then on they are the venue's to deliver (the stream is durable, replicated with 3 nodes).

Leader side (`VenueUploader`): one durable pull consumer (`uploader`, explicit acks,
work-queue retention: the stream is the venue's outbox). A batch of up to `max_batch` rows:
1. gets a request uuid and is written whole to the KV bucket `VENUE_<name>_BATCHES`
   (key = request uuid, value = the rows and the sends pending) *before* it is sent;
2. is sent (the lease is re-checked on the bus just before: agent.venue.budget);
3. after the platform's success, is marked done in KV, its messages are acked, the KV entry
   is deleted.
A new leader first resends every stored batch not marked done, under the same request uuid
and with the same rows (the platform answers a repeated request uuid with its first answer
and records nothing), and acks the redelivered messages of stored batches without sending
them again. So a scan reaches the platform in exactly one applied row, across leader changes
and crashes at any step; the only repeats are whole replays of one request uuid, which the
platform ignores (the tests count them).

The stream deleted (`nats stream rm`) or made again under running gates takes the scans still
waiting on it with it, while their gates' journals say "sent". So its creation time is stored
in venue.db beside the other streams' (agent.venue.stream_identity), and each gate's session
setup (`adopt_upload_stream`) compares it: made again since, the gate hands over again every
row it marked sent since the lost stream was made (its journal is the source of truth; rows
the platform already has are kept once by their scan uuid). While a session runs, the
stream is looked at every 2 s like the others: made again, or gone 5 s, ends the session, and
its setup makes it again (the leader's consumer with it).

Refused rows (a 422 naming them, or `max_tries` unconfirmed answers) are quarantined on the
bus (agent.venue.quarantine) as round one's uploader does, with its code
(`plan_refusal`): see `VenueUploader`. A stored batch's entry then lists the parts still to
send (`pending`: request uuid -> rows), rewritten in one put before any part is sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid as uuidlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from agent.core.codes import utc_iso
from agent.errors import ApiError, Forbidden, NotDelivered, Unauthenticated, Validation
from agent.platform.client import PlatformClient
from agent.platform.upload import (
    MAX_TRIES,
    SPLIT_BUDGET,
    UploadStatus,
    hold_after,
    plan_refusal,
    refusal_reason,
    ticket_row,
)
from agent.store.journal import Journal
from agent.venue import quarantine, stream_identity, streams
from agent.venue.kvkeys import live_keys
from agent.venue.lease import Lease
from agent.venue.setup import SetUp

log = logging.getLogger("gate_agent.venue.uplink")

DURABLE = "uploader"
MSG_ID = "Nats-Msg-Id"
# Rows sent this long before a lost stream was made are handed over again too: the stream's
# creation time is the server's clock, `sent_at` this gate's (one more copy is harmless).
CLOCK_MARGIN = timedelta(minutes=10)


def stream_name(venue: str) -> str:
    return f"VENUE_{venue.replace('-', '_')}_UPLOAD"


def batches_bucket(venue: str) -> str:
    """The KV bucket of the leader's stored batches."""
    return f"VENUE_{venue.replace('-', '_')}_BATCHES"


def subject(venue: str, device: str) -> str:
    return f"venueup.{venue}.{device}"


async def ensure_upload_stream(js: Any, venue: str, replicas: int,
                               drift: dict[str, str] | None = None,
                               waiting: streams.Waiting | None = None) -> None:
    """The work queue of the venue's scans for the leader (agent.venue.streams: made to fit
    when it exists with other settings)."""
    await streams.ensure_stream(js, StreamConfig(
        name=stream_name(venue), subjects=[f"venueup.{venue}.>"], storage=StorageType.FILE,
        num_replicas=replicas, retention=RetentionPolicy.WORK_QUEUE, duplicate_window=600.0), [
        streams.Want("num_replicas", replicas, streams.REPLICAS_KEY),
        streams.Want("duplicate_window", 600.0), streams.Want("storage", StorageType.FILE),
        streams.Want("retention", RetentionPolicy.WORK_QUEUE)], drift, waiting)


async def adopt_upload_stream(js: Any, venue: str, journal: Journal,
                              venue_db: Path, venue_streams: list[str] | None = None
                              ) -> tuple[str, int | None]:
    """Session setup (see the module docstring): the upload stream's creation time (for the
    session's `StreamWatch`) and how many rows were handed over again because the stream this
    gate handed its scans to was made again since (`venue_streams`: see
    `adopt_handed_over`)."""
    return await adopt_handed_over(js, stream_name(venue), journal, venue_db,
                                   "the upload stream", venue_streams)


async def adopt_handed_over(js: Any, stream: str, journal: Journal, venue_db: Path,
                            what: str, venue_streams: list[str] | None = None
                            ) -> tuple[str, int | None]:
    """Session setup for a stream or bucket that held this gate's handed-over scans on their
    way to the platform (the upload stream; the quarantine bucket, which holds the rows the
    platform refused): made again since this gate recorded it, every row it marked sent since
    the lost one was made goes back to its outbox and is handed over again (the journal is
    the source of truth). Returns the creation time and how many rows went back (None: it
    was not made again).

    venue.db without a record (a new gate, or venue.db deleted) has no lost creation time to
    compare. When the stream was made after the venue's other `venue_streams` (made again
    at some time, perhaps while this gate was away: agent.venue.stream_identity
    `made_again_unseen`), every row this gate marked sent before it was made (plus the
    clock margin) goes again: those may have waited on a lost one. A new journal has none."""
    def again(recorded: str) -> int:
        lost_made = datetime.fromisoformat(recorded)
        rows = journal.hand_over_again(utc_iso(lost_made - CLOCK_MARGIN))
        log.warning("venue: %s (%s) was made again (this gate handed its scans over while the "
                    "one of %s stood): %d scan(s) handed over again", what, stream, recorded,
                    rows)
        return rows

    async def unrecorded() -> int | None:
        unseen = await stream_identity.made_again_unseen(js, stream, venue_streams or [])
        if unseen is None:
            return None
        made = datetime.now(UTC) - timedelta(seconds=unseen)  # on this clock: the margin
        rows = await asyncio.to_thread(journal.hand_over_again, "", utc_iso(made + CLOCK_MARGIN))
        log.warning("venue: %s (%s) was made %.0f s ago, after the venue's other streams, and "
                    "venue.db has no record of the one before: %d scan(s) handed over before "
                    "it was made are handed over again", what, stream, unseen, rows)
        return rows

    return await stream_identity.adopt(js, stream, venue_db, again,
                                       unrecorded=unrecorded if venue_streams else None)


def hand_over_headers(scan_uuid: str, tag: str = "") -> dict[str, str]:
    """A handed-over row's headers: `Nats-Msg-Id` the scan uuid, so a row published twice is
    stored once — within one incarnation of the quarantine bucket (`tag`, its creation time).
    Rows handed over again because the quarantine was lost (`adopt_handed_over`) were on this
    stream minutes before under the bare uuid: its de-duplication window would drop them, and
    the refused ones would never be quarantined again. The scan uuid is then in
    `Gate-Scan-Uuid`, as for a requeued row (`scan_uuid`)."""
    if not tag:
        return {MSG_ID: scan_uuid}
    return {MSG_ID: f"{scan_uuid}/{tag}", quarantine.SCAN_HEADER: scan_uuid}


async def hand_over(js: Any, venue: str, device: str, journal: Journal,
                    scanned_by: int | None, limit: int = 500, tag: str = "") -> int:
    """Publish this gate's pending rows that may leave it (not held by a passage wait or a
    claim in flight: `Journal.ready`); mark them sent once the bus has them all. `tag`: see
    `hand_over_headers`."""
    rows = await asyncio.to_thread(journal.ready, limit)
    if not rows:
        return 0
    subj = subject(venue, device)
    await asyncio.gather(*(js.publish(subj, orjson.dumps(ticket_row(r, scanned_by)),
                                      headers=hand_over_headers(r["uuid"], tag))
                           for r in rows))
    await asyncio.to_thread(journal.mark_sent, [r["uuid"] for r in rows],
                            utc_iso(datetime.now(UTC)))
    return len(rows)


async def hand_over_now(js: Any, venue: str, device: str, journal: Journal,
                        scanned_by: int | None, drain: bool, tag: str = "") -> dict[str, Any]:
    """`gate-agent upload [--drain]` on a gate in venue mode: its pending rows go to the bus
    now (one batch, or all), for the leader to upload with the venue's budget — never straight
    to the platform beside it. A row handed over twice (the member round at the same time) is
    stored once: its uuid is the `Nats-Msg-Id`."""
    handed = 0
    while True:
        n = await hand_over(js, venue, device, journal, scanned_by, tag=tag)
        handed += n
        if not drain or n == 0:
            break
    counts = await asyncio.to_thread(journal.counts)
    return {"venue": True, "handed": handed, "sent": 0, "quarantined": 0, "requests": 0,
            "pending": counts["pending"], "quarantined_total": counts["quarantined"],
            "error": None, "auth": False}


async def backlog(js: Any, venue: str) -> tuple[int, float]:
    """Scans on the bus not yet at the platform, and how long the oldest has waited (s).
    The stream is a work queue: a message leaves it when the leader acks it after the
    platform's success, so its first message is the oldest undelivered scan. Its wait is
    measured on the bus server's clock alone (the time in the same stream-info answer, `ts`,
    against the time the server stored the message): the leader's own clock may be hours off
    (a controller without a real-time clock), which showed a scan seconds old as hours behind
    (`VenueUploadBacklog`). A server without `ts` (older than 2.10): this device's clock."""
    info = await stream_identity.raw_stream_info(js, stream_name(venue))
    state = info.get("state") or {}
    messages, first_seq = int(state.get("messages") or 0), int(state.get("first_seq") or 0)
    if not messages:
        return 0, 0.0
    oldest = await js.get_msg(stream_name(venue), seq=first_seq)
    if oldest.time is None:
        return messages, 0.0
    stamp = info.get("ts")
    try:
        now = datetime.fromisoformat(stamp).timestamp() if isinstance(stamp, str) else None
    except ValueError:
        now = None
    waited = (time.time() if now is None else now) - oldest.time.timestamp()
    return messages, max(0.0, waited)


class VenueUploader:
    """The leader's uploads (see the module docstring). Call `start()` on becoming leader.

    A stored batch is sent as one request, or — after a 422 naming rows — as the parts
    round one's `plan_refusal` makes of it: the refused rows are quarantined on the bus
    (agent.venue.quarantine) and each part gets its own request uuid. The parts still to send
    are written into the batch's KV entry (`pending`: request uuid -> rows) in one put before
    any is sent, so a new leader resends exactly those, under the same uuids. The batch's
    messages are acked once no part is pending. Answers that confirm nothing (success:false,
    202) are retried with back-off under the same uuid and quarantined after `max_tries`;
    request-wide failures (5xx, 429, transport) never split a batch and keep its uuid."""

    def __init__(self, js: Any, venue: str, client: PlatformClient, lease: Lease, *,
                 max_batch: int, ack_wait_s: float = 30.0,
                 status: UploadStatus | None = None, max_tries: int = MAX_TRIES,
                 split_budget: int = SPLIT_BUDGET, replicas: int = 1):
        """`status`: the device's upload status (kept across terms; shown as `upload`);
        `split_budget`: requests a round may spend on the parts of refused batches;
        `replicas`: of the quarantine bucket (the venue's)."""
        self.replicas = replicas
        self.status = status or UploadStatus()
        self.js = js
        self.venue = venue
        self.client = client
        self.lease = lease
        self.max_batch = max_batch
        self.ack_wait_s = ack_wait_s
        self.max_tries = max_tries
        self.split_budget = split_budget
        self.kv: Any = None
        self.quarantine: Any = None
        self.sub: Any = None
        self.acks_due: dict[str, str] = {}  # scan uuid -> stored batch awaiting its acks
        self.members: dict[str, set[str]] = {}  # stored batch -> scan uuids not acked yet
        self.rows: dict[str, list[dict[str, Any]]] = {}  # stored batch -> all its rows
        # stored batch -> its rows quarantined: scan uuid -> the quarantine bucket's creation
        # time then (`_expect`)
        self.isolated: dict[str, dict[str, str]] = {}
        self.quarantine_created = ""  # the quarantine bucket's creation time (start)
        self.undone: dict[str, dict[str, list[dict[str, Any]]]] = {}  # batch -> pending sends
        self.tries: dict[str, int] = {}  # request uuid -> unconfirmed answers so far
        self.held: dict[str, float] = {}  # request uuid -> not before (monotonic)
        self.fetched: dict[str, list[Any]] = {}  # batch -> its messages, acked once done
        self.counters = {"batches_sent": 0, "rows_sent": 0, "batches_resent": 0,
                         "redelivered_acked": 0, "send_failures": 0, "batches_split": 0,
                         "rows_quarantined": 0}
        self.last_error: str | None = None
        self.drift: dict[str, str] = {}  # buckets used with other settings (agent.venue.streams)
        self._budget: int | None = None  # requests left this round once a 422 came

    async def start(self, setup: SetUp | None = None) -> None:
        """A term's uploads set up; `setup` (the term's, agent.venue.leader_work) hears each
        step and each failed try of a bucket's create while JetStream does not answer it."""
        setup = setup or SetUp(log, "venue uploader")
        setup.at("making sure the batches bucket exists")
        self.kv = await streams.ensure_bucket(self.js, KeyValueConfig(
            bucket=batches_bucket(self.venue), history=1,
            storage=StorageType.FILE, ttl=86_400.0,
            replicas=self.replicas), self.drift,  # R3 in a cluster: a batch outlives one node
            waiting=setup.failed)
        setup.at("making sure the quarantine bucket exists")
        self.quarantine = await quarantine.quarantine_bucket(self.js, self.venue, self.replicas,
                                                             self.drift, setup.failed)
        self.quarantine_created = stream_identity.created_of(await self.js.stream_info(
            streams.kv_stream(quarantine.bucket_name(self.venue))))
        setup.at("subscribing to the upload stream")
        self.sub = await self.js.pull_subscribe(
            f"venueup.{self.venue}.>", durable=DURABLE, stream=stream_name(self.venue),
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait_s,
                                  max_ack_pending=-1))
        setup.at("loading the stored batches")
        await self._load_stored()

    async def _load_stored(self) -> None:
        """A new leader: every batch a previous one stored and did not finish (a batch missed
        here would go out again under a new request uuid; a bus error ends this term's start
        and the next round tries again)."""
        for key in await live_keys(self.kv):
            entry = await self.kv.get(key)
            body = orjson.loads(entry.value)
            self._expect(key, body["tickets"], body.get("quarantined") or {})
            self.tries.update(body.get("tries", {}))
            if not body.get("done"):
                self.undone[key] = body.get("pending") or {key: body["tickets"]}
        await self.retry_stored()

    def _expect(self, key: str, tickets: list[dict[str, Any]],
                quarantined: dict[str, str] | None = None) -> None:
        """A stored batch's rows: their messages are acked, not sent again — except the rows
        it quarantined into a quarantine bucket since lost (`quarantined`: scan uuid -> the
        bucket's creation time then, unlike the bucket's now): the gates hand their scans
        over again to fill the new bucket (agent.venue.lost_streams), and a copy of such a row is
        sent and refused again, into it. Acked here without sending, those rows were lost."""
        self.rows[key] = tickets
        self.isolated[key] = dict(quarantined or {})
        lost = {u for u, made in self.isolated[key].items() if made != self.quarantine_created}
        self.members[key] = {t["uuid"] for t in tickets} - lost
        for t in tickets:
            if t["uuid"] not in lost:
                self.acks_due[t["uuid"]] = key

    async def _save(self, key: str) -> None:
        """One put: the batch's rows, the sends still pending (none: done) and their tries."""
        pending = self.undone.get(key, {})
        await self.kv.put(key, orjson.dumps({
            "tickets": self.rows[key], "done": not pending, "pending": pending,
            "tries": {u: n for u, n in self.tries.items() if u in pending},
            "quarantined": self.isolated.get(key, {})}))

    async def _send(self, key: str, request: str, tickets: list[dict[str, Any]],
                    resend: bool = False) -> None:
        """Send one pending part of a stored batch under its request uuid. Request-wide
        errors propagate (the part stays stored and is resent under the same uuid)."""
        self.lease.guard()
        self.status.requests += 1
        if self._budget is not None:
            self._budget -= 1
        try:
            await self.client.upload_scans(request, tickets)
        except (Unauthenticated, Forbidden) as exc:
            self._failed(exc, "auth_failed")
            raise
        except Validation as exc:
            if exc.errors:
                await self._isolate(key, request, tickets, exc)
                return
            await self._undelivered(key, request, tickets, exc)
            return
        except NotDelivered as exc:
            await self._undelivered(key, request, tickets, exc)
            return
        except Exception as exc:
            self._failed(exc, "retrying")
            raise
        self.undone[key].pop(request, None)
        self.held.pop(request, None)
        self.tries.pop(request, None)
        await self._settled(key)
        self.last_error = None
        self.status.state, self.status.last_error = "ok", None
        self.status.last_success = time.time()
        self.status.sent_total += len(tickets)
        self.counters["batches_resent" if resend else "batches_sent"] += 1
        self.counters["rows_sent"] += len(tickets)

    def _failed(self, exc: Exception, state: str) -> None:
        self.counters["send_failures"] += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        self.status.state, self.status.last_error = state, self.last_error

    async def _settled(self, key: str) -> None:
        """Record what is still pending; a batch with nothing pending is done: ack its
        messages (quarantined rows included: the quarantine holds them now)."""
        await self._save(key)
        if self.undone.get(key):
            return
        self.undone.pop(key, None)
        for msg in self.fetched.pop(key, []):
            await msg.ack()
            self._acked(key, scan_uuid(msg))

    async def _quarantine(self, key: str, bad: list[tuple[dict[str, Any], str]]) -> None:
        await quarantine.put(self.quarantine, bad, key)
        self.isolated.setdefault(key, {}).update(
            (row["uuid"], self.quarantine_created) for row, _why in bad)
        self.counters["rows_quarantined"] += len(bad)
        self.status.quarantined_total += len(bad)
        log.warning("venue upload: quarantined %d scan(s): %s", len(bad), bad[0][1])

    async def _isolate(self, key: str, request: str, tickets: list[dict[str, Any]],
                       exc: Validation) -> None:
        """A part the platform refused as invalid (it recorded nothing of it): quarantine the
        rows it names, store the parts' new uuids in one put, send them while the round's
        split budget lasts (the rest goes out in later rounds under the stored uuids)."""
        if self._budget is None:
            self._budget = self.split_budget
        bad, parts = plan_refusal(tickets, exc)
        by_uuid = {t["uuid"]: t for t in tickets}
        if bad:  # first: a crash before the put below only repeats this (same keys)
            await self._quarantine(key, [(by_uuid[u], why) for u, why in bad])
        planned = {str(uuidlib.uuid4()): part for part in parts}
        pending = self.undone[key]
        pending.pop(request, None)
        pending.update(planned)
        self.counters["batches_split"] += 1
        await self._settled(key)
        for part_uuid, part in planned.items():
            if self._budget <= 0:
                break
            await self._send(key, part_uuid, part)

    async def _undelivered(self, key: str, request: str, tickets: list[dict[str, Any]],
                           exc: Exception) -> None:
        """An answer that confirms nothing: same uuid later, quarantined after `max_tries`."""
        tries = self.tries[request] = self.tries.get(request, 0) + 1
        if tries < self.max_tries:
            self.held[request] = time.monotonic() + hold_after(tries)
            await self._save(key)
            self._failed(exc, "retrying")
            raise exc
        why = f"{refusal_reason(exc) if isinstance(exc, ApiError) else exc} " \
              f"({tries} unconfirmed answers)"
        await self._quarantine(key, [(t, why) for t in tickets])
        self.undone[key].pop(request, None)
        self.held.pop(request, None)
        self.tries.pop(request, None)
        await self._settled(key)

    async def upload_round(self, fetch_timeout_s: float = 0.5, new_round: bool = True) -> int:
        """Fetch up to one batch of messages and upload the new ones. Returns rows settled
        (sent or quarantined). Stored parts not confirmed yet go first (same uuids, same rows).
        `new_round`: the split budget starts afresh (False: the same round goes on)."""
        if new_round:
            self._budget = None
        await self.retry_stored()
        for key, members in list(self.members.items()):
            if members or key in self.undone:
                continue
            del self.members[key]
            self.rows.pop(key, None)
            self.isolated.pop(key, None)
            await self.kv.delete(key)
        if self._budget is not None and self._budget <= 0:
            return 0  # this round spent what it may on refused batches
        try:
            msgs = await self.sub.fetch(self.max_batch, timeout=fetch_timeout_s)
        except Exception:  # noqa: BLE001 - nats TimeoutError: nothing waiting
            return 0
        fresh: list[Any] = []
        tickets: list[dict[str, Any]] = []
        for msg in msgs:
            uuid = scan_uuid(msg)
            stored = self.acks_due.get(uuid)
            if stored is not None:  # part of a batch stored already: only the ack is due
                if stored in self.undone:
                    continue  # not confirmed yet: acked once it is
                await msg.ack()
                self.counters["redelivered_acked"] += 1
                self._acked(stored, uuid)
                continue
            try:
                tickets.append(orjson.loads(msg.data))
            except orjson.JSONDecodeError:
                log.error("venue upload message %s unreadable: left on the bus", uuid)
                continue
            fresh.append(msg)
        if not fresh:
            return 0
        key = str(uuidlib.uuid4())
        self.lease.guard()
        self._expect(key, tickets)
        self.undone[key] = {key: tickets}
        self.fetched[key] = fresh
        await self._save(key)
        await self._send(key, key, tickets)
        return 0 if key in self.undone else len(tickets)

    def _acked(self, key: str, uuid: str) -> None:
        self.acks_due.pop(uuid, None)
        if key in self.members:
            self.members[key].discard(uuid)

    async def retry_stored(self) -> None:
        """Resend stored parts not confirmed (after a failed send, or a previous leader's),
        except those backing off after an unconfirmed answer."""
        now = time.monotonic()
        for key, pending in list(self.undone.items()):
            for request, tickets in list(pending.items()):
                if self.held.get(request, 0.0) > now:
                    continue
                if self._budget is not None and self._budget <= 0:
                    return
                await self._send(key, request, tickets, resend=True)

    async def lag(self) -> int:
        """Scans on the bus not yet delivered (waiting plus fetched and unacked)."""
        info = await self.js.consumer_info(stream_name(self.venue), DURABLE)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    def get_status(self) -> dict[str, Any]:
        return {"stored_batches": len(self.members), "last_error": self.last_error,
                **self.counters}


def scan_uuid(msg: Any) -> str:
    """A message's scan uuid: its Nats-Msg-Id, or for a requeued row the header naming it."""
    headers = msg.headers or {}
    return str(headers.get(quarantine.SCAN_HEADER) or headers.get(MSG_ID, ""))
