"""Lane pairings in devices.json: atomic, private, validated, merged over the config file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.errors import ConfigError
from agent.runtime import bindings


def _config(store: Path):  # type: ignore[no-untyped-def]
    return parse_config({
        "store": {"dir": str(store)},
        "lanes": [
            {"name": "lane1", "readers": ["serial:///dev/ttyACM0"], "relay": "gpio:/dev/gpiochip0:17"},
            {"name": "lane2"},
        ],
    })


def test_absent_file_means_no_pairings(tmp_path: Path) -> None:
    assert bindings.load_bindings(tmp_path) == {}
    cfg = _config(tmp_path)
    assert bindings.effective_lanes(cfg) == cfg.lanes


def test_pair_is_persisted_private_and_merged(tmp_path: Path) -> None:
    bindings.pair(tmp_path, "lane1", "nfc:usb", "reader")
    bindings.pair(tmp_path, "lane1", "nfc:usb", "reader")  # twice: still once
    bindings.pair(tmp_path, "lane1", "serial:///dev/ttyACM0", "reader")  # already in config
    bindings.pair(tmp_path, "lane2", "serialrelay:///dev/ttyUSB0?channel=1", "relay")
    path = tmp_path / "devices.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["devices.json"], "temp file left behind"
    lane1, lane2 = bindings.effective_lanes(_config(tmp_path))
    assert lane1.readers == ("serial:///dev/ttyACM0", "nfc:usb")
    assert lane1.relay == "gpio:/dev/gpiochip0:17"
    assert lane2.readers == () and lane2.relay == "serialrelay:///dev/ttyUSB0?channel=1"


def test_paired_relay_replaces_configured_relay(tmp_path: Path) -> None:
    bindings.pair(tmp_path, "lane1", "sim:lane1", "relay")
    assert bindings.effective_lanes(_config(tmp_path))[0].relay == "sim:lane1"


def test_unpair_removes_and_reports_absence(tmp_path: Path) -> None:
    bindings.pair(tmp_path, "lane1", "nfc:usb", "reader")
    assert bindings.unpair(tmp_path, "lane1", "nfc:usb") is True
    assert bindings.unpair(tmp_path, "lane1", "nfc:usb") is False
    assert bindings.load_bindings(tmp_path) == {}


def test_stale_lane_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bindings.pair(tmp_path, "old-lane", "nfc:usb", "reader")
    lanes = bindings.effective_lanes(_config(tmp_path))
    assert [lane.name for lane in lanes] == ["lane1", "lane2"]
    assert "old-lane" in caplog.text


@pytest.mark.parametrize("content", ["{not json", "[]", '{"lanes": {"l": {"readers": "x"}}}'])
def test_damaged_file_is_a_config_error_naming_it(tmp_path: Path, content: str) -> None:
    (tmp_path / "devices.json").write_text(content)
    with pytest.raises(ConfigError, match="devices.json"):
        bindings.load_bindings(tmp_path)
