"""The keys of a JetStream KV bucket, read so that "none" is never a guess.

nats-py's `KeyValue.keys()` can answer "no keys" (NoKeysError) for a bucket that has some: its
watcher may see the consumer's pending count at 0 before it has received the messages already
on their way (seen under load in CI: a requeue found 0 of 5 quarantined rows). Whoever must
not miss a key — the quarantine's listing and requeue, a new leader's stored batches, whose
request uuids must be reused — believes "none" only when it comes three times, a moment apart.
Any other error is the bus's and is raised: never read as an empty bucket.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.js.errors import NoKeysError

CONFIRM_PAUSE_S = 0.05
CONFIRM_READS = 3  # "none" is believed when read this many times (here and heartbeat.read_board)


async def live_keys(kv: Any, attempts: int = CONFIRM_READS) -> list[str]:
    """The bucket's keys; `attempts` = 1 where a momentary "none" only shows in a status
    figure that the next refresh corrects."""
    for attempt in range(attempts):
        try:
            return list(await kv.keys())
        except NoKeysError:
            if attempt < attempts - 1:
                await asyncio.sleep(CONFIRM_PAUSE_S)
    return []


async def keys_under(js: Any, bucket: str, prefix: str) -> list[str]:
    """The keys of `bucket` that start with `prefix` (ending in "."), from one STREAM.INFO
    request with a subjects filter: bounded by the JetStream API timeout, and without the
    ordered consumer `keys()` makes for every call (and its early "no keys" above) on a
    bucket that changes several times a second (the lease bucket). A deleted key whose marker
    is still stored is listed too: read each key to know."""
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.{prefix}>")
    head = f"$KV.{bucket}."
    return sorted(subject[len(head):] for subject in info.state.subjects or {})
