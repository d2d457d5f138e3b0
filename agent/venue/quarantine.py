"""The venue's quarantine: scans the platform refused, kept on the bus, visible and retryable.

The leader quarantines a row when the platform's 422 names it as invalid (or after
`MAX_TRIES` unconfirmed answers, as round one's uploader does): one poison row must not block
the venue's uploads. A quarantined row is never dropped and never counted as delivered: it is
stored whole (the exact ticket row) in the KV bucket `VENUE_<name>_QUARANTINE`, key = scan
uuid, with the platform's words. `gate-agent venue quarantine` lists them from any device;
`--requeue` publishes them to the upload stream again (once the data or the platform is
fixed), where the leader sends them as new scans (the scan uuid keeps the platform exactly
once).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
from nats.js.api import KeyValueConfig, StorageType

from agent.core.codes import utc_iso
from agent.venue import streams
from agent.venue.kvkeys import live_keys

SCAN_HEADER = "Gate-Scan-Uuid"  # a requeued row's scan uuid (its Nats-Msg-Id is new)


def bucket_name(venue: str) -> str:
    return f"VENUE_{venue.replace('-', '_')}_QUARANTINE"


async def quarantine_bucket(js: Any, venue: str, replicas: int = 1,
                            drift: dict[str, str] | None = None,
                            waiting: streams.Waiting | None = None) -> Any:
    """Create (or open) the bucket: the venue's devices, with the venue's replica count."""
    return await streams.ensure_bucket(js, KeyValueConfig(
        bucket=bucket_name(venue), history=1, storage=StorageType.FILE, replicas=replicas),
        drift, waiting=waiting)


async def existing_bucket(js: Any, venue: str) -> Any:
    """The bucket if a device of the venue made it, else None. The CLI never creates it: a
    bucket made with another replica count would make the devices' creation fail."""
    try:
        return await js.key_value(bucket_name(venue))
    except Exception:  # noqa: BLE001 - BucketNotFoundError: nothing was ever quarantined
        return None


async def put(kv: Any, rows: list[tuple[dict[str, Any], str]], batch: str) -> None:
    """Quarantine `(ticket row, reason)` pairs (idempotent: a key per scan uuid)."""
    at = utc_iso(datetime.now(UTC))
    for row, reason in rows:
        await kv.put(row["uuid"], orjson.dumps(
            {"row": row, "reason": reason, "at": at, "batch": batch}))


async def count(kv: Any) -> int:
    """How many rows are quarantined (keys only: cheap enough for every status refresh). A bus
    error is raised, never reported as "none quarantined"."""
    return len(await live_keys(kv, attempts=1))


async def listing(kv: Any) -> list[dict[str, Any]]:
    """Every quarantined row: `{"row", "reason", "at", "batch"}`, oldest first."""
    keys = await live_keys(kv)
    out = []
    for key in keys:
        try:
            entry = await kv.get(key)
        except Exception:  # noqa: BLE001 - deleted meanwhile (requeued elsewhere)
            continue
        if entry.value:
            out.append(orjson.loads(entry.value))
    return sorted(out, key=lambda e: e["at"])


async def requeue(js: Any, kv: Any, venue: str) -> int:
    """Publish every quarantined row to the upload stream again, then forget it. Returns the
    rows requeued. A row is deleted only after the bus acknowledged it (nothing is lost)."""
    stamp = f"{time.time():.6f}"
    done = 0
    for entry in await listing(kv):
        row = entry["row"]
        await js.publish(f"venueup.{venue}.requeue", orjson.dumps(row),
                         headers={"Nats-Msg-Id": f"requeue-{stamp}-{row['uuid']}",
                                  SCAN_HEADER: row["uuid"]})
        await kv.delete(row["uuid"])
        done += 1
    return done
