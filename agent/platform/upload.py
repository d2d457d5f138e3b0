"""Replaying the journal to the platform: every scan exactly once, in scan order, never dropped.

Exactly once rests on the platform's two idempotency keys (`POST /entry/tickets`):
- each ticket row carries the scan's own uuid, fixed at decision time: the platform skips a
  scan uuid it has seen;
- each request carries a batch uuid, fixed (and committed to the journal) *before* the first
  send and reused on every retry of that batch, even after a crash: a repeat returns the
  earlier answer and scans nothing. Because of that, a batch's membership never changes once
  its uuid is set — a retry after a crash resends exactly the same rows.

Rows become `sent` only after an answer that says so: HTTP 200/201 with `{"success": true}`.
`success: false` and a 202 to a synchronous request deliver nothing: the rows stay pending
under the same request uuid and are retried with back-off; after `max_tries` such answers
they are quarantined with the platform's words (never dropped). Request-wide failures — 404
(a misrouting proxy, a wrong base URL), 5xx, timeouts, 429 — say nothing about the rows: the
same batch is retried later, never split. 401/403: uploading pauses, everything is kept,
status raises an alarm. Only a 422 whose errors name rows or fields is about the data: the
rows it names (`tickets.N.*`) are quarantined and the rest resent; errors naming no row halve
the batch. A split spends at most `split_budget` requests per round; the parts left are
already committed under their own uuids and go out in later rounds.

Two uploaders on one journal (the daemon and `gate-agent upload`) claim batches in one write
transaction with a guarded update (`Journal.claim_batch`), and a split only regroups rows
still pending in the batch it split (`Journal.regroup`), so the same rows never go out under
two request uuids.
"""

from __future__ import annotations

import logging
import re
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.core.codes import epoch_iso, format_upload_time, parse_utc_iso, utc_iso
from agent.errors import (
    ApiError,
    Forbidden,
    NotDelivered,
    StoreError,
    Unauthenticated,
    Validation,
)
from agent.platform.client import PlatformClient
from agent.platform.workers import in_thread
from agent.store.journal import Journal

log = logging.getLogger(__name__)

_ROW_INDEX = re.compile(r"^tickets\.(\d+)\.")


@dataclass
class UploadStatus:
    state: str = "ok"  # ok | retrying | auth_failed
    last_success: float | None = None
    last_error: str | None = None
    sent_total: int = 0
    quarantined_total: int = 0
    requests: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "last_success": epoch_iso(self.last_success)}


def ticket_row(row: dict[str, Any], scanned_by: int | None = None) -> dict[str, Any]:
    """One journal row as a `POST /entry/tickets` ticket.

    The published schema types `scannedBy` and `admittedThroughGateId` as integers (not
    nullable): each is sent only when known (`api.scanned_by`, the lane's `gate_id`), since a
    null or a device name could fail a whole batch with 422."""
    refused = not row["admit"]
    detail = None
    if refused:
        words = row["status"] + (f"/{row['status_detail']}" if row["status_detail"] else "")
        detail = f"{words}: {row['message']}"[:255]
    ticket: dict[str, Any] = {
        "uuid": row["uuid"],
        "barcode": row["barcode"],
        "eventId": row["event_id"],
        "zoneId": None if row["zone_is_default"] else row["zone_id"],
        "latitude": None,
        "longitude": None,
        "secure": False,
        "scannedOn": format_upload_time(parse_utc_iso(row["scanned_on"])),
        "status": "failed" if refused else "scanned",
        "statusDetail": detail,
        "scan": row["direction"],
    }
    if row["gate_id"] is not None:
        ticket["admittedThroughGateId"] = row["gate_id"]
    if scanned_by:
        ticket["scannedBy"] = scanned_by
    return ticket


MAX_TRIES = 5  # unconfirmed answers (success:false, 202) before a batch is quarantined
SPLIT_BUDGET = 16  # requests a round may spend after a 422, isolating the rows it is about
HOLD_S = (10.0, 300.0)  # back-off after an unconfirmed answer: first wait, cap


