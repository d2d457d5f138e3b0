"""What the venue role's set-up tests read of a role (tests/venue/test_h2_role_setup.py, the
session's; test_term_setup.py, the leader term's): the venue_degraded reason its status gives,
and how long until a check of it holds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from agent.ops.status import evaluate
from agent.venue.leader import VenueRole


def degraded(role: VenueRole) -> str | None:
    """The venue_degraded reason of a gate whose bus is connected, with this role's status."""
    venue = {"connected": True, "session_step": "running", "leader": role.get_status()}
    _health, reasons = evaluate({"venue": venue}, datetime.now(UTC), 3600)
    return next((r.message for r in reasons if r.code == "venue_degraded"), None)


async def until(check: Any, timeout_s: float, what: str, role: VenueRole) -> float:
    """Seconds until `check()`; fails with the role's status after `timeout_s`."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not check():
        assert loop.time() - started < timeout_s, (what, role.get_status())
        await asyncio.sleep(0.1)
    return loop.time() - started
