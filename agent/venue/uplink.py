"""Upload once: every gate hands its scans to the bus, the leader uploads the venue's.

Gate side (`hand_over`): journal rows still pending are published as the exact ticket rows
`POST /entry/tickets` takes (agent.platform.upload.ticket_row) on `venueup.<venue>.<device>`
of the stream `VENUE_<name>_UPLOAD`, with `Nats-Msg-Id` = scan uuid (stored once however often
it is published), and marked sent in the journal only after the bus acknowledged them: from
then on they are the venue's to deliver (the stream is durable, replicated with 3 nodes).

Leader side (`VenueUploader`): one durable pull consumer (`uploader`, explicit acks,
work-queue retention: the stream is the venue's outbox). A batch of up to `max_batch` rows:
1. gets a request uuid and is written whole to the KV bucket `VENUE_<name>_BATCHES`
   (key = request uuid, value = the rows) *before* it is sent;
2. is sent (the lease is re-checked on the bus just before: agent.venue.budget);
3. after the platform's success, is marked done in KV, its messages are acked, the KV entry
   is deleted.
A new leader first resends every stored batch not marked done, under the same request uuid
and with the same rows (the platform answers a repeated request uuid with its first answer
and records nothing), and acks the redelivered messages of stored batches without sending
them again. So a scan reaches the platform in exactly one applied row, across leader changes
and crashes at any step; the only repeats are whole replays of one request uuid, which the
platform ignores (the tests count them).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid as uuidlib
from datetime import UTC, datetime
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
from agent.platform.client import PlatformClient
from agent.platform.upload import UploadStatus, ticket_row
from agent.store.journal import Journal
from agent.venue.lease import Lease

log = logging.getLogger("gate_agent.venue.uplink")

DURABLE = "uploader"
MSG_ID = "Nats-Msg-Id"


def stream_name(venue: str) -> str:
    return f"VENUE_{venue.replace('-', '_')}_UPLOAD"


def subject(venue: str, device: str) -> str:
    return f"venueup.{venue}.{device}"


async def ensure_upload_stream(js: Any, venue: str, replicas: int) -> None:
    await js.add_stream(StreamConfig(
        name=stream_name(venue), subjects=[f"venueup.{venue}.>"], storage=StorageType.FILE,
        num_replicas=replicas, retention=RetentionPolicy.WORK_QUEUE, duplicate_window=600.0))


async def hand_over(js: Any, venue: str, device: str, journal: Journal,
                    scanned_by: int | None, limit: int = 500) -> int:
    """Publish this gate's pending rows; mark them sent once the bus has them all."""
    rows = await asyncio.to_thread(journal.pending, limit)
    if not rows:
        return 0
    subj = subject(venue, device)
    await asyncio.gather(*(js.publish(subj, orjson.dumps(ticket_row(r, scanned_by)),
                                      headers={MSG_ID: r["uuid"]}) for r in rows))
    await asyncio.to_thread(journal.mark_sent, [r["uuid"] for r in rows],
                            utc_iso(datetime.now(UTC)))
    return len(rows)


