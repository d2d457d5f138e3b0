"""Relays that open the turnstile: `gpio:` (libgpiod v2) and `serialrelay:` (USB relay boards).

`gpio:/dev/gpiochip0:17?active_low=1`
    Line 17 of the chip, requested as an output through PyPI `gpiod` 2.x (the libgpiod v2 API;
    Debian's python3-libgpiod is the incompatible v1). `active_low=1` for relay modules that
    switch on a low level (most opto-isolated boards). The line is requested with its
    initial value inactive, so the relay is off from the first instant we own it.

`serialrelay:///dev/ttyUSB0?channel=1&baud=9600`
    The common CH340-based "LCUS-1/2/4" USB relay boards. Each command is 4 bytes::

        0xA0  <channel 1..8>  <0x00 off | 0x01 on>  <checksum = (0xA0 + channel + state) & 0xFF>

    e.g. channel 1 on = `A0 01 01 A2`, off = `A0 01 00 A1`. The board does not answer, so a
    write that succeeds is all the confirmation there is. Boards with other command sets are
    not supported (yet).
"""

from __future__ import annotations

import logging
from typing import Any

import serial

from agent.errors import DriverUnavailable
from drivers.base import Output
from drivers.gpio_lines import release_quietly, request_line, require_gpiod, split_chip_line
from drivers.registry import parse_url
from drivers.serial_scanner import close_quietly, open_reason, serial_hint

log = logging.getLogger(__name__)


def lcus_command(channel: int, on: bool) -> bytes:
    """The 4-byte LCUS command switching `channel` on or off."""
    if not 1 <= channel <= 8:
        raise ValueError("channel must be 1..8")
    state = 1 if on else 0
    return bytes([0xA0, channel, state, (0xA0 + channel + state) & 0xFF])


class SerialRelay(Output):
    """A USB serial relay board speaking the LCUS protocol (see the module docstring)."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url)
        parsed = parse_url(url)
        if not parsed.path:
            raise DriverUnavailable(url, "no port path", "e.g. serialrelay:///dev/ttyUSB0?channel=1")
        self.port = parsed.path
        self.baud = parsed.number(url, "baud", 9600)
        self.channel = parsed.number(url, "channel", 1)
        if not 1 <= self.channel <= 8:
            raise DriverUnavailable(url, f"channel={self.channel} is out of range", "use 1..8")
        self._serial: serial.Serial | None = None

    def _open(self) -> None:
        try:
            self._serial = serial.Serial(self.port, self.baud, timeout=1, write_timeout=1)
        except serial.SerialException as exc:
            raise DriverUnavailable(self.url, f"cannot open {self.port}: {open_reason(exc)}",
                                    serial_hint(exc)) from exc

    def _set(self, on: bool) -> None:
        if self._serial is None:
            raise OSError(f"{self.port} is not open")
        self._serial.write(lcus_command(self.channel, on))
        self._serial.flush()

    def _close(self) -> None:
        port, self._serial = self._serial, None
        close_quietly(port, self.url)

    def hint(self, exc: BaseException) -> str:
        return serial_hint(exc)


class GpioRelay(Output):
    """One GPIO line driving a relay module, through libgpiod v2 (`gpiod` 2.x)."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url)
        parsed = parse_url(url)
        self.chip, self.line = split_chip_line(url, parsed.path)
        self.active_low = parsed.flag("active_low")
        self._request: Any = None
        require_gpiod(url)

    def _open(self) -> None:
        import gpiod
        from gpiod.line import Direction, Value

        settings = gpiod.LineSettings(
            direction=Direction.OUTPUT, output_value=Value.INACTIVE, active_low=self.active_low
        )
        self._request = request_line(self.url, self.chip, self.line, settings)

    def _set(self, on: bool) -> None:
        from gpiod.line import Value

        if self._request is None:
            raise OSError(f"{self.chip} line {self.line} is not requested")
        self._request.set_value(self.line, Value.ACTIVE if on else Value.INACTIVE)

    def _close(self) -> None:
        request, self._request = self._request, None
        release_quietly(request, self.url)
