"""A relay that failed and works again clears `relay_error` by itself, and says so once.

Before, only the next admit's pulse cleared it: on a lane nobody scanned at (night, an exit
relay that opens rarely) status stayed `fail` with the board long back. Each relay kind goes
through its real driver down to its boundary (the `board` fixture of test_release_hold.py:
`sim:`, `gpio:` through the fake gpiod, `serialrelay:` on a pty); real lane thread, SQLite
journal and cache (tests/runtime/lanerig.py). The probe's period is shortened for the test."""

from __future__ import annotations

import logging
import time

import pytest

from agent import demo_data
from agent.runtime import relaywatch
from drivers.sim import sim_relay
from tests.conftest import DemoSite
from tests.rigs import wait_until
from tests.runtime.lanerig import LaneRig
from tests.runtime.test_release_hold import RelayBoard, board, reasons  # noqa: F401

C = demo_data.CODES
PROBE_S = 0.1


def works_again(caplog: pytest.LogCaptureFixture, url: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if "works again" in r.getMessage() and url in r.getMessage()]


def test_a_relay_back_clears_relay_error_without_an_admit_and_logs_it_once(
        site: DemoSite, board: RelayBoard, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(relaywatch, "RELAY_PROBE_S", PROBE_S)
    caplog.set_level(logging.INFO)
    rig = LaneRig(site, "probed", relay=board.url)
    try:
        board.pull()  # the board goes away: the next admit cannot open the gate
        refused = rig.scan(C["valid"])
        assert not refused.pulsed and not refused.result.decision.admit
        assert reasons(rig)["relay_error"][0] == "fail"
        time.sleep(10 * PROBE_S)  # probes meanwhile fail: the reason stays, nothing logged
        assert "relay_error" in reasons(rig) and works_again(caplog, board.url) == []

        board.back()  # no scan after this: only the probe can find it back
        wait_until(lambda: "relay_error" not in reasons(rig), 10, "relay_error cleared")
        relay = rig.runner.get_status()["relay"]
        assert (relay["ok"], relay["last_error"]) == (True, "")
        assert rig.runner.relay_error is None
        assert not board.on(), "a probe switched the relay on (it may only drive it off)"
        time.sleep(10 * PROBE_S)
        assert len(works_again(caplog, board.url)) == 1, works_again(caplog, board.url)

        admitted = rig.scan(C["valid"])  # voided above, so usable: admitted and opened
        assert admitted.result.decision.admit and admitted.pulsed
        assert len(works_again(caplog, board.url)) == 1
    finally:
        board.back()
        rig.close()


def test_a_good_pulse_after_a_failed_one_is_logged_once(
        site: DemoSite, caplog: pytest.LogCaptureFixture) -> None:
    """The default probe period: the admit's pulse finds the relay back, and says so."""
    caplog.set_level(logging.INFO)
    rig = LaneRig(site, "pulsed")
    url = rig.lane.relay
    assert url is not None
    try:
        sim_relay(f"{rig.name}-relay").fail_next = 1  # the board refuses one pulse
        assert not rig.scan(C["valid"]).pulsed
        assert "relay_error" in reasons(rig) and works_again(caplog, url) == []
        again = rig.scan(C["valid"])
        assert again.pulsed and again.result.decision.admit
        assert "relay_error" not in reasons(rig) and rig.runner.relay_error is None
        assert len(works_again(caplog, url)) == 1
    finally:
        rig.close()


def test_a_relay_back_during_a_release_is_said_once(
        site: DemoSite, board: RelayBoard, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    """Found back by the release's hold: "held open again", and no second line for the same
    return when the release ends and the probe runs again."""
    monkeypatch.setattr(relaywatch, "RELAY_PROBE_S", PROBE_S)
    caplog.set_level(logging.INFO)
    rig = LaneRig(site, "heldback", relay=board.url)
    try:
        rig.runner.set_release("emergency", True)
        board.pull()
        wait_until(lambda: "release_not_held" in reasons(rig), 10, "release_not_held")
        board.back()
        wait_until(lambda: "release_not_held" not in reasons(rig), 10, "held again")
        rig.runner.set_release("emergency", False)
        time.sleep(10 * PROBE_S)
        assert "relay_error" not in reasons(rig) and rig.runner.relay_error is None
        held = [r.getMessage() for r in caplog.records if "held open again" in r.getMessage()]
        assert len(held) == 1 and works_again(caplog, board.url) == []
    finally:
        board.back()
        rig.close()
