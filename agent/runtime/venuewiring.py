"""The daemon's venue wiring (with [venue] only): the venue bus started before the lanes, the
wait for this gate's clock to be measured against the bus server's, the venue role's task and
the heartbeats, a member's clock checked against the leader's, and venue.db tried again when
it could not be opened.

A venue.db that cannot be opened (not this user's, immutable, a read-only or full disk,
damaged) does not stop the start: the gate runs, its lanes refuse every scan (storeUnavailable,
journaled) with the relays shut but an emergency release still working, status says why
(`venue_db_unavailable`) and venue.db is tried again every `store_retry_s`; once it opens the
bus starts and the lanes start anew with it. It is never moved aside or made anew: a lost
venue.db record can double-admit.

Apart from agent.runtime.daemon because a gate without [venue] runs none of it, and the order
it keeps (journal, bus, role, clock, lanes) is its own. The bus itself is agent.venue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from agent.errors import StoreError
from agent.ops.heartbeat import publish_heartbeats
from agent.runtime.clock import leader_reading
from agent.venue.bus import VenueBus

if TYPE_CHECKING:
    from agent.runtime.daemon import Daemon

log = logging.getLogger("gate_agent.daemon")

# With [venue], the lanes open once this gate has measured its clock against the bus server's
# (as the bus connects: agent.venue.clockprobe), or after this long if it cannot (bus down)
VENUE_CLOCK_WAIT_S = 5.0


def start_venue(d: Daemon) -> None:
    """The venue bus, before the lanes: their claims go through it (with [venue] only)."""
    if d.config.venue is None:
        return
    try:
        bus = VenueBus(d.config.venue, d.config.store_dir,
                       None if d.journal_error else d.journal_path, d.config.path,
                       clock=lambda: d.clock.now().timestamp())  # scans' own clock
    except StoreError as exc:  # venue.db: kept as it is, never moved aside (module doc)
        if d.venue_error is None:
            log.error("%s — every scan is refused and the relays stay shut (an emergency "
                      "release still opens them); tried again every %g s", exc,
                      d.store_retry_s)
        d.venue_error = str(exc)
        return
    if d.venue_error is not None:
        log.warning("venue state %s can be opened again: the venue bus starts",
                    bus.store_path)
    d.venue_error = None
    d.bus = bus
    bus.on_leader_time = lambda: leader_time_heard(d)  # a member's clock: at once, then a period
    d.bus.start()
    log.info("venue %s: device %s, servers %s, offline policy %s", d.bus.name,
             d.bus.device, ", ".join(d.config.venue["servers"]),
             d.config.venue["offline_policy"])


async def venue_clock_measured(d: Daemon) -> None:
    """Wait (at most `venue_clock_wait_s`) for the venue bus to measure this clock against its
    server's, before the lanes open. Until then this gate cannot order other gates' scans
    among its own, so it refuses the entries whose answer depends on that order
    (denied/clockUnmeasured, agent.core.scanstate): opened first, the lanes would refuse
    such tickets for the moment it takes to connect. A bus that cannot be reached holds
    the gate up no longer than that: it then works alone under the offline policy,
    refusing only those entries until the bus is back and measured."""
    bus = d.bus
    if bus is None:
        return
    deadline = time.monotonic() + d.venue_clock_wait_s
    while not bus.board.calibrated and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    offset = bus.clock_offset()
    if offset is None:
        log.warning("venue %s: this clock is not measured against the bus server's yet "
                    "(%s); lanes open, and entries whose order with other gates' scans "
                    "depends on it are refused (clockUnmeasured) until it is", bus.name,
                    bus.last_error or ("not connected" if not bus.connected else
                                       "no measurement yet"))
    else:
        log.info("venue %s: this clock is %+.3f s from the bus server's", bus.name, offset)


def start_role(d: Daemon) -> None:
    """The venue role's task (with [venue] and a token); it works from the journal and
    venue.db, so not before both open (its sessions would fail every second meanwhile)."""
    if d.role is not None and d._role_task is None and d.journal is not None \
            and d.venue_error is None:
        d._role_task = asyncio.create_task(d.role.run(d.stop_event), name="venue role")


def start_heartbeats(d: Daemon) -> None:
    if d.bus is not None and d.config.venue is not None and d._beats is None:
        d._beats = asyncio.create_task(publish_heartbeats(
            d.report, d.bus, d.config.venue["heartbeat_s"],
            lambda: datetime.now(UTC), d.stop_event), name="heartbeats")


async def venue_access_job(d: Daemon) -> None:
    """venue.db could not be opened at start (`venue_db_unavailable`; kept as it is):
    tried again until it opens, then the bus starts and the lanes start anew with it."""
    if not d.venue_error or d.bus is not None:
        return
    start_venue(d)
    if d.bus is None:
        return
    start_heartbeats(d)
    start_role(d)
    await venue_clock_measured(d)
    d._restart_lanes()


def leader_time_heard(d: Daemon) -> None:
    """The bus's session is up and the leader's time is on its board (the bus's thread):
    the clock is checked now, not a watchdog period later (agent.venue.bus)."""
    if d._loop is not None:
        d._loop.call_soon_threadsafe(follow_leader_clock, d)


def follow_leader_clock(d: Daemon) -> None:
    """A venue member sends the platform nothing: its clock is checked against the
    platform's time as the leader's heartbeat carries it (agent.runtime.clock)."""
    bus = d.bus
    if bus is None or not bus.board.calibrated:
        return
    reading = leader_reading(bus.board.rows(), bus.device, bus.board.offset_s)
    if reading is None or reading[1] <= d._leader_beat_seen:
        return
    d._leader_beat_seen = reading[1]
    d.clock.observe_offset(reading[0], time.monotonic(), "venue leader")
