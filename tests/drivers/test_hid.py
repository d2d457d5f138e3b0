"""Keyboard-wedge scanners. There is no /dev/input or /dev/uinput on these machines, so the
decoder is tested with synthetic `evdev.InputEvent`s and the reader only for its failure path."""

from __future__ import annotations

from pathlib import Path

import pytest
from evdev import InputEvent, ecodes

from agent.errors import DriverUnavailable
from drivers import open_reader
from drivers.hid import KeyDecoder


def key(code: int, value: int) -> InputEvent:
    return InputEvent(0, 0, ecodes.EV_KEY, code, value)


def tap(code: int) -> list[InputEvent]:
    return [key(code, 1), InputEvent(0, 0, ecodes.EV_SYN, ecodes.SYN_REPORT, 0), key(code, 0)]


def test_shift_gives_capitals_and_symbols_and_is_released() -> None:
    events = [key(ecodes.KEY_RIGHTSHIFT, 1), *tap(ecodes.KEY_A), *tap(ecodes.KEY_1),
              key(ecodes.KEY_RIGHTSHIFT, 0), *tap(ecodes.KEY_A), *tap(ecodes.KEY_MINUS),
              *tap(ecodes.KEY_KP7), *tap(ecodes.KEY_ENTER)]
    assert KeyDecoder().feed_all(events) == ["A!a-7"]


def test_kp_enter_ends_a_line_and_blank_lines_are_dropped() -> None:
    events = [*tap(ecodes.KEY_KPENTER), *tap(ecodes.KEY_9), *tap(ecodes.KEY_KPENTER)]
    assert KeyDecoder().feed_all(events) == ["9"]


def test_autorepeat_and_unknown_keys_type_nothing() -> None:
    events = [key(ecodes.KEY_B, 1), key(ecodes.KEY_B, 2), key(ecodes.KEY_B, 2),
              key(ecodes.KEY_B, 0), *tap(ecodes.KEY_F5), *tap(ecodes.KEY_TAB),
              *tap(ecodes.KEY_C), *tap(ecodes.KEY_ENTER)]
    assert KeyDecoder().feed_all(events) == ["bc"]


def test_overlong_line_is_discarded_whole() -> None:
    dec = KeyDecoder(max_len=5)
    events = [e for _ in range(8) for e in tap(ecodes.KEY_X)] + tap(ecodes.KEY_ENTER)
    events += tap(ecodes.KEY_Y) + tap(ecodes.KEY_ENTER)
    assert dec.feed_all(events) == ["y"]


def test_missing_input_device_is_unavailable(tmp_path: Path) -> None:
    url = f"hid:{tmp_path}/usb-Scanner-event-kbd"
    with pytest.raises(DriverUnavailable) as info:
        open_reader(url).probe()
    assert info.value.url == url and "plugged in" in info.value.hint
