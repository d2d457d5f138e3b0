"""The venue-wide figures every gate shows, leader or not: the venue's platform requests in
the last minute (the budget bucket's log), the scans the platform refused (held in the
quarantine bucket), and the scans on the bus not yet at the platform (the upload backlog).

Separate from `VenueRole` (agent.venue.leader) because they are read from the bus on their
own cadence (two small bus requests every 2 s, not every round) and an unreadable figure is
shown as unknown (None), never as zero: keeping that rule in one place.
"""

from __future__ import annotations

import time
from typing import Any

from agent.venue import quarantine, uplink
from agent.venue.budget import venue_requests

REFRESH_S = 2.0  # how often the figures are read from the bus


class VenueFigures:
    """Read every `REFRESH_S` by the role's loop (`due`, then `refresh`)."""

    def __init__(self, name: str, budget_per_min: int):
        """`budget_per_min`: the leader's share of the company's budget (shown beside the
        venue's use of it)."""
        self.name = name
        self.budget_per_min = budget_per_min
        self.budget_kv: Any = None  # the session's budget bucket
        self.quarantine_kv: Any = None  # the session's quarantine bucket
        self.budget_in_use: int | None = None  # the venue's requests in the last minute
        self.upload_lag: int | None = None  # scans on the bus not yet at the platform
        self.upload_lag_s: float | None = None  # how long the oldest of them has waited
        self.quarantined: int | None = None  # venue scans the platform refused, held on the bus
        self._next = 0.0

    def due(self, now: float) -> bool:
        """Time to read them again (and the next time set), once the session has its buckets."""
        if now < self._next or self.budget_kv is None:
            return False
        self._next = now + REFRESH_S
        return True

    async def refresh(self, js: Any) -> None:
        self.budget_in_use = await venue_requests(self.budget_kv, time.time())
        try:
            self.quarantined = await quarantine.count(self.quarantine_kv)
        except Exception:  # noqa: BLE001 - the bus is away: unknown, not zero
            self.quarantined = None
        try:
            self.upload_lag, self.upload_lag_s = await uplink.backlog(js, self.name)
        except Exception:  # noqa: BLE001 - the bus is away: unknown, not zero
            self.upload_lag = self.upload_lag_s = None

    def get_status(self) -> dict[str, Any]:
        return {"budget_in_use_per_min": self.budget_in_use,
                "budget_per_min": self.budget_per_min,
                "upload_lag": self.upload_lag,
                "upload_lag_s": None if self.upload_lag_s is None else round(self.upload_lag_s, 1),
                "quarantined": self.quarantined}
