"""Issue 11 item 6: one release per direction, so an exit never opens the way in.

Relays are the `sim:` driver (a real Output whose pulses are recorded): no relay hardware here.
"""

from __future__ import annotations

import json
import queue
from pathlib import Path

import pytest

from agent import demo_data
from agent.config import LaneConfig, parse_config
from agent.errors import ConfigError
from agent.runtime import bindings
from agent.runtime.gate import Gate
from agent.runtime.lane import LaneEvent, LaneRunner, manual_scan
from agent.runtime.opening import open_cache, open_journal
from drivers.sim import sim_relay, sim_reset
from tests.conftest import DemoSite

C = demo_data.CODES


def lanes_config(**lane: object) -> dict[str, object]:
    return {"lanes": [{"name": "l", **lane}]}


@pytest.mark.parametrize("direction", ["auto", "out"])
def test_exit_lane_with_only_the_entry_relay_is_a_config_error(direction: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(lanes_config(direction=direction, relay="sim:a"), "c.toml")
    assert err.value.key == "lanes[0].relay_out"
    assert "relay_both_directions" in str(err.value)


def test_relay_keys_that_contradict_each_other_are_refused() -> None:
    cases = [
        ({"direction": "auto", "relay": "sim:a", "relay_out": "sim:b",
          "relay_both_directions": True}, "lanes[0].relay_both_directions"),
        ({"direction": "auto", "relay_both_directions": True}, "lanes[0].relay_both_directions"),
        ({"direction": "in", "relay": "sim:a", "relay_out": "sim:b"}, "lanes[0].relay_out"),
    ]
    for lane, key in cases:
        with pytest.raises(ConfigError) as err:
            parse_config(lanes_config(**lane), "c.toml")
        assert err.value.key == key


def test_accepted_relay_layouts() -> None:
    for lane in ({"direction": "auto", "relay": "sim:a", "relay_out": "sim:b"},
                 {"direction": "out", "relay_out": "sim:b"},
                 {"direction": "auto", "relay": "sim:a", "relay_both_directions": True},
                 {"direction": "in", "relay": "sim:a"}):
        parse_config(lanes_config(**lane), "c.toml")


def test_a_paired_entry_relay_on_an_exit_lane_is_refused(tmp_path: Path) -> None:
    config = parse_config({"store": {"dir": str(tmp_path)},
                           **lanes_config(direction="out")}, "c.toml")
    bindings.pair(tmp_path, "l", "sim:paired", "relay")
    with pytest.raises(ConfigError) as err:
        bindings.effective_lanes(config)
    assert err.value.key == "lanes.l.relay_out" and "devices.json" in str(err.value.path)
    bindings.unpair(tmp_path, "l", "sim:paired")
    bindings.pair(tmp_path, "l", "sim:paired-out", "relay_out")
    assert bindings.effective_lanes(config)[0].relay_out == "sim:paired-out"


def run_lane(site: DemoSite, lane: LaneConfig, codes: list[str]) -> list[LaneEvent]:
    sim_reset()
    events: queue.Queue[LaneEvent] = queue.Queue()
    gate = Gate(open_cache(site.config), open_journal(site.config), site.config)
    runner = LaneRunner(lane, gate, events.put)
    runner.start()
    try:
        out = []
        for code in codes:
            runner.submit(manual_scan(code, lane.name))
            out.append(events.get(timeout=10))
        return out
    finally:
        runner.stop()
        gate.close()


def test_auto_lane_pulses_the_release_of_each_direction(site: DemoSite, tmp_path: Path) -> None:
    log = tmp_path / "relays.jsonl"
    lane = LaneConfig(name="floor", zone_id=demo_data.FLOOR_ZONE, direction="auto",
                      max_entries=0, debounce_ms=0, relay=f"sim:in?log={log}",
                      relay_out=f"sim:out?log={log}")
    events = run_lane(site, lane, [C["floor"], C["floor"], C["floor"]])
    assert [(e.result.decision.direction, e.pulsed) for e in events] == \
        [("in", True), ("out", True), ("in", True)]
    pulsed = [json.loads(line)["relay"] for line in log.read_text().splitlines()]
    assert pulsed == ["in", "out", "in"]  # the exit never pulsed the entry relay


def test_without_an_exit_release_an_exit_pulses_nothing(site: DemoSite) -> None:
    """A lane built in code (no config check) with only an entry relay: the exit is recorded
    but the entry relay stays shut."""
    lane = LaneConfig(name="floor", zone_id=demo_data.FLOOR_ZONE, direction="auto",
                      max_entries=0, debounce_ms=0, relay="sim:only")
    events = run_lane(site, lane, [C["floor"], C["floor"]])
    assert [(e.result.decision.direction, e.result.decision.admit, e.pulsed)
            for e in events] == [("in", True, True), ("out", True, False)]
    assert len(sim_relay("only").pulses) == 1


def test_direction_neutral_relay_is_an_explicit_choice(site: DemoSite) -> None:
    lane = LaneConfig(name="floor", zone_id=demo_data.FLOOR_ZONE, direction="auto",
                      max_entries=0, debounce_ms=0, relay="sim:both",
                      relay_both_directions=True)
    events = run_lane(site, lane, [C["floor"], C["floor"]])
    assert [e.pulsed for e in events] == [True, True]
    assert len(sim_relay("both").pulses) == 2
