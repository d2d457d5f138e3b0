"""Replaying the journal to the platform: every scan exactly once, in scan order, never dropped.

Exactly once rests on the platform's two idempotency keys (`POST /entry/tickets`):
- each ticket row carries the scan's own uuid, fixed at decision time: the platform skips a
  scan uuid it has seen;
- each request carries a batch uuid, fixed (and committed to the journal) *before* the first
  send and reused on every retry of that batch, even after a crash: a repeat returns the
  earlier answer and scans nothing. Because of that, a batch's membership never changes once
  its uuid is set — a retry after a crash resends exactly the same rows.

Rows become `sent` only after a 2xx. 429/5xx/timeouts: the same batch is retried later (the
governor honours the rate headers). 401/403: uploading pauses, everything is kept, status
raises an alarm. 422/404: the batch is split to isolate the offending rows (by the platform's
`tickets.N.field` errors when it names them, else by halving); only those rows are quarantined,
with the platform's words, for a technician to see (`gate-agent queue`) and retry.
"""

from __future__ import annotations

import logging
import re
import time
import uuid as uuidlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.core.codes import epoch_iso, format_upload_time, parse_utc_iso, utc_iso
from agent.errors import ApiError, Forbidden, NotFound, Unauthenticated, Validation
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


class Uploader:
    """Drains the journal's outbox through the platform client."""

    def __init__(self, journal: Journal, client: PlatformClient, *, batch_size: int,
                 scanned_by: int | None = None, retention_days: int = 7):
        self.journal = journal
        self.client = client
        self.batch_size = batch_size
        self.scanned_by = scanned_by
        self.retention_days = retention_days
        self.status = UploadStatus()

    async def upload_once(self) -> int:
        """Send one batch (the unfinished one first). Returns rows settled (sent or quarantined).

        Raises the ApiError of a failure that should stop this round (rate limit, server, auth).
        """
        rows = await in_thread(self._next_batch)
        if not rows:
            return 0
        return await self._send(rows, rows[0]["batch_uuid"])

    def _next_batch(self) -> list[dict[str, Any]]:
        """The oldest pending rows: an already-numbered batch as it was, else a new one."""
        head = self.journal.pending(1)
        if not head:
            return []
        if head[0]["batch_uuid"]:
            return self.journal.batch(head[0]["batch_uuid"])
        rows = [r for r in self.journal.pending(self.batch_size) if not r["batch_uuid"]]
        batch_uuid = str(uuidlib.uuid4())
        self.journal.assign_batch([r["uuid"] for r in rows], batch_uuid)
        return [{**r, "batch_uuid": batch_uuid} for r in rows]

    async def _send(self, rows: list[dict[str, Any]], batch_uuid: str) -> int:
        tickets = [ticket_row(r, self.scanned_by) for r in rows]
        self.status.requests += 1
        try:
            await self.client.upload_scans(batch_uuid, tickets)
        except (Unauthenticated, Forbidden) as exc:
            self.status.state, self.status.last_error = "auth_failed", str(exc)
            log.error("upload paused: %s", exc)
            raise
        except (Validation, NotFound) as exc:
            return await self._isolate(rows, exc)
        except ApiError as exc:
            self.status.state, self.status.last_error = "retrying", str(exc)
            raise
        uuids = [r["uuid"] for r in rows]
        await in_thread(self.journal.mark_sent, uuids, utc_iso(datetime.now(UTC)))
        self.status.state, self.status.last_error = "ok", None
        self.status.last_success = time.time()
        self.status.sent_total += len(rows)
        return len(rows)

    async def _isolate(self, rows: list[dict[str, Any]], exc: ApiError) -> int:
        """A batch the platform refused as invalid: quarantine the bad rows, resend the rest.

        The platform records nothing of a refused batch. The rows it names (`tickets.N.*`) are
        quarantined with its words; without names the batch is halved. Quarantines and the new
        request uuid of every part are committed together *before* any part is sent, so a
        crash or an error mid-way never leaves rows under a uuid whose membership changed.
        """
        reason = _reason(exc)
        named = _named_rows(exc, len(rows))
        bad: list[tuple[str, str]] = []
        if named or len(rows) == 1:
            picked = named or [0]
            bad = [(rows[i]["uuid"], _row_reason(exc, i, reason)) for i in picked]
            gone = {u for u, _ in bad}
            rest = [r for r in rows if r["uuid"] not in gone]
            parts = [rest] if rest else []
        else:
            half = len(rows) // 2
            parts = [rows[:half], rows[half:]]
        planned = [(str(uuidlib.uuid4()), part) for part in parts]
        await in_thread(self.journal.regroup, bad,
                                [(u, [r["uuid"] for r in part]) for u, part in planned])
        if bad:
            self.status.quarantined_total += len(bad)
            log.warning("quarantined %d scan(s): %s", len(bad), reason)
        settled = len(bad)
        for batch_uuid, part in planned:
            settled += await self._send(part, batch_uuid)
        return settled

    async def upload_round(self) -> int:
        """What the scheduled job sends: the scans pending when the round starts, in as few
        requests as possible (full batches, the last one topped up with what arrived since).

        Draining "until nothing is pending" on a busy gate would chase each new scan with a
        one-row request and spend the company's rate budget on them (the soak bench saw uploads
        stall for a whole rate window that way); newcomers wait for the next round, or for a
        full batch, which brings the round forward."""
        target = await in_thread(self.journal.pending_count)
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


def _reason(exc: ApiError) -> str:
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
