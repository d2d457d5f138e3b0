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

Each lane's link to the venue (agent.venue.claims.VenueLink) opens a read connection of its
own to venue.db (`lane_link`), after the bus's. When that open fails as the lanes open (another
process took the file with `PRAGMA locking_mode=EXCLUSIVE` between the bus's open and the
lanes', a permission or the disk failing), the gate goes on exactly as with a venue.db that
cannot be opened at start: the bus stops, every lane's gate is shut with that error, status
fails with `venue_db_unavailable` and `venue_access` tries again (`lane_gates`); never a lane
left linked to a bus that stopped, never an exit. A gate that only decides for a control
operation (a technician's scan) is shut on its own instead, the running lanes and the bus
left as they are; a reload refuses to start a lane without its link
(agent.runtime.reloadapply).

Apart from agent.runtime.daemon because a gate without [venue] runs none of it, and the order
it keeps (journal, bus, role, clock, lanes) is its own. The bus itself is agent.venue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from agent.config import LaneConfig
from agent.errors import StoreError
from agent.ops.heartbeat import publish_heartbeats
from agent.runtime.clock import leader_reading
from agent.venue.bus import VenueBus
from agent.venue.claims import VenueLink

if TYPE_CHECKING:
    from agent.runtime.daemon import Daemon
    from agent.runtime.gate import Gate

log = logging.getLogger("gate_agent.daemon")

# With [venue], the lanes open once this gate has measured its clock against the bus server's
# (as the bus connects: agent.venue.clockprobe), or after this long if it cannot (bus down)
VENUE_CLOCK_WAIT_S = 5.0


def start_venue(d: Daemon) -> None:
    """The venue bus, before the lanes: their claims go through it (with [venue] only)."""
    if d.config.venue is not None:
        bus_started(d, new_bus(d))


def new_bus(d: Daemon) -> VenueBus | StoreError:
    """The bus, or why venue.db cannot be opened. It may wait out SQLite's busy timeout on a
    file another process holds: the retry job runs it in a worker thread."""
    assert d.config.venue is not None
    try:
        return VenueBus(d.config.venue, d.config.store_dir,
                        None if d.journal_error else d.journal_path, d.config.path,
                        clock=lambda: d.clock.now().timestamp())  # scans' own clock
    except StoreError as exc:
        return exc


def bus_started(d: Daemon, made: VenueBus | StoreError) -> None:
    """`new_bus`'s bus started, or venue.db's error kept (never moved aside: module doc)."""
    if isinstance(made, StoreError):
        if d.venue_error is None:
            log.error("%s — every scan is refused and the relays stay shut (an emergency "
                      "release still opens them); tried again every %g s", made,
                      d.store_retry_s)
        d.venue_error = str(made)
        return
    bus = made
    if d.venue_error is not None:
        log.warning("venue state %s can be opened again: the venue bus starts",
                    bus.store_path)
    d.venue_error = None
    d.bus = bus
    bus.on_leader_time = lambda: leader_time_heard(d)  # a member's clock: at once, then a period
    bus.start()
    log.info("venue %s: device %s, servers %s, offline policy %s", bus.name, bus.device,
             ", ".join(bus.venue["servers"]), bus.venue["offline_policy"])


def lane_link(d: Daemon) -> tuple[VenueLink | None, str | None]:
    """A new gate's link to the venue and why the gate is shut (None: it is not). Without a
    bus there is no link: shut while venue.db cannot be opened (`venue_error`), open without
    [venue]. A link whose own connection to venue.db does not open is no link either: the
    gate is shut with the error, which names the file and what holds it (`link_error`)."""
    if d.venue_error is not None:
        return None, d.venue_error
    if d.bus is None or d.config.venue is None:
        return None, None
    try:
        return VenueLink(d.bus, d.config.venue["offline_policy"]), None
    except StoreError as exc:
        log.error("%s — a gate without its link to the venue refuses every scan", exc)
        return None, str(exc)


def link_error(d: Daemon, gate: Gate) -> str | None:
    """Why `gate`'s own link to venue.db did not open (None: it did, or it needs none, or it
    is shut for `venue_error` like every gate)."""
    return gate.shut if gate.shut is not None and d.venue_error is None else None


def lane_gates(d: Daemon, lanes: tuple[LaneConfig, ...],
               gates: dict[str, Gate] | None = None) -> dict[str, Gate]:
    """Each lane's gate as the lanes open: from `gates` (a reload's, built before any lane
    stopped) or new. The first link that does not open makes it `without_venue_db`; the
    lanes after it are not tried (each try may wait out SQLite's busy timeout) and those
    linked before it are shut too: their bus stopped."""
    gates = dict(gates or {})
    for lane in lanes:
        if lane.name not in gates:
            gates[lane.name] = gate = d._gate()
            error = link_error(d, gate)
            if error is not None:
                without_venue_db(d, error)
    if d.venue_error is not None:
        for name, gate in gates.items():
            if gate.venue is not None:
                gate.close()
                gates[name] = d._gate()
    return gates


def without_venue_db(d: Daemon, error: str) -> None:
    """A lane's link to venue.db did not open as the lanes open: the gate goes on as with a
    venue.db that cannot be opened at start (module doc): no bus, every lane shut, status
    `venue_db_unavailable`, tried again every `store_retry_s` (job `venue_access`)."""
    log.error("%s — the venue bus stops, every scan is refused and the relays stay shut (an "
              "emergency release still opens them); tried again every %g s", error,
              d.store_retry_s)
    d.venue_error = error
    bus, d.bus = d.bus, None
    if d._beats is not None:
        d._beats.cancel()
        d._beats = None
    if bus is not None:
        bus.stop()
    retry_venue_db(d)


def retry_venue_db(d: Daemon) -> None:
    """The `venue_access` job, once, while venue.db cannot be opened."""
    if d.venue_error is not None and "venue_access" not in d.jobs.health:
        d.jobs.add_interval("venue_access", lambda: venue_access_job(d), d.store_retry_s,
                            first_in=d.store_retry_s)


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
    """venue.db could not be opened at start, or by a lane as the lanes opened
    (`venue_db_unavailable`; kept as it is): tried again until it opens, then the bus starts
    and the lanes start anew with it (shut again if a lane's link still does not open)."""
    if not d.venue_error or d.bus is not None or d.config.venue is None:
        return
    bus_started(d, await asyncio.to_thread(new_bus, d))  # off the loop: busy timeout
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
