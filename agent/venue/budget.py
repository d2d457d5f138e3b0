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

The log is only as good as its bucket. A budget bucket deleted (`nats kv rm`, a node's data
wiped) and made again empty says "nobody spent anything" while the requests of the last
minute still count at the platform. So a gate that finds it made again
(agent.venue.lost_streams: its creation time against the one venue.db recorded, or the
session's watch) takes the venue's whole company budget as spent at that moment until one
window and one request timeout have passed (`seed(..., lost_ago_s=...)`): a leader set up
meanwhile waits, never overspends (fail closed: no request rather than a 429 for every device
of the company).
A gate whose venue.db has no record of the bucket (new, or venue.db deleted) has nothing to
compare: it does the same when the bucket, by the server's clock, was made within that window
and after the venue's other streams (`unrecorded_loss_age`).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from nats.js.api import KeyValueConfig, StorageType

from agent.platform.governor import Governor
from agent.venue import stream_identity, streams
from agent.venue.lease import Lease, NotLeader

LOG_KEY = "requests"
WINDOW_S = 60.0  # the platform's rate window


def lost_log_counts(lost_ago_s: float | None, request_timeout_s: float,
                    window_s: float = WINDOW_S) -> bool:
    """Whether requests of a log lost `lost_ago_s` ago may still count at the platform (one
    window after they finished, at the latest a request timeout after the loss; None: no
    loss known)."""
    return lost_ago_s is not None and lost_ago_s < window_s + request_timeout_s


async def unrecorded_loss_age(js: Any, budget_stream: str, venue_streams: list[str],
                              request_timeout_s: float) -> float | None:
    """For a gate whose venue.db has no record of the budget bucket (a new gate, or venue.db
    deleted), which therefore cannot see it was made again: how long ago (the server's
    clock) the bucket was made, when a lost log may still count — made again at some time
    (after another of `venue_streams`: agent.venue.stream_identity `made_again_unseen`) and
    within one window and one request timeout. None: nothing lost can count any more, or the
    venue is new (or was wiped whole, which no gate without a record can tell from a new
    venue; docs/venue.md)."""
    age = await stream_identity.made_again_unseen(js, budget_stream, venue_streams)
    return age if age is not None and lost_log_counts(age, request_timeout_s) else None


def bucket_name(venue: str) -> str:
    return f"VENUE_{venue.replace('-', '_')}_BUDGET"


async def budget_bucket(js: Any, venue: str, replicas: int,
                        drift: dict[str, str] | None = None,
                        waiting: streams.Waiting | None = None) -> Any:
    return await streams.ensure_bucket(js, KeyValueConfig(
        bucket=bucket_name(venue), history=1, storage=StorageType.FILE, replicas=replicas),
        drift, waiting=waiting)


def leader_share(api: dict[str, Any], reserve: int) -> float:
    """The part of the company's budget the leader may use (`Governor`'s budget_share)."""
    rpm = api["requests_per_minute"]
    return max(1, rpm - reserve) / rpm


def leader_governor(api: dict[str, Any], reserve: int) -> Governor:
    return Governor(api["requests_per_minute"], leader_share(api, reserve),
                    api["upload_reserve"])


class LeaderFence:
    """`check()` before each request; `seed(governor)` when this device becomes leader."""

    def __init__(self, kv: Any, lease: Lease, window_s: float = WINDOW_S,
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

    async def seed(self, governor: Governor, lost_ago_s: float | None = None,
                   lost_requests: int = 0) -> int:
        """Count the previous leaders' recent requests in `governor`. Returns how many.
        `lost_ago_s`: the budget bucket was found made again (its log lost) that long ago;
        while its requests may still count, `lost_requests` (the company's whole budget) are
        taken as finished then, beside whatever the new log holds."""
        unknown = lost_requests if lost_log_counts(lost_ago_s, self.request_timeout_s,
                                                   self.window_s) else 0
        if unknown:
            assert lost_ago_s is not None
            governor.assume_sent([max(0.0, lost_ago_s - self.request_timeout_s)] * unknown)
        try:
            entry = await self.kv.get(LOG_KEY)
            sent = [float(t) for t in orjson.loads(entry.value or b"{}").get("sent", [])]
        except Exception:  # noqa: BLE001 - no log yet: nobody spent anything
            return unknown
        now = time.time()
        recent = [t for t in sent if t > now - self.window_s - self.request_timeout_s]
        governor.assume_sent([max(0.0, now - (t + self.request_timeout_s)) for t in recent])
        self.sent = recent
        return unknown + len(recent)


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


