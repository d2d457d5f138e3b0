"""The leader's share of the company's request budget, and its fence before each request.

The platform allows `api.requests_per_minute` per company. In venue mode the leader spends it
for the whole venue, minus `venue.platform_reserve` requests a minute left to the devices that
still call the platform themselves (the NFC pairing station, the platform's own scanning app,
a gate in fallback). The leader's `Governor` is built for that share.

Before every platform request (`PlatformClient.before_send`), `LeaderFence.check()`:
1. renews the lease with its revision (`kv.update(..., last=revision)`): the *server* says
   whether this device still leads at that moment — a paused or partitioned old leader whose
   lease was taken over fails here and sends nothing;
2. appends the send's time to the venue's request log (a KV key, last window only).
A new leader reads that log and counts the old leader's recent requests against its own
governor (`Governor.assume_sent`), each as finished at the latest possible moment (sent +
the request timeout), so a failover never makes the company exceed its limit (never a 429).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from nats.js.api import KeyValueConfig, StorageType

from agent.platform.governor import Governor
from agent.venue import streams
from agent.venue.lease import Lease, NotLeader

LOG_KEY = "requests"


def bucket_name(venue: str) -> str:
    return f"VENUE_{venue.replace('-', '_')}_BUDGET"


async def budget_bucket(js: Any, venue: str, replicas: int,
                        drift: dict[str, str] | None = None) -> Any:
    return await streams.ensure_bucket(js, KeyValueConfig(
        bucket=bucket_name(venue), history=1, storage=StorageType.FILE, replicas=replicas),
        drift)


def leader_share(api: dict[str, Any], reserve: int) -> float:
    """The part of the company's budget the leader may use (`Governor`'s budget_share)."""
    rpm = api["requests_per_minute"]
    return max(1, rpm - reserve) / rpm


def leader_governor(api: dict[str, Any], reserve: int) -> Governor:
    return Governor(api["requests_per_minute"], leader_share(api, reserve),
                    api["upload_reserve"])


class LeaderFence:
    """`check()` before each request; `seed(governor)` when this device becomes leader."""

    def __init__(self, kv: Any, lease: Lease, window_s: float = 60.0,
                 request_timeout_s: float = 30.0):
        self.kv = kv
        self.lease = lease
        self.window_s = window_s
        self.request_timeout_s = request_timeout_s
        self.sent: list[float] = []  # wall-clock send times, last window
        self.refused = 0

    async def check(self) -> None:
        """Raise NotLeader unless the bus confirms the lease now; then log the send."""
        if not self.lease.valid() or not await self.lease.renew():
            self.refused += 1
            raise NotLeader(f"{self.lease.holder} is not the venue leader: request not sent")
        now = time.time()
        self.sent = [t for t in self.sent if t > now - self.window_s - self.request_timeout_s]
        self.sent.append(now)
        await self.kv.put(LOG_KEY, orjson.dumps({"holder": self.lease.holder, "sent": self.sent}))

    async def seed(self, governor: Governor) -> int:
        """Count the previous leaders' recent requests in `governor`. Returns how many."""
        try:
            entry = await self.kv.get(LOG_KEY)
            sent = [float(t) for t in orjson.loads(entry.value or b"{}").get("sent", [])]
        except Exception:  # noqa: BLE001 - no log yet: nobody spent anything
            return 0
        now = time.time()
        recent = [t for t in sent if t > now - self.window_s - self.request_timeout_s]
        governor.assume_sent([max(0.0, now - (t + self.request_timeout_s)) for t in recent])
        self.sent = recent
        return len(recent)


async def venue_requests(kv: Any, now: float, window_s: float = 60.0) -> int | None:
    """Requests the venue's leaders made in the last window, from the log (None: unknown)."""
    try:
        entry = await kv.get(LOG_KEY)
        sent = [float(t) for t in orjson.loads(entry.value or b"{}").get("sent", [])]
    except Exception:  # noqa: BLE001 - no log yet, or the bus is away
        return None
    return requests_per_minute(sent, now, window_s)


def requests_per_minute(sent: list[float], now: float, window_s: float = 60.0) -> int:
    """Requests in the last window (status: the budget in use)."""
    return sum(1 for t in sent if now - window_s < t <= now)


