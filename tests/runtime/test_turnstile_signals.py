"""The turnstile's own signals read adversarially: paths where a person who went through was
voided (the ticket freed for a second person), a fire release that never ended, and a
refusal shown beside the green of the admit before.

Real lane thread, real SQLite journal and cache, the `sim:` relay, lights, display and
passage input (real drivers with no device behind them), and for a line that vanishes and
comes back the GPIO FAKE of tests/drivers/fake_gpiod.py (no gpio-sim here: the driver's own
code runs down to `gpiod.request_lines`). A slow display or relay is the `sim:` driver made
to block inside its device write, where a real serial device can block (write_timeout)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gpiod
import pytest
from gpiod.line import Value

from agent import demo_data
from agent.config import LaneConfig
from agent.ops.status import evaluate
from agent.runtime.indicators import Indicators
from agent.runtime.lane import manual_scan
from agent.runtime.release import EmergencyInput, ReleaseDesk
from agent.store.journal import Journal
from agent.store.passages import PassageLog
from drivers.display import SimDisplay, sim_display
from drivers.inputs import sim_input_pulse, sim_input_set
from drivers.sim import SimRelay, sim_relay, sim_replug, sim_reset, sim_unplug
from tests.conftest import DemoSite
from tests.drivers.fake_gpiod import FakeGpiod
from tests.rigs import PtyDevice, wait_until
from tests.runtime.lanerig import LaneRig

C = demo_data.CODES
CHIP = "/dev/gpiochip0"
# An admit's (exit's) wait whose passage input is lost, or lost and back, before its deadline:
# the input's loss and return take well under a second (0.2-0.4 s measured; their wait_until
# bounds are longer; the test says so when the machine is slower than that).
LOST_WAIT_MS = 1500


@pytest.fixture
def fake_gpio(monkeypatch: pytest.MonkeyPatch) -> FakeGpiod:
    fake = FakeGpiod()
    monkeypatch.setattr(gpiod, "request_lines", fake.request_lines)
    return fake


@pytest.fixture
def rigs(site: DemoSite) -> Iterator[Any]:
    made: list[LaneRig] = []

    def make(name: str, **lane: Any) -> LaneRig:
        made.append(LaneRig(site, name, **lane))
        return made[-1]

    yield make
    for rig in made:
        rig.close()


def unplug(fake: FakeGpiod) -> Any:
    """The chip vanishes (USB GPIO expander pulled): reads fail, reopening fails."""
    line = fake.last
    fake.chips = ()
    line.fail_reads = True
    return line


def replug(fake: FakeGpiod) -> None:
    fake.chips = (CHIP,)  # the next reopen finds the line, at its level now (inactive)


@pytest.mark.parametrize("back", [False, True], ids=["still-gone", "back-before-deadline"])
def test_an_admit_whose_passage_input_is_lost_during_its_wait_stands(
        rigs: Any, fake_gpio: FakeGpiod, back: bool) -> None:
    """Nobody saw the person not pass (the line was gone, maybe exactly while they walked
    through): voiding would free the ticket for a second person. Before the fix the wait
    was voided at its deadline like a wait nobody walked through."""
    rig = rigs(f"lost{int(back)}", passage_in=f"gpio:{CHIP}:5",
               passage_timeout_ms=LOST_WAIT_MS)
    watched = rig.runner.passage.inputs["in"]
    event = rig.scan(C["valid"])
    uuid = event.result.uuid
    assert event.result.decision.admit and rig.passage(uuid) == "waiting"
    deadline = rig.runner.passage.waits["in"][-1].deadline
    unplug(fake_gpio)
    wait_until(lambda: not watched.connected, 5, "the passage input lost")
    if back:  # the person passed while it was gone; the line is back, with no edge to see
        replug(fake_gpio)
        wait_until(lambda: watched.connected, 10, "the passage input back")
    assert time.monotonic() < deadline, "the machine is too slow for this test's timeout"
    wait_until(lambda: rig.passage(uuid) != "waiting", 20, "the wait settled")
    assert rig.passage(uuid) == "interrupted"
    assert rig.scan_row(uuid) == (1, "valid", None)  # uploaded as the entry it was
    totals = rig.runner.get_status()["passage"]["totals"]
    assert (totals["unconfirmed"], totals["voided"]) == (1, 0)
    assert rig.voided_claims == []  # the venue keeps the ticket as used
    again = rig.scan(C["valid"])
    assert not again.result.decision.admit, again.result.decision  # single access: used


def test_a_passage_while_a_slow_display_shows_the_admit_confirms_it(
        rigs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay opened and the display (a serial one can block up to its write timeout)
    was still writing `Welcome` when the person walked through. Before the fix the wait was
    registered only after the indicators: the edge was judged first, as `forced`, and the
    admit then voided — the person inside, the ticket free again."""
    writing, go_on = threading.Event(), threading.Event()
    real_show = SimDisplay._show

    def slow_show(self: SimDisplay, text: str) -> None:
        if text == "Welcome":
            writing.set()
            go_on.wait(30)
        real_show(self, text)

    monkeypatch.setattr(SimDisplay, "_show", slow_show)
    rig = rigs("slowdisplay", passage_timeout_ms=1000)
    rig.runner.submit(manual_scan(C["valid"], rig.lane.name))
    assert writing.wait(10), "the display was never written"
    assert sim_relay(f"{rig.name}-relay").pulses, "the gate did not open"
    sim_input_pulse(f"{rig.name}-pass")  # the person walks through at once
    totals = rig.runner.passage.totals
    wait_until(lambda: totals["passed"] + totals["forced"], 10, "the edge judged")
    go_on.set()
    uuid = rig.events.get(timeout=10).result.uuid
    wait_until(lambda: rig.passage(uuid) != "waiting", 10, "the wait settled")
    assert (rig.passage(uuid), rig.alarms) == ("passed", [])
    assert rig.voided_claims == []
    assert not rig.scan(C["valid"]).result.decision.admit  # used: nobody else gets in on it


