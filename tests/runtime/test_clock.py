"""GateClock: when the platform's readings say this clock is wrong, decisions use the
platform's time carried forward on the monotonic clock (agent.runtime.clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.core.codes import utc_iso
from agent.ops.heartbeat import platform_minus_bus
from agent.runtime.clock import CORRECT_ABOVE_S, DATE_RESOLUTION_S, GateClock, leader_reading


class Clocks:
    """A wall clock and a monotonic clock a test moves by hand."""

    def __init__(self, wall: float = 1_800_000_000.0, mono: float = 5_000.0):
        self.wall, self.mono = wall, mono

    def tick(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def clock(self) -> GateClock:
        return GateClock(wall=lambda: self.wall, mono=lambda: self.mono)

    def stamp(self) -> tuple[datetime, int]:
        return datetime.fromtimestamp(self.wall, UTC), int(self.mono * 1e9)


def _reading(c: Clocks, clock: GateClock, platform_minus_wall: float) -> None:
    """One platform answer arriving now, its Date `platform_minus_wall` from this clock."""
    clock.observe(float(int(c.wall + platform_minus_wall)), c.mono)


def test_small_differences_leave_the_wall_clock_alone() -> None:
    c = Clocks()
    clock = c.clock()
    for _ in range(3):
        _reading(c, clock, CORRECT_ABOVE_S - 2)
        c.tick(10)
    wall, mono_ns = c.stamp()
    assert not clock.corrected and clock.at(wall, mono_ns) == wall
    assert clock.get_status()["offset_s"] is not None


def test_one_reading_alone_never_moves_the_time() -> None:
    """A proxy answering with a cached, old Date must not move the gate's time."""
    c = Clocks()
    clock = c.clock()
    _reading(c, clock, -7200)  # one old Date
    c.tick(1)
    _reading(c, clock, 0)  # then the real platform
    wall, mono_ns = c.stamp()
    assert not clock.corrected and clock.at(wall, mono_ns) == wall


def test_two_agreeing_readings_correct_and_the_correction_rides_the_monotonic_clock() -> None:
    c = Clocks()
    clock = c.clock()
    day = 86400.0
    _reading(c, clock, day)
    c.tick(2)
    _reading(c, clock, day)
    assert clock.corrected
    status = clock.get_status()
    assert status["corrected"] and status["source"] == "platform"
    assert abs(status["offset_s"] - day) < 2
    c.tick(600)  # ten minutes later, no reading since (platform unreachable)
    wall, mono_ns = c.stamp()
    decided = clock.at(wall, mono_ns)
    assert abs((decided - wall).total_seconds() - day) < 1.5
    assert abs((clock.now() - decided).total_seconds()) < 1e-3  # now() is at() of this instant
    # a wall-clock step (NTP) does not move a corrected time: it follows the monotonic clock
    c.wall -= 3600
    stepped = clock.at(datetime.fromtimestamp(c.wall, UTC), int(c.mono * 1e9))
    assert stepped == decided


def test_a_scan_keeps_the_time_it_was_read_not_when_it_was_decided() -> None:
    c = Clocks()
    clock = c.clock()
    for _ in range(2):
        _reading(c, clock, -3 * 3600)
        c.tick(1)
    read_wall, read_mono = c.stamp()
    c.tick(0.25)  # decided a quarter of a second later
    assert clock.at(read_wall, read_mono) == clock.at(read_wall, read_mono)
    later_wall, later_mono = c.stamp()
    assert clock.at(later_wall, later_mono) - clock.at(read_wall, read_mono) == \
        timedelta(seconds=0.25)


def test_the_correction_ends_when_the_wall_clock_agrees_again() -> None:
    c = Clocks()
    clock = c.clock()
    for _ in range(2):
        _reading(c, clock, 900)
        c.tick(1)
    assert clock.corrected
    c.wall += 900  # NTP stepped the wall clock right
    _reading(c, clock, 0)
    wall, mono_ns = c.stamp()
    assert not clock.corrected and clock.at(wall, mono_ns) == wall


def test_while_corrected_an_outlier_does_not_move_the_anchor() -> None:
    c = Clocks()
    clock = c.clock()
    for _ in range(2):
        _reading(c, clock, 900)
        c.tick(1)
    wall, mono_ns = c.stamp()
    before = clock.at(wall, mono_ns)
    _reading(c, clock, 5000)  # one odd Date: kept out
    assert clock.at(wall, mono_ns) == before
    _reading(c, clock, 900)
    assert abs((clock.at(wall, mono_ns) - before).total_seconds()) <= 1 + DATE_RESOLUTION_S


def test_a_member_reads_the_platforms_time_from_the_leaders_heartbeat() -> None:
    """leader_reading: the newest online beat of another gate carrying the leader's
    platform_minus_bus_s, put on this wall clock by this gate's own offset from the bus."""
    rows = [
        {"device": "me", "state": "online", "platform_minus_bus_s": 50.0, "last_seen": 30.0},
        {"device": "old", "state": "online", "platform_minus_bus_s": 10.0, "last_seen": 10.0},
        {"device": "lead", "state": "online", "platform_minus_bus_s": 3600.0, "last_seen": 20.0},
        {"device": "gone", "state": "offline", "platform_minus_bus_s": 7.0, "last_seen": 40.0},
        {"device": "odd", "state": "online", "platform_minus_bus_s": True, "last_seen": 50.0},
        {"device": "plain", "state": "online", "last_seen": 60.0},
    ]
    # this wall clock is 120 s ahead of the bus server's: the platform is 3600 - 120 s ahead
    assert leader_reading(rows, "me", 120.0) == (3480.0, 20.0)
    assert leader_reading(rows[4:], "me", 0.0) is None


def test_two_leader_readings_correct_a_members_clock() -> None:
    c = Clocks()
    clock = c.clock()
    clock.observe_offset(-5400.0, c.mono, "venue leader")
    c.tick(2)
    clock.observe_offset(-5400.4, c.mono, "venue leader")
    wall, mono_ns = c.stamp()
    assert clock.corrected and clock.get_status()["source"] == "venue leader"
    assert abs((clock.at(wall, mono_ns) - wall).total_seconds() + 5400.4) < 0.01


def test_the_leader_puts_the_platforms_time_against_the_bus_in_its_heartbeat() -> None:
    now = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)
    fresh = utc_iso(now - timedelta(seconds=20))
    report = {"venue": {"clock_offset_s": -2.5, "leader": {"this_device_leads": True}},
              "clock": {"offset_s": 3600.0, "last_reading": fresh}}
    # platform - server = (platform - this wall) + (this wall - server)
    assert platform_minus_bus(report, now) == 3597.5
    member = {**report, "venue": {**report["venue"], "leader": {"this_device_leads": False}}}
    assert platform_minus_bus(member, now) is None
    stale = {**report, "clock": {"offset_s": 3600.0,
                                 "last_reading": utc_iso(now - timedelta(hours=1))}}
    assert platform_minus_bus(stale, now) is None
