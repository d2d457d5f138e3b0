"""The time a gate decides by: its wall clock, unless the platform shows that clock is wrong.

Validity windows (`outsideOfValidityPeriod`), zone opening hours and the scan times the platform
receives all come from the gate's clock. A turnstile controller without a real-time clock boots
at its last saved time (fake-hwclock) and keeps it while the venue's network has no NTP: on the
second day of a festival it can believe it is still the first, and admit yesterday's day tickets
(fail open), or refuse every ticket of today.

So every answer from the platform is also a time reading (its `Date` header, whole seconds; the
client hands it over with the monotonic time it arrived: agent.platform.client `on_server_time`).
When two readings in a row agree that the wall clock is more than CORRECT_ABOVE_S off, decisions
and journal stamps use the platform's time instead, carried forward on the monotonic clock (which
wall-clock steps do not move) from the newest reading: the correction holds while the platform is
unreachable, and a scan is stamped by when it was read (its `mono_ns`), not when it was decided.
Once a reading finds the wall clock within CORRECTED_UNTIL_S again (NTP caught up), the wall
clock is used again. One reading alone never starts a correction: a proxy or cache answering
with an old `Date` must not move every gate's time.

Not corrected: a gate that never reached the platform since it started (nothing to compare
with; status cannot say either), and errors under CORRECT_ABOVE_S (the Date header's resolution
and a request's latency are a few seconds; validity windows are minutes to days).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agent.core.codes import epoch_iso

log = logging.getLogger("gate_agent.clock")

CORRECT_ABOVE_S = 30.0  # two readings this far off (either way) start the correction
CORRECTED_UNTIL_S = 5.0  # a reading this close to the wall clock ends it
AGREE_WITHIN_S = 5.0  # two readings "agree" when their offsets differ by at most this
DATE_RESOLUTION_S = 0.5  # the Date header truncates to the second: its middle, on average


class GateClock:
    """`now()` and `at(wall, mono_ns)` for decisions; `observe()` for the platform's readings.

    Read by every lane thread, written from the platform client's loop: the correction is one
    tuple swapped in a single assignment, so a reader sees the old one or the new one."""

    def __init__(self, wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic):
        self._wall = wall
        self._mono = mono
        # (platform epoch at `mono`, mono, offset_s, since epoch): None while the wall clock
        # is trusted
        self._anchor: tuple[float, float, float, float] | None = None
        self._last_offset: float | None = None  # the previous reading's offset
        self._last_reading: float | None = None  # its wall time (status)
        self._source = "platform"  # where the correction's readings come from (status)
        self._lock = threading.Lock()

    # -- readings ---------------------------------------------------------------------------

    def observe(self, server_epoch: float, mono_at: float) -> None:
        """One platform answer: its Date (`server_epoch`, whole seconds) arrived at `mono_at`."""
        with self._lock:
            wall_at = self._wall() - (self._mono() - mono_at)  # the wall clock when it arrived
            self._take(server_epoch + DATE_RESOLUTION_S - wall_at, mono_at, wall_at, "platform")

    def observe_offset(self, offset_s: float, mono_at: float, source: str) -> None:
        """A reading given as the platform's time minus this wall clock at `mono_at`: a venue
        member's, from the leader's heartbeat (`leader_reading`)."""
        with self._lock:
            self._take(offset_s, mono_at, self._wall() - (self._mono() - mono_at), source)

    def _take(self, offset: float, mono_at: float, wall_at: float, source: str) -> None:
        """One reading (under the lock): start, move or end the correction."""
        server = wall_at + offset
        previous, self._last_offset = self._last_offset, offset
        self._last_reading = wall_at
        anchor = self._anchor
        if anchor is not None:
            if abs(offset) <= CORRECTED_UNTIL_S:
                self._anchor = None
                log.warning("this clock agrees with the platform's again (%+.1f s): "
                            "decisions use it again", offset)
            elif previous is not None and abs(offset - previous) <= AGREE_WITHIN_S:
                self._anchor = (server, mono_at, offset, anchor[3])
                self._source = source
            return
        if abs(offset) > CORRECT_ABOVE_S and previous is not None \
                and abs(offset - previous) <= AGREE_WITHIN_S:
            self._anchor = (server, mono_at, offset, wall_at + offset)
            self._source = source
            log.warning("this clock is %+.0f s off the platform's: decisions, validity "
                        "windows and scan times use the platform's time until it agrees "
                        "again (fix NTP on this device)", -offset)

    # -- the time ---------------------------------------------------------------------------

    def at(self, wall: datetime, mono_ns: int) -> datetime:
        """The decision time of something the wall clock stamped `wall` at monotonic `mono_ns`."""
        anchor = self._anchor
        if anchor is None:
            return wall
        return datetime.fromtimestamp(anchor[0] + (mono_ns / 1e9 - anchor[1]), UTC)

    def now(self) -> datetime:
        anchor = self._anchor
        if anchor is None:
            return datetime.now(UTC)
        return datetime.fromtimestamp(anchor[0] + (self._mono() - anchor[1]), UTC)

    @property
    def corrected(self) -> bool:
        return self._anchor is not None

    def get_status(self) -> dict[str, Any]:
        """`offset_s`: the platform's time minus this clock's, from the newest reading."""
        anchor = self._anchor
        return {"corrected": anchor is not None, "source": self._source if anchor else None,
                "offset_s": None if self._last_offset is None else round(self._last_offset, 1),
                "corrected_since": epoch_iso(anchor[3]) if anchor else None,
                "last_reading": epoch_iso(self._last_reading)}


def leader_reading(rows: list[dict[str, Any]], own_device: str,
                   bus_offset_s: float) -> tuple[float, float] | None:
    """For a venue member, which sends the platform nothing: the platform's time minus this
    wall clock, from the newest online heartbeat of another gate that carries
    `platform_minus_bus_s` (the leader's: agent.ops.heartbeat), and that beat's stamp (so each
    beat is taken once). `bus_offset_s`: this wall clock minus the bus server's, from the
    heartbeats (agent.venue.heartbeat.GateBoard). None: no such beat."""
    best: tuple[float, float] | None = None
    for row in rows:
        value = row.get("platform_minus_bus_s")
        if row.get("device") == own_device or row.get("state") != "online" \
                or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        stamp = float(row.get("last_seen") or 0.0)
        if best is None or stamp > best[1]:
            best = (float(value) - bus_offset_s, stamp)
    return best