class Uploader:
    """Drains the journal's outbox through the platform client."""

    def __init__(self, journal: Journal, client: PlatformClient, *, batch_size: int,
                 scanned_by: int | None = None, retention_days: int = 7,
                 max_tries: int = MAX_TRIES, split_budget: int = SPLIT_BUDGET,
                 clock: Callable[[], float] = time.monotonic):
        self.journal = journal
        self.client = client
        self.batch_size = batch_size
        self.scanned_by = scanned_by
        self.retention_days = retention_days
        self.max_tries = max_tries
        self.split_budget = split_budget
        self.clock = clock
        self.status = UploadStatus()
        self._held: dict[str, float] = {}  # batch uuid -> not before (after an unconfirmed try)
        self._budget: int | None = None  # requests left in this round once a 422 came

    async def upload_once(self) -> int:
        """Send one batch (the unfinished one first). Returns rows settled (sent or quarantined).

        Raises the ApiError of a failure that should stop this round (rate limit, server, auth,
        an unconfirmed answer).
        """
        rows = await in_thread(self.journal.claim_batch, self.batch_size,
                               str(uuidlib.uuid4()))
        if not rows:
            return 0
        batch_uuid = rows[0]["batch_uuid"]
        if self._held.get(batch_uuid, 0.0) > self.clock():
            return 0  # backing off after an unconfirmed answer; the next round tries again
        if self._budget is not None and self._budget <= 0:
            return 0  # this round has spent what it may on isolating refused rows
        return await self._send(rows, batch_uuid)

    async def _send(self, rows: list[dict[str, Any]], batch_uuid: str) -> int:
        tickets = [ticket_row(r, self.scanned_by) for r in rows]
        self.status.requests += 1
        if self._budget is not None:
            self._budget -= 1
        try:
            await self.client.upload_scans(batch_uuid, tickets)
        except (Unauthenticated, Forbidden) as exc:
            self.status.state, self.status.last_error = "auth_failed", str(exc)
            log.error("upload paused: %s", exc)
            raise
        except Validation as exc:
            if exc.errors:
                return await self._isolate(rows, batch_uuid, exc)
            return await self._undelivered(rows, batch_uuid, exc)
        except NotDelivered as exc:
            return await self._undelivered(rows, batch_uuid, exc)
        except ApiError as exc:  # request-wide: 404, 429, 5xx, transport, unreadable answer
            self.status.state, self.status.last_error = "retrying", str(exc)
            raise
        self._held.pop(batch_uuid, None)
        uuids = [r["uuid"] for r in rows]
        marked = await in_thread(self.journal.mark_sent, uuids, utc_iso(datetime.now(UTC)))
        if marked < len(rows):
            await self._check_settled(batch_uuid, len(rows))
        self.status.state, self.status.last_error = "ok", None
        self.status.last_success = time.time()
        self.status.sent_total += marked
        return len(rows)

    async def _check_settled(self, batch_uuid: str, sent: int) -> None:
        """After a delivered batch whose rows were not all marked by this uploader: another
        uploader on the journal marking them first is fine; rows still pending under this
        uuid mean the journal did not take the answer, and sending again would repeat this
        round forever (`drain` loops while rounds return rows). Stop with an error instead."""
        left = await in_thread(self.journal.batch, batch_uuid)
        if left:
            self.status.state = "retrying"
            self.status.last_error = (f"the platform took batch {batch_uuid} ({sent} scans) but"
                                      f" the journal still holds {len(left)} of them as pending")
            log.error("upload stopped: %s", self.status.last_error)
            raise StoreError(self.status.last_error)

    async def _undelivered(self, rows: list[dict[str, Any]], batch_uuid: str,
                           exc: ApiError) -> int:
        """An answer that confirms nothing about the rows: count the try, keep them pending
        with the same uuid and back off; quarantine them after `max_tries`."""
        reason = refusal_reason(exc)
        gone = await in_thread(self.journal.note_undelivered, batch_uuid, reason,
                                       self.max_tries)
        if gone:
            self._held.pop(batch_uuid, None)
            self.status.quarantined_total += gone
            log.warning("quarantined %d scan(s) after %d unconfirmed answers: %s", gone,
                        self.max_tries, reason)
            return gone
        tries = int(rows[0]["attempts"]) + 1
        self._held[batch_uuid] = self.clock() + hold_after(tries)
        self.status.state, self.status.last_error = "retrying", str(exc)
        raise exc

    async def _isolate(self, rows: list[dict[str, Any]], batch_uuid: str,
                       exc: Validation) -> int:
        """A batch the platform refused as invalid: quarantine the bad rows, resend the rest.

        The platform records nothing of a refused batch. The rows it names (`tickets.N.*`) are
        quarantined with its words; without names the batch is halved. Quarantines and the new
        request uuid of every part are committed together *before* any part is sent, so a
        crash or an error mid-way never leaves rows under a uuid whose membership changed.
        Parts beyond the round's split budget wait for the next round under their uuids.
        """
        if self._budget is None:
            self._budget = self.split_budget
        reason = refusal_reason(exc)
        bad, parts = plan_refusal(rows, exc)
        planned = [(str(uuidlib.uuid4()), part) for part in parts]
        regrouped = await in_thread(
            self.journal.regroup, batch_uuid, bad,
            [(u, [r["uuid"] for r in part]) for u, part in planned])
        if not regrouped:
            return 0  # another uploader settled this batch first
        if bad:
            self.status.quarantined_total += len(bad)
            log.warning("quarantined %d scan(s): %s", len(bad), reason)
        settled = len(bad)
        for part_uuid, part in planned:
            if self._budget <= 0:
                break  # the rest goes out in later rounds, under the uuids fixed above
            settled += await self._send(part, part_uuid)
        return settled

    async def upload_round(self) -> int:
        """What the scheduled job sends: the scans pending when the round starts, in as few
        requests as possible (full batches, the last one topped up with what arrived since).

        Draining "until nothing is pending" on a busy gate would chase each new scan with a
        one-row request and spend the company's rate budget on them (the soak bench saw uploads
        stall for a whole rate window that way); newcomers wait for the next round, or for a
        full batch, which brings the round forward."""
        target = await in_thread(self.journal.pending_count)
        self._budget = None
        total = 0
        while total < target:
            done = await self.upload_once()
            if not done:
                break
            total += done
        return total

    async def drain(self, max_rounds: int = 1_000_000) -> int:
        """Upload until nothing is pending. Errors propagate (the caller decides how to wait)."""
        total = 0
        self._budget = None
        for _ in range(max_rounds):
            done = await self.upload_once()
            if not done:
                break
            total += done
        return total

    def prune(self, now: datetime) -> int:
        cutoff = utc_iso(now - timedelta(days=self.retention_days))
        return self.journal.prune_sent(cutoff)

    def get_status(self) -> dict[str, Any]:
        return {**self.status.as_dict(), **self.journal.counts()}


