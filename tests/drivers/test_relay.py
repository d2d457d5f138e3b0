"""Relay specifics beyond the Output contract: the LCUS byte protocol, gpiod line settings
(through a fake at `gpiod.request_lines`: no gpio-sim here), URL validation, missing devices."""

from __future__ import annotations

from pathlib import Path

import gpiod
import pytest

from agent.errors import DriverUnavailable
from drivers import open_output
from drivers.relay import GpioRelay, lcus_command
from tests.drivers.conftest import PtyDevice
from tests.drivers.fake_gpiod import FakeGpiod


def test_lcus_commands_match_the_board_documentation() -> None:
    assert lcus_command(1, True) == bytes.fromhex("A00101A2")
    assert lcus_command(1, False) == bytes.fromhex("A00100A1")
    assert lcus_command(4, True) == bytes.fromhex("A00401A5")
    with pytest.raises(ValueError):
        lcus_command(9, True)


def test_serial_relay_sends_on_then_off_for_its_channel(pty_device: PtyDevice) -> None:
    out = open_output(f"serialrelay://{pty_device.path}?channel=3")
    try:
        assert pty_device.read_available() == lcus_command(3, False)
        out.pulse(30)
        got = pty_device.read_available(1.0)
        while len(got) < 8:
            got += pty_device.read_available(1.0)
        assert got == lcus_command(3, True) + lcus_command(3, False)
    finally:
        out.close()


def test_serial_relay_channel_out_of_range_is_rejected() -> None:
    with pytest.raises(DriverUnavailable, match="channel=9"):
        open_output("serialrelay:///dev/ttyUSB0?channel=9", connect=False)


def test_missing_serial_relay_port_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DriverUnavailable) as info:
        open_output(f"serialrelay://{tmp_path}/ttyUSB7")
    assert "plugged in" in info.value.hint


def test_gpio_requests_an_output_that_starts_inactive(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeGpiod()
    monkeypatch.setattr(gpiod, "request_lines", fake.request_lines)
    out = open_output("gpio:/dev/gpiochip0:17?active_low=1")
    assert isinstance(out, GpioRelay)
    req = fake.last
    assert (req.path, req.offset, req.consumer) == ("/dev/gpiochip0", 17, "gate-agent")
    assert req.settings.active_low is True
    assert req.settings.output_value == gpiod.line.Value.INACTIVE
    out.close()
    assert req.released and not req.active


def test_gpio_default_is_active_high(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeGpiod()
    monkeypatch.setattr(gpiod, "request_lines", fake.request_lines)
    open_output("gpio:/dev/gpiochip0:4").close()
    assert fake.last.settings.active_low is False


def test_missing_gpio_chip_is_unavailable() -> None:
    """Real libgpiod, a chip that does not exist: a clear message, not an OSError."""
    with pytest.raises(DriverUnavailable, match="no GPIO chip /dev/gpiochip99"):
        open_output("gpio:/dev/gpiochip99:17")


@pytest.mark.parametrize("url", ["gpio:/dev/gpiochip0", "gpio:/dev/gpiochip0:x", "gpio::4"])
def test_malformed_gpio_urls_are_rejected(url: str) -> None:
    with pytest.raises(DriverUnavailable, match="gpio:CHIP:LINE"):
        open_output(url, connect=False)
