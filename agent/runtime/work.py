"""The store-changing work of the technician's commands, written once.

`gate-agent sync | upload | import | queue | check | scan | release --events | venue conflicts`
do this work themselves when no daemon runs, and ask
the running daemon to do it when one does (`agent.runtime.control`): both call these functions,
so the answer a technician sees — and the requests spent — are the same either way. Each takes
the already-open Syncer, Uploader, cache or journal of its caller and returns a plain dict that
travels over the control socket as JSON.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import Config
from agent.core.decide import Decision
from agent.errors import ApiError, Forbidden, Unauthenticated
from agent.platform.provision import import_text
from agent.store.cache import TicketCache
from agent.store.journal import Journal
from agent.store.passages import PassageLog
from agent.store.venue import VENUE_FILE, VenueStore

if TYPE_CHECKING:  # only the sync and upload passes use them, and their callers loaded them:
    # `queue`, `check` and `scan` without a daemon start without httpx and asyncio
    from agent.platform.client import PlatformClient
    from agent.platform.sync import Syncer
    from agent.platform.upload import Uploader

QUEUE_STATES = ("pending", "quarantined", "local")


def requests_used(client: PlatformClient) -> int:
    """Budgeted requests granted so far (governor grants; async polls are not counted)."""
    return sum(client.governor.granted.values())


def cached_events(config: Config, cache_path: Path, wanted: list[int] | None) -> list[dict]:
    """The cache's per-event status, limited to `wanted` (default: the configured events)."""
    cache = TicketCache(cache_path, keep_personal_data=config.store["keep_personal_data"])
    try:
        events = cache.get_status()["events"]
    finally:
        cache.close()
    ids = wanted if wanted else config.event_ids
    return [e for e in events if ids is None or e["id"] in ids]


async def sync_pass(syncer: Syncer, *, full: bool, event_ids: list[int] | None
                    ) -> dict[str, Any]:
    """`sync [--full] [--event ID...]`: a full rebuild swapped in (no --event), or events and
    zones refreshed and then a delta (or full listing) pass per event."""
    import asyncio

    before = requests_used(syncer.client)
    if full and not event_ids:
        applied = await syncer.full_resync()
    else:
        await syncer.refresh_events()
        applied = 0
        for event_id in event_ids or await syncer.event_ids():
            applied += await syncer.sync_tickets(event_id, full=full)
    events = await asyncio.to_thread(cached_events, syncer.config, syncer.cache_path, event_ids)
    return {"mode": "full" if full else "delta", "applied": applied,
            "requests": requests_used(syncer.client) - before, "events": events}


async def upload_pass(uploader: Uploader, *, drain: bool) -> dict[str, Any]:
    """`upload [--drain]`: one batch, or until the outbox is empty. A platform error stops the
    pass and is reported (`error`, `auth` when the token or company was refused); every
    unsent scan stays queued."""
    import asyncio

    sent, quarantined = uploader.status.sent_total, uploader.status.quarantined_total
    before = requests_used(uploader.client)
    error: ApiError | None = None
    try:
        if drain:
            await uploader.drain()
        else:
            await uploader.upload_once()
    except ApiError as exc:
        error = exc
    counts = await asyncio.to_thread(uploader.journal.counts)
    return {"sent": uploader.status.sent_total - sent,
            "quarantined": uploader.status.quarantined_total - quarantined,
            "requests": requests_used(uploader.client) - before, "pending": counts["pending"],
            "quarantined_total": counts["quarantined"],
            "error": str(error) if error else None,
            "auth": isinstance(error, Unauthenticated | Forbidden)}


def import_files(cache: TicketCache, files: list[tuple[str, str]], event_id: int | None
                 ) -> list[dict[str, Any]]:
    """`import FILE...`: each (name, text) applied in its own transaction, in order."""
    now = datetime.now(UTC)
    out = []
    for name, text in files:
        r = import_text(cache, name, text, now, event_id)
        out.append({"path": r.path, "kind": r.kind, "event_id": r.event_id, "count": r.count,
                    "skipped": r.skipped})
    return out


def queue_listing(journal: Journal, *, include_sent: bool, limit: int) -> dict[str, Any]:
    """`queue`: the counts, and the oldest `limit` scans of the listed states."""
    states = (*QUEUE_STATES, "sent") if include_sent else QUEUE_STATES
    rows = journal.rows(states, limit=limit + 1)
    return {"counts": journal.counts(), "scans": rows[:limit], "more": len(rows) > limit}


def lane_events(journal: Journal, limit: int = 100) -> list[dict[str, Any]]:
    """`release --events`: recent alarms and releases, newest first."""
    return PassageLog(journal).events(limit)


def venue_conflicts(store_dir: Path) -> list[dict[str, Any]]:
    """The venue store's conflicts, read-only (a command must not create the daemon's file);
    none when there is no file yet (the daemon has not met the bus)."""
    path = store_dir / VENUE_FILE
    if not path.exists():
        return []
    store = VenueStore(path, readonly=True)
    try:
        return store.conflicts()
    finally:
        store.close()


def answer(decision: Decision, uuid: str | None) -> dict[str, Any]:
    """A decision as `check`/`scan --json` print it, made here or by the daemon."""
    return {**decision.as_dict(), "uuid": uuid, "record": decision.record}