def test_a_passage_during_a_slow_relay_pulse_confirms_the_admit(
        rigs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay board energised the release and its write had not returned yet (a serial
    relay blocks up to its write timeout) when the person went through: the edge must wait
    for the admit's wait, not be judged as `forced` before it exists."""
    switching, go_on = threading.Event(), threading.Event()
    real_set = SimRelay._set

    def slow_set(self: SimRelay, on: bool) -> None:
        real_set(self, on)  # the gate is open from here on
        if on and self.name.endswith("-relay"):
            switching.set()
            go_on.wait(30)

    monkeypatch.setattr(SimRelay, "_set", slow_set)
    rig = rigs("slowrelay", passage_timeout_ms=1000)
    rig.runner.submit(manual_scan(C["valid"], rig.lane.name))
    assert switching.wait(10), "the relay was never switched"
    sim_input_set(f"{rig.name}-pass", True)  # the person is in the arm
    wait_until(lambda: rig.runner.passage.inputs["in"].changes >= 1, 10, "the edge seen")
    wait_until(rig.runner.passage._events.empty, 10, "the edge taken by the passage worker")
    go_on.set()
    sim_input_set(f"{rig.name}-pass", False)
    uuid = rig.events.get(timeout=10).result.uuid
    wait_until(lambda: rig.passage(uuid) != "waiting", 10, "the wait settled")
    assert (rig.passage(uuid), rig.alarms) == ("passed", [])
    assert not rig.scan(C["valid"]).result.decision.admit


def test_a_passage_judged_late_behind_a_journal_stall_still_confirms_its_admit(
        rigs: Any) -> None:
    """Two admitted people walk through in time, while the journal file is locked (another
    writer, a slow fsync): the passage worker is stuck writing the first person's passage
    and both deadlines pass before it sees the second person's edge. Before the fix the
    worker expired waits after each event it handled, so the second admit was voided with
    its in-time edge still in the queue; now a wait expires only when none is queued."""
    rig = rigs("stall", passage_timeout_ms=1000)  # both edges are seen within ~0.1 s
    first, second = rig.scan(C["valid"]), rig.scan(C["valid2"])
    assert first.result.decision.admit and second.result.decision.admit
    waits = rig.runner.passage.waits["in"]
    deadline = waits[-1].deadline
    watched = rig.runner.passage.inputs["in"]
    lock = sqlite3.connect(rig.gate.journal.path, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # the journal is busy: every write waits
        sim_input_pulse(f"{rig.name}-pass")
        sim_input_pulse(f"{rig.name}-pass")
        wait_until(lambda: watched.changes == 4, 10, "both passages seen")
        assert time.monotonic() < deadline, "the machine is too slow for this test's timeout"
        wait_until(lambda: time.monotonic() > deadline + 0.2, 10, "both deadlines passed")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    for event in (first, second):
        uuid = event.result.uuid
        wait_until(lambda u=uuid: rig.passage(u) != "waiting", 15, "the wait settled")
    assert (rig.passage(first.result.uuid), rig.passage(second.result.uuid)) == \
        ("passed", "passed")
    assert rig.alarms == [] and rig.voided_claims == []


def test_a_fire_release_lost_while_active_ends_when_its_input_is_back_inactive(
        rigs: Any, fake_gpio: FakeGpiod) -> None:
    """The fire panel's line vanished during a release and came back inactive (the alarm
    was reset meanwhile). Before the fix the input marked itself inactive unreported while
    gone, so the inactive reading at its return was no change: the lane stayed released —
    every scan `releasedGate`, the turnstile held open — until a restart."""
    rig = rigs("fire")
    url = f"gpio:{CHIP}:9"
    events = PassageLog(Journal(rig.gate.journal.path))
    desk = ReleaseDesk(lambda: {rig.lane.name: rig.runner}, lambda: events)
    fire = EmergencyInput(url, lambda active: desk.emergency(active, url))
    fire.start()
    relay = rig.runner.relay
    assert relay is not None
    try:
        wait_until(lambda: fire.input.connected, 5, "the fire input watched")
        fake_gpio.last.level = Value.ACTIVE
        wait_until(lambda: relay.held, 10, "the release")
        assert rig.scan(C["valid"]).result.decision.detail == "releasedGate"
        unplug(fake_gpio)
        wait_until(lambda: not fire.get_status()["connected"], 10, "the fire input lost")
        # Nobody can say the fire is over: the release holds while the line is gone.
        assert relay.held and rig.runner.releases == {"emergency"}
        _health, reasons = evaluate({"emergency": fire.get_status(), "lanes": [],
                                     "cache": {"events": [{"items": 1}]}}, datetime.now(UTC), 1e9)
        said = {r.code: (r.level, r.message) for r in reasons}["emergency_release"]
        assert said[0] == "fail" and "not watched now" in said[1] and url in said[1]
        replug(fake_gpio)
        wait_until(lambda: not relay.held and not fire.active, 10, "the release ended")
        assert (fire.active, rig.runner.releases, sim_relay(f"{rig.name}-relay").state) == \
            (False, set(), False)
        # The desk journals the end just after it lets the relay go: wait for the row.
        wait_until(lambda: len(events.events()) >= 2, 10, "the release's end journaled")
        kinds = [e["kind"] for e in events.events()]
        assert kinds == ["emergency_off", "emergency_on"]  # newest first, one each
        assert rig.scan(C["valid"]).result.decision.admit  # normal service again
    finally:
        fire.stop()
        events.journal.close()


def test_a_fire_line_back_active_after_a_loss_is_no_new_release(fake_gpio: FakeGpiod) -> None:
    """The other half of keeping the last reported level: a line lost and back still active
    changes nothing (no second `emergency_on`, no phantom edge)."""
    url = f"gpio:{CHIP}:9"
    seen: list[bool] = []
    fire = EmergencyInput(url, seen.append)
    fire.start()
    try:
        wait_until(lambda: fire.input.connected, 5, "the fire input watched")
        fake_gpio.last.level = Value.ACTIVE
        wait_until(lambda: seen == [True], 10, "active reported")
        unplug(fake_gpio)
        wait_until(lambda: not fire.input.connected, 10, "the fire input lost")
        fake_gpio.levels[9] = Value.ACTIVE  # the line reads active when it is back
        requests = len(fake_gpio.requests)
        replug(fake_gpio)
        wait_until(lambda: len(fake_gpio.requests) > requests and fire.input.connected, 10,
                   "the fire input back")
        back = fake_gpio.last
        wait_until(lambda: back.value_reads, 10, "the level read at reopening")
        back.level = Value.INACTIVE  # and the panel is reset: now the release ends
        wait_until(lambda: seen == [True, False], 10, "inactive reported")
        assert fire.input.changes == 2
    finally:
        fire.stop()


@pytest.mark.lane(passage_timeout_ms=5000, indicate_admit="green:60000")
def test_a_refusal_switches_off_the_green_of_the_admit_before(rig: LaneRig) -> None:
    """The next person's refusal comes while the last admit's green still burns: before the
    fix green and red were on together, and the refused person read `go` in it."""
    assert rig.scan(C["valid"]).result.decision.admit
    green, red = sim_relay(f"{rig.name}-green"), sim_relay(f"{rig.name}-red")
    assert green.state and not red.state
    refused = rig.scan(C["valid"]).result.decision  # used already (waiting counts)
    assert not refused.admit
    assert (green.state, red.state) == (False, True)
    assert sim_display(f"{rig.name}-display")[-1] == "Already inside"


@pytest.mark.lane(passage_timeout_ms=300, indicate_admit="green:60000")
def test_a_voided_admit_switches_its_green_off(rig: LaneRig) -> None:
    uuid = rig.scan(C["valid"]).result.uuid
    green, red = sim_relay(f"{rig.name}-green"), sim_relay(f"{rig.name}-red")
    wait_until(lambda: rig.passage(uuid) == "voided", 10, "admit voided")
    wait_until(lambda: red.pulses, 10, "the not-passed pattern")
    assert green.state is False and [p["ms"] for p in green.pulses] == [60000]



def test_a_light_missing_at_start_and_a_display_that_vanished_work_again_when_back(
        tmp_path: Path) -> None:
    """Before: a light that could not be opened at start was dropped for good, and a serial
    display whose cable was pulled kept writing to the dead port — neither showed anything
    again until a restart, with the lane's status still naming the old error."""
    sim_reset()
    sim_unplug("back-green")  # the relay board with the stack light enumerates late
    pty = PtyDevice(tmp_path)
    pty.unplug()  # ... and so does the display
    lane = LaneConfig(name="north-in", gate_id=demo_data.GATE_NORTH, direction="in",
                      light_green="sim:back-green", display=f"serial://{pty.path}?width=20")
    shown = Indicators(lane)
    shown.open()
    try:
        assert set(shown.errors) == {"green", "display"}
        shown.show("admit", "valid")  # still missing: reported, nothing raised
        assert set(shown.errors) == {"green", "display"}
        sim_replug("back-green")
        pty.replug()
        shown.show("admit", "valid")
        assert [p["ms"] for p in sim_relay("back-green").pulses] == [1500]
        assert pty.read_available(2.0) == b"Welcome\r\n"
        assert shown.errors == {}
        pty.unplug()  # pulled while in use: the write fails on the dead port
        shown.show("refuse", "alreadyIn")
        assert "display" in shown.errors
        pty.replug()
        shown.show("refuse", "alreadyIn")
        assert pty.read_available(2.0) == b"Already inside\r\n"
        assert "display" not in shown.errors
    finally:
        shown.close()
        pty.unplug()
        sim_reset()


def in_then_out(rig: LaneRig) -> Any:
    """On a floor lane: the ticket goes in (its passage seen), then its exit is admitted and
    waits for its passage. Returns the exit's LaneEvent."""
    entry = rig.scan(C["floor"])
    assert entry.result.decision.direction == "in" and entry.result.decision.admit
    sim_input_pulse(f"{rig.name}-pass")
    wait_until(lambda: rig.passage(entry.result.uuid) == "passed", 10, "the entry passed")
    wait_until(lambda: rig.runner.passage.inputs["out"].connected, 5, "exit input watched")
    exit_ = rig.scan(C["floor"])
    assert exit_.result.decision.direction == "out" and exit_.result.decision.admit
    return exit_


def test_an_exit_whose_passage_input_is_lost_during_its_wait_is_voided(
        rigs: Any, fake_gpio: FakeGpiod) -> None:
    """The other direction of the rule above: an exit nobody saw is not taken as made, or the
    ticket would be `outside` — free to come in again, handed back over the barrier — while
    its holder may still be inside. (Main voided it too; this keeps it so.)"""
    rig = rigs("lostexit", direction="auto", zone_id=demo_data.FLOOR_ZONE, max_entries=0,
               relay_out="sim:lostexit-out", passage_out=f"gpio:{CHIP}:6",
               passage_timeout_ms=LOST_WAIT_MS)
    exit_ = in_then_out(rig)
    deadline = rig.runner.passage.waits["out"][-1].deadline
    unplug(fake_gpio)
    wait_until(lambda: not rig.runner.passage.inputs["out"].connected, 5, "exit input lost")
    assert time.monotonic() < deadline, "the machine is too slow for this test's timeout"
    wait_until(lambda: rig.passage(exit_.result.uuid) != "waiting", 20, "the wait settled")
    assert rig.passage(exit_.result.uuid) == "voided"
    assert rig.scan_row(exit_.result.uuid) == (0, "denied", "notPassed")
    again = rig.scan(C["floor"]).result.decision
    assert (again.direction, again.admit) == ("out", True)  # still inside: an exit again


@pytest.mark.lane(passage_timeout_ms=500, held_open_ms=60000)
def test_an_admit_while_the_passage_input_is_held_active_stands(rig: LaneRig) -> None:
    """The contact was active before the gate opened (someone stands in the beam, a stuck
    contact) and stayed so: the person's passage makes no new edge, so its absence proves
    nothing. Before the fix the admit was voided — the ticket free again."""
    sim_input_set(f"{rig.name}-pass", True)
    wait_until(lambda: rig.runner.passage.totals["forced"], 10, "the edge judged")
    uuid = rig.scan(C["valid"]).result.uuid
    wait_until(lambda: rig.passage(uuid) != "waiting", 10, "the wait settled")
    assert rig.passage(uuid) == "interrupted"
    assert rig.scan_row(uuid) == (1, "valid", None)
    note = rig.db.execute("SELECT note FROM passages WHERE uuid = ?", (uuid,)).fetchone()[0]
    assert "active since before the gate opened" in note
    assert not rig.scan(C["valid"]).result.decision.admit
    sim_input_set(f"{rig.name}-pass", False)  # the beam clears: the next admit is watched
    second = rig.scan(C["valid2"]).result.uuid
    wait_until(lambda: rig.passage(second) != "waiting", 10, "the second wait settled")
    assert rig.passage(second) == "voided"  # nobody went through: seen, so voided


@pytest.mark.lane(passage_timeout_ms=1000)
def test_one_edge_for_a_release_and_a_waiting_admit_never_voids_the_entry(
        rig: LaneRig) -> None:
    """An admit waits, a technician lets one person through, one passage edge comes: it may
    be either person's. The edge is the release's (`free`); the entry admit stands at its
    deadline (`interrupted`, unconfirmed) — voided, its ticket would be free again while its
    holder may have been the one who walked in. A release nobody walks through is only
    logged: the edge after it has gone is an alarm again."""
    desk = ReleaseDesk(lambda: {rig.lane.name: rig.runner}, lambda: None)
    admit = rig.scan(C["valid"])
    assert admit.result.decision.admit
    desk.manual(rig.lane.name, None, "tech-2")
    sim_input_pulse(f"{rig.name}-pass")
    wait_until(lambda: rig.runner.passage.totals["free"] == 1, 10, "the released passage")
    wait_until(lambda: rig.passage(admit.result.uuid) != "waiting", 10, "the deadline")
    assert rig.passage(admit.result.uuid) == "interrupted"
    assert rig.scan_row(admit.result.uuid) == (1, "valid", None)  # the ticket stays used
    assert rig.alarms == [] and rig.runner.passage.totals["voided"] == 0
    desk.manual(rig.lane.name, None, "tech-2")  # nobody walks through this one
    wait_until(lambda: not rig.runner.passage.releases["in"], 10, "the release expired")
    sim_input_pulse(f"{rig.name}-pass")
    wait_until(lambda: rig.alarms == [(rig.lane.name, "forced")], 10, "a forced passage")
    assert rig.runner.passage.totals["free"] == 1


def test_one_edge_for_a_release_and_a_waiting_exit_voids_the_exit(rigs: Any) -> None:
    """The exit's side: taking the one edge as the exit's would be the guess that frees the
    ticket (its holder read as outside); the exit is voided as any exit nobody saw."""
    rig = rigs("relexit", direction="auto", zone_id=demo_data.FLOOR_ZONE, max_entries=0,
               relay="", relay_out="sim:relexit-out", passage_out="sim:relexit-pout",
               passage_timeout_ms=1000)
    desk = ReleaseDesk(lambda: {rig.lane.name: rig.runner}, lambda: None)
    exit_ = in_then_out(rig)
    desk.manual(rig.lane.name, None, "tech-3")  # relay_out: the released person goes out
    sim_input_pulse(f"{rig.name}-pout")
    wait_until(lambda: rig.runner.passage.totals["free"] == 1, 10, "the released passage")
    wait_until(lambda: rig.passage(exit_.result.uuid) != "waiting", 10, "the deadline")
    assert rig.passage(exit_.result.uuid) == "voided"
    assert rig.scan_row(exit_.result.uuid) == (0, "denied", "notPassed")
    assert rig.alarms == []
    again = rig.scan(C["floor"]).result.decision
    assert (again.direction, again.admit) == ("out", True)  # still inside: an exit again


def test_the_emergency_input_says_active_only_once_the_lanes_are_released() -> None:
    """Status reads `active` (reason emergency_release) and the lanes' `released_by` apart:
    `active` changes after the lanes are released (or shut again), so a report that says the
    release is on never shows a lane not yet held open (seen in a suite run: [[], []])."""
    seen: list[tuple[bool, bool]] = []
    fire = EmergencyInput("gpio:/dev/gpiochip9:1",
                          lambda active: seen.append((active, fire.active)))
    fire._on_change(fire.url, True, 0)
    fire._on_change(fire.url, False, 0)
    assert seen == [(True, False), (False, True)]  # the lanes told while `active` is the old
    assert fire.active is False