def plan_refusal(rows: list[dict[str, Any]], exc: Validation
                 ) -> tuple[list[tuple[str, str]], list[list[dict[str, Any]]]]:
    """What to do with a batch the platform refused with a 422 naming rows or fields: the
    rows to quarantine (scan uuid, the platform's words about that row) and the parts to
    resend. Named rows (`tickets.N.*`) are quarantined and the rest is one part; without
    names the batch is halved (a lone row is quarantined). Shared by the device's uploader
    and the venue leader's (agent.venue.uplink): rows only need a `uuid`."""
    reason = refusal_reason(exc)
    named = _named_rows(exc, len(rows))
    if named or len(rows) == 1:
        picked = named or [0]
        bad = [(rows[i]["uuid"], _row_reason(exc, i, reason)) for i in picked]
        gone = {u for u, _ in bad}
        rest = [r for r in rows if r["uuid"] not in gone]
        return bad, [rest] if rest else []
    half = len(rows) // 2
    return [], [rows[:half], rows[half:]]


def hold_after(tries: int) -> float:
    """Seconds to wait after the `tries`-th unconfirmed answer (success:false, 202)."""
    return min(HOLD_S[1], HOLD_S[0] * 2 ** (tries - 1))


def refusal_reason(exc: ApiError) -> str:
    text = str(exc)
    if isinstance(exc, Validation) and exc.errors:
        fields = "; ".join(f"{k}: {' '.join(v)}" for k, v in list(exc.errors.items())[:5])
        text = f"{text} ({fields})"
    return text[:1000]


def _named_rows(exc: ApiError, size: int) -> list[int]:
    """Row indexes named by Laravel field errors like `tickets.3.barcode`."""
    if not isinstance(exc, Validation):
        return []
    found = sorted({int(m.group(1)) for key in exc.errors
                    if (m := _ROW_INDEX.match(key)) and int(m.group(1)) < size})
    return found


def _row_reason(exc: ApiError, index: int, fallback: str) -> str:
    if isinstance(exc, Validation):
        mine = [f"{k}: {' '.join(v)}" for k, v in exc.errors.items()
                if k.startswith(f"tickets.{index}.")]
        if mine:
            return f"{exc.status} {'; '.join(mine)}"
    return fallback
