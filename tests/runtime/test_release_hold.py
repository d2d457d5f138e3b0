"""An emergency release keeps every relay held open, whatever the relay board does meanwhile.

A relay board that resets, or whose device goes away and comes back, powers up off: the gate
shut during a fire release, while status said the release held. Each relay kind is driven
through its real driver down to its boundary: `sim:` (a real Output, `sim_unplug` makes it
fail), `gpio:` through the FAKE of tests/drivers/fake_gpiod.py at `gpiod.request_lines` (no
gpio-sim here), and `serialrelay:` on a pty (tests/rigs.PtyDevice: `unplug` closes the master,
so the port's writes fail as on a pulled USB board, `replug` brings a fresh one under the same
path). Real lane thread, SQLite journal and cache (tests/runtime/lanerig.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import gpiod
import pytest
from gpiod.line import Value

from agent import demo_data
from agent.ops.metrics import Metrics
from agent.ops.status import evaluate
from agent.runtime.lane import manual_scan
from drivers.inputs import sim_input_pulse
from drivers.relay import lcus_command
from drivers.sim import sim_relay, sim_replug, sim_unplug
from tests.conftest import DemoSite
from tests.drivers.fake_gpiod import FakeGpiod
from tests.rigs import PtyDevice, wait_until
from tests.runtime.lanerig import LaneRig

C = demo_data.CODES
CHIP = "/dev/gpiochip0"


class RelayBoard:
    """One relay kind behind a lane: its URL, whether it is on now, and the board's faults."""

    def __init__(self, url: str, on: Callable[[], bool], reset: Callable[[], None],
                 pull: Callable[[], None], back: Callable[[], None]) -> None:
        self.url, self.on, self.reset, self.pull, self.back = url, on, reset, pull, back


def sim_board(name: str) -> RelayBoard:
    def reset() -> None:
        sim_relay(name).state = False  # powered up off, nothing written to it

    return RelayBoard(f"sim:{name}", lambda: sim_relay(name).state, reset,
                      lambda: sim_unplug(name), lambda: sim_replug(name))


def gpio_board(fake: FakeGpiod) -> RelayBoard:
    def reset() -> None:
        fake.last.values.append(Value.INACTIVE)  # the expander reset: its outputs are low

    def pull() -> None:
        fake.last.fail_on_active = True  # the chip is gone: writes fail ...
        fake.chips = ()  # ... and it cannot be requested again

    def back() -> None:
        fake.chips = (CHIP,)

    return RelayBoard(f"gpio:{CHIP}:17", lambda: fake.last.active and not fake.last.released,
                      reset, pull, back)


def serial_board(pty: PtyDevice) -> RelayBoard:
    written = bytearray()
    on_cmd, off_cmd = lcus_command(1, True), lcus_command(1, False)

    def on() -> bool:
        if pty.master is None:
            return False
        written.extend(pty.read_available(0.05))
        last_on, last_off = written.rfind(on_cmd), written.rfind(off_cmd)
        return last_on > last_off

    def reset() -> None:
        written.extend(pty.read_available(0.05))
        written.extend(off_cmd)  # as if the board had switched off by itself

    def back() -> None:
        written.clear()
        pty.replug()

    return RelayBoard(f"serialrelay://{pty.path}?channel=1", on, reset, pty.unplug, back)


@pytest.fixture(params=["sim", "gpio", "serial"])
def board(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
          tmp_path: Path) -> Iterator[RelayBoard]:
    if request.param == "sim":
        yield sim_board("held-relay")
    elif request.param == "gpio":
        fake = FakeGpiod()
        monkeypatch.setattr(gpiod, "request_lines", fake.request_lines)
        yield gpio_board(fake)
    else:
        pty = PtyDevice(tmp_path)
        yield serial_board(pty)
        pty.unplug()


def reasons(rig: LaneRig) -> dict[str, tuple[str, str]]:
    _health, found = evaluate({"lanes": [rig.runner.get_status()],
                               "cache": {"events": [{"items": 1}]}}, datetime.now(UTC), 1e9)
    return {r.code: (r.level, r.message) for r in found}


def not_held_metric(rig: LaneRig, url: str) -> str:
    text = Metrics(lambda: {"lanes": [rig.runner.get_status()]},
                   lambda: datetime.now(UTC)).render().decode()
    prefix = f'gate_release_not_held{{lane="north-in",relay="{url}"}} '
    return next(line for line in text.splitlines() if line.startswith(prefix))[len(prefix):]


