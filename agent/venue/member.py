"""Member work, on every device of the venue (the leader too): this gate's journaled scans
handed to the bus, and, cut off from the bus for longer than `venue.fallback_after_s`,
uploaded directly with this gate's own budget share (round one's Uploader).

Separate from `VenueRole` (agent.venue.leader) because it is the one part of the role that
must go on without a bus session (the role runs it while it still tries to connect) and
that the operator drives from beside the daemon (`gate-agent upload`). Rows the bus took but
whose acknowledgement was lost may reach the platform twice through the fallback (harmless:
the scan uuid; counted in `fallback_rows`, see the sandbox's `duplicate uuid`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.errors import GateAgentError
from agent.platform.client import PlatformClient
from agent.platform.governor import Governor
from agent.platform.upload import Uploader
from agent.store.journal import Journal
from agent.venue import uplink
from agent.venue.lost_streams import LostStreams

HAND_OVER_LIMIT = 500  # journal rows a member round hands to the bus at most


class MemberWork:
    """This gate's scans, to the bus or (cut off) to the platform."""

    def __init__(self, config: Config, token: str, device: str, counters: dict[str, int],
                 losses: LostStreams, journal_path: Path,
                 on_server_time: Callable[[float, float], None] | None = None):
        """`counters`: the role's (`handed_over`, `fallback_rows`); `losses`: told when every
        scan of this gate is on the bus again."""
        assert config.venue is not None
        self.config = config
        self.venue = config.venue
        self.name = self.venue["name"]
        self.device = device
        self.token = token
        self.counters = counters
        self.losses = losses
        self.journal_path = journal_path
        self.on_server_time = on_server_time
        self.connected_at = time.monotonic()  # when the bus last answered
        self._next_fallback = 0.0

    async def round(self, nc: Any, js: Any, journal: Journal) -> None:
        """Connected: this gate's pending scans to the bus. Cut off too long: the fallback,
        every `sync.upload_interval_s`."""
        if nc is not None and nc.is_connected:
            self.connected_at = time.monotonic()
            handed = await uplink.hand_over(
                js, self.name, self.device, journal, self.config.api["scanned_by"] or None,
                limit=HAND_OVER_LIMIT, tag=self.losses.hand_over_tag)
            self.counters["handed_over"] += handed
            if handed < HAND_OVER_LIMIT:
                self.losses.handed_over()
        elif (time.monotonic() - self.connected_at > self.venue["fallback_after_s"]
              and time.monotonic() >= self._next_fallback):
            self._next_fallback = time.monotonic() + self.config.sync["upload_interval_s"]
            self.counters["fallback_rows"] += await self._fallback(journal)

    async def upload_now(self, nc: Any, js: Any, drain: bool,
                         last_error: str | None) -> dict[str, Any]:
        """`gate-agent upload` beside the daemon in venue mode: this gate's pending scans to
        the bus now (agent.venue.uplink.hand_over_now); the bus out of reach is an error that
        says when the fallback takes over (`last_error`: the bus's, for the message)."""
        if nc is None or not nc.is_connected:
            raise GateAgentError(
                f"the venue bus is not reachable ({last_error or 'not connected'}); this "
                f"gate uploads its own scans once cut off for venue.fallback_after_s "
                f"({self.venue['fallback_after_s']:g} s)")
        journal = await asyncio.to_thread(Journal, self.journal_path)
        try:
            out = await uplink.hand_over_now(js, self.name, self.device, journal,
                                             self.config.api["scanned_by"] or None, drain,
                                             self.losses.hand_over_tag)
        finally:
            await asyncio.to_thread(journal.close)
        self.counters["handed_over"] += out["handed"]
        return out

    async def _fallback(self, journal: Journal) -> int:
        """Cut off from the bus: this gate's own scans, directly, with its own share."""
        async with PlatformClient.from_config(
                self.config.api, self.token, Governor.from_config(self.config.api)) as client:
            client.on_server_time = self.on_server_time
            uploader = Uploader(journal, client, batch_size=self.config.sync["upload_batch_size"],
                                scanned_by=self.config.api["scanned_by"] or None)
            return await uploader.upload_round()
