"""Opening drivers by URL: lazy imports, clear errors for unknown schemes and missing packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import DriverUnavailable
from drivers import default_role, open_output, open_reader, parse_url

ROOT = Path(__file__).resolve().parents[2]


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(DriverUnavailable) as info:
        open_reader("bluetooth:aa:bb")
    assert "unknown reader scheme 'bluetooth:'" in str(info.value)
    assert "nfc:" in info.value.hint and "serial:" in info.value.hint and "sim:" in info.value.hint


def test_relay_scheme_is_not_a_reader_and_vice_versa() -> None:
    with pytest.raises(DriverUnavailable, match="unknown reader scheme"):
        open_reader("gpio:/dev/gpiochip0:17")
    with pytest.raises(DriverUnavailable, match="unknown output scheme"):
        open_output("serial:///dev/ttyACM0")


def test_not_a_url() -> None:
    with pytest.raises(DriverUnavailable, match="not a driver URL"):
        open_reader("/dev/ttyACM0")


def test_missing_python_package_becomes_driver_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ImportError in a backend becomes a message naming the package and the pip command."""
    monkeypatch.setitem(sys.modules, "evdev", None)  # import evdev -> ImportError
    monkeypatch.delitem(sys.modules, "drivers.hid", raising=False)
    with pytest.raises(DriverUnavailable) as info:
        open_reader("hid:/dev/input/event3")
    assert info.value.reason == "python package evdev is not installed"
    assert info.value.hint == "pip install gate-agent[hid]"


def test_missing_gpiod_names_the_gpio_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiod", None)
    with pytest.raises(DriverUnavailable) as info:
        open_output("gpio:/dev/gpiochip0:17", connect=False)
    assert info.value.hint == "pip install gate-agent[gpio]"


def test_backends_are_imported_only_when_used() -> None:
    code = ("import sys, drivers; drivers.open_reader('sim:x'); "
            "print(sorted(m for m in ('nfc', 'serial', 'evdev', 'gpiod') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_parse_url_forms() -> None:
    p = parse_url("serial:///dev/ttyACM0?baud=9600")
    assert (p.scheme, p.path, p.query) == ("serial", "/dev/ttyACM0", {"baud": "9600"})
    p = parse_url("nfc:usb:072f:2200")
    assert (p.scheme, p.path) == ("nfc", "usb:072f:2200")
    p = parse_url("gpio:/dev/gpiochip0:17?active_low=1")
    assert p.path == "/dev/gpiochip0:17" and p.flag("active_low") and not p.flag("other")
    with pytest.raises(DriverUnavailable, match="baud='fast'"):
        parse_url("serial:///dev/x?baud=fast").number("serial:///dev/x?baud=fast", "baud", 9600)


@pytest.mark.parametrize(("url", "role"), [
    ("gpio:/dev/gpiochip0:17", "relay"), ("serialrelay:///dev/ttyUSB0", "relay"),
    ("serial:///dev/ttyACM0", "reader"), ("nfc:usb", "reader"), ("sim:lane1", "reader"),
])
def test_default_role_from_scheme(url: str, role: str) -> None:
    assert default_role(url) == role