def test_a_held_relay_that_resets_or_vanishes_is_held_again_and_status_says_so(
        site: DemoSite, board: RelayBoard) -> None:
    rig = LaneRig(site, "held", relay=board.url)
    try:
        rig.runner.set_release("emergency", True)
        assert board.on() and reasons(rig).get("release_not_held") is None
        assert not_held_metric(rig, board.url) == "0.0"
        # The board resets (its supply dipped) and powers up off; the device stays.
        board.reset()
        wait_until(board.on, 10, "a board that reset held again")
        # The device goes away: status tells the truth, naming the lane and the relay.
        board.pull()
        wait_until(lambda: "release_not_held" in reasons(rig), 10,
                   "status to stop showing the release holding")
        level, message = reasons(rig)["release_not_held"]
        assert level == "fail" and "lane north-in" in message and board.url in message
        assert not_held_metric(rig, board.url) == "1.0"
        assert rig.runner.get_status()["released_by"] == ["emergency"]
        # It comes back (powered up off): held open again, without a restart or a scan.
        board.back()
        wait_until(board.on, 10, "the relay back held again")
        wait_until(lambda: "release_not_held" not in reasons(rig), 10, "the reason cleared")
        assert not_held_metric(rig, board.url) == "0.0"
        assert rig.runner.relay is not None and rig.runner.relay.held
        rig.runner.set_release("emergency", False)
        wait_until(lambda: not board.on(), 10, "the gate shut at the release's end")
    finally:
        rig.close()


@pytest.mark.lane(relay_pulse_ms=1000, passage_timeout_ms=10000)
def test_an_admit_pulsed_while_held_keeps_its_opening_when_the_release_ends(
        rig: LaneRig) -> None:
    """The race at a release's edges: a scan decided before the release began pulses a held
    relay (which ignores it), and the release ends at once: the relay used to drop at that
    instant, the admitted person shut out mid-way while the admit counted. Now the relay
    stays on for the rest of that pulse."""
    relay = sim_relay(f"{rig.name}-relay")
    with rig.runner.passage.opening():  # the lane decides and journals, then waits here
        rig.runner.submit(manual_scan(C["valid"], rig.lane.name))
        wait_until(lambda: rig.db.execute(
            "SELECT COUNT(*) FROM scans WHERE admit = 1").fetchone()[0] == 1, 10,
            "the admit journaled")
        rig.runner.set_release("emergency", True)  # the fire panel, in that instant
        assert relay.state is True
    event = rig.events.get(timeout=10)
    assert event.result.decision.admit and event.pulsed
    rig.runner.set_release("emergency", False)
    wait_until(lambda: relay.state is False, 10, "the owed pulse to end")
    pulsed_ns = relay.pulses[-1]["mono_ns"]
    off_ns = relay.history[-1][0]
    assert off_ns - pulsed_ns >= (1000 - 100) * 1_000_000, \
        f"the gate shut {(off_ns - pulsed_ns) / 1e6:.0f} ms after the admit's pulse"
    sim_input_pulse(f"{rig.name}-pass")  # the person walks through in that opening
    wait_until(lambda: rig.passage(event.result.uuid) == "passed", 10, "the passage")
    assert rig.scan_row(event.result.uuid) == (1, "valid", None)


def test_a_relay_not_held_during_a_release_is_one_reason_not_two(site: DemoSite) -> None:
    """While a held relay's device is gone, status said both `release_not_held` and
    `relay_error`, whose words ("admits are refused") do not fit a release. One cause, one
    reason: release_not_held during the release; relay_error again once the release has
    ended with the relay still gone (then admits are what it stops)."""
    board = sim_board("unheld-relay")
    rig = LaneRig(site, "unheld", relay=board.url)
    try:
        rig.runner.set_release("emergency", True)
        board.pull()
        wait_until(lambda: "release_not_held" in reasons(rig), 10, "release_not_held")
        assert rig.runner.get_status()["relay"]["ok"] is False  # the relay is down ...
        assert "relay_error" not in reasons(rig)  # ... and said once, by release_not_held
        rig.runner.set_release("emergency", False)
        wait_until(lambda: "relay_error" in reasons(rig), 10, "relay_error after the release")
        assert "release_not_held" not in reasons(rig)
        assert "admits are refused" in reasons(rig)["relay_error"][1]
    finally:
        board.back()
        rig.close()