class VenueUploader:
    """The leader's uploads (see the module docstring). Call `start()` on becoming leader."""

    def __init__(self, js: Any, venue: str, client: PlatformClient, lease: Lease, *,
                 max_batch: int, ack_wait_s: float = 30.0,
                 status: UploadStatus | None = None):
        """`status`: the device's upload status (kept across terms; shown as `upload`)."""
        self.status = status or UploadStatus()
        self.js = js
        self.venue = venue
        self.client = client
        self.lease = lease
        self.max_batch = max_batch
        self.ack_wait_s = ack_wait_s
        self.kv: Any = None
        self.sub: Any = None
        self.acks_due: dict[str, str] = {}  # scan uuid -> stored batch awaiting its acks
        self.members: dict[str, set[str]] = {}  # stored batch -> scan uuids not acked yet
        self.undone: dict[str, list[dict[str, Any]]] = {}  # stored, not confirmed: its rows
        self.counters = {"batches_sent": 0, "rows_sent": 0, "batches_resent": 0,
                         "redelivered_acked": 0, "send_failures": 0}
        self.last_error: str | None = None

    async def start(self) -> None:
        self.kv = await self.js.create_key_value(KeyValueConfig(
            bucket=f"VENUE_{self.venue.replace('-', '_')}_BATCHES", history=1,
            storage=StorageType.FILE, ttl=86_400.0,
            replicas=1))
        self.sub = await self.js.pull_subscribe(
            f"venueup.{self.venue}.>", durable=DURABLE, stream=stream_name(self.venue),
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait_s,
                                  max_ack_pending=-1))
        await self._load_stored()

    async def _load_stored(self) -> None:
        """A new leader: every batch a previous one stored and did not finish."""
        try:
            keys = await self.kv.keys()
        except Exception:  # noqa: BLE001 - NoKeysError: nothing stored
            keys = []
        for key in keys:
            entry = await self.kv.get(key)
            body = orjson.loads(entry.value)
            self._expect(key, [t["uuid"] for t in body["tickets"]])
            if not body.get("done"):
                self.undone[key] = body["tickets"]
        await self.retry_stored()

    def _expect(self, key: str, uuids: list[str]) -> None:
        self.members[key] = set(uuids)
        for u in uuids:
            self.acks_due[u] = key

    async def _send(self, key: str, tickets: list[dict[str, Any]], resend: bool = False) -> None:
        """Send one stored batch; mark it done in KV after the platform's success. Errors
        propagate (the batch stays stored and is resent under the same uuid)."""
        self.lease.guard()
        self.undone[key] = tickets
        self.status.requests += 1
        try:
            await self.client.upload_scans(key, tickets)
        except Exception as exc:
            self.counters["send_failures"] += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            self.status.state, self.status.last_error = "retrying", self.last_error
            raise
        await self.kv.put(key, orjson.dumps({"tickets": tickets, "done": True}))
        del self.undone[key]
        self.last_error = None
        self.status.state, self.status.last_error = "ok", None
        self.status.last_success = time.time()
        self.status.sent_total += len(tickets)
        self.counters["batches_resent" if resend else "batches_sent"] += 1
        self.counters["rows_sent"] += len(tickets)

    async def upload_round(self, fetch_timeout_s: float = 0.5) -> int:
        """Fetch up to one batch of messages and upload the new ones. Returns rows sent.
        A stored batch not confirmed yet goes first (same uuid, same rows)."""
        await self.retry_stored()
        for key, members in list(self.members.items()):
            if members:
                continue
            del self.members[key]
            await self.kv.delete(key)
        try:
            msgs = await self.sub.fetch(self.max_batch, timeout=fetch_timeout_s)
        except Exception:  # noqa: BLE001 - nats TimeoutError: nothing waiting
            return 0
        fresh: list[Any] = []
        tickets: list[dict[str, Any]] = []
        for msg in msgs:
            uuid = (msg.headers or {}).get(MSG_ID, "")
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
        await self.kv.put(key, orjson.dumps({"tickets": tickets, "done": False}))
        self._expect(key, [(m.headers or {}).get(MSG_ID, "") for m in fresh])
        await self._send(key, tickets)
        for msg in fresh:
            await msg.ack()
            self._acked(key, (msg.headers or {}).get(MSG_ID, ""))
        return len(tickets)

    def _acked(self, key: str, uuid: str) -> None:
        self.acks_due.pop(uuid, None)
        if key in self.members:
            self.members[key].discard(uuid)

    async def retry_stored(self) -> None:
        """Resend stored batches not confirmed (after a failed send, or a previous leader's)."""
        for key, tickets in list(self.undone.items()):
            await self._send(key, tickets, resend=True)

    async def lag(self) -> int:
        """Scans on the bus not yet delivered (waiting plus fetched and unacked)."""
        info = await self.js.consumer_info(stream_name(self.venue), DURABLE)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    def get_status(self) -> dict[str, Any]:
        return {"stored_batches": len(self.members), "last_error": self.last_error,
                **self.counters}
