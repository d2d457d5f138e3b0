"""Open readers and outputs by URL through a lazy registry keyed by the URL's scheme.

Like python-can's `can.interface`, the backend module is imported only when its scheme is used,
so a machine without `gpiod` can still run NFC lanes; a missing library becomes one clear
`DriverUnavailable` naming the URL, the package and the pip command, never an ImportError.

URL forms (see docs/hardware.md)::

    nfc:usb  nfc:usb:072f:2200  nfc:tty:USB0:pn532  nfc:udp:127.0.0.1:54321   [?ndef=1&targets=106A]
    serial:///dev/ttyACM0?baud=9600      hid:/dev/input/by-id/...-event-kbd
    gpio:/dev/gpiochip0:17?active_low=1  serialrelay:///dev/ttyUSB0?channel=1
    sim:lane1[?socket=/run/gate-agent/sim.sock]   (reader)   sim:lane1[?log=/tmp/pulses.jsonl] (relay)
    inputs:   gpio:/dev/gpiochip0:22?active_low=1  serial:///dev/ttyUSB0?line=cts  sim:pass1
    displays: serial:///dev/ttyUSB1?baud=9600  sim:display1
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from agent.errors import DriverUnavailable
from drivers.base import Output, Reader


@dataclass(frozen=True)
class Backend:
    """Where a scheme's class lives and what to install when its library is missing."""

    module: str
    cls: str
    package: str
    install: str


READERS: dict[str, Backend] = {
    "nfc": Backend("drivers.nfc", "NfcReader", "nfcpy", "pip install nfcpy"),
    "serial": Backend("drivers.serial_scanner", "SerialReader", "pyserial", "pip install pyserial"),
    "hid": Backend("drivers.hid", "HidReader", "evdev", "pip install gate-agent[hid]"),
    "sim": Backend("drivers.sim", "SimReader", "", ""),
}

OUTPUTS: dict[str, Backend] = {
    "gpio": Backend("drivers.relay", "GpioRelay", "gpiod", "pip install gate-agent[gpio]"),
    "serialrelay": Backend("drivers.relay", "SerialRelay", "pyserial", "pip install pyserial"),
    "sim": Backend("drivers.sim", "SimRelay", "", ""),
}

# Contact inputs (passage pulses, door contacts, the fire panel) and text displays (issue 17).
INPUTS: dict[str, Backend] = {
    "gpio": Backend("drivers.inputs", "GpioInput", "gpiod", "pip install gate-agent[gpio]"),
    "serial": Backend("drivers.inputs", "ModemLineInput", "pyserial", "pip install pyserial"),
    "sim": Backend("drivers.inputs", "SimInput", "", ""),
}

DISPLAYS: dict[str, Backend] = {
    "serial": Backend("drivers.display", "SerialDisplay", "pyserial", "pip install pyserial"),
    "sim": Backend("drivers.display", "SimDisplay", "", ""),
}

RELAY_SCHEMES = frozenset({"gpio", "serialrelay"})


@dataclass(frozen=True)
class ParsedUrl:
    """`scheme:rest?query` split up; `path` has a leading `//` removed (`serial:///dev/x`)."""

    scheme: str
    path: str
    query: dict[str, str]

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.query.get(key)
        if value is None:
            return default
        return value.lower() in ("1", "true", "yes", "on")

    def number(self, url: str, key: str, default: int) -> int:
        value = self.query.get(key)
        if value is None:
            return default
        try:
            return int(value, 0)
        except ValueError:
            raise DriverUnavailable(url, f"option {key}={value!r} is not a whole number") from None


def parse_url(url: str) -> ParsedUrl:
    """Split a driver URL; DriverUnavailable when there is no `scheme:` part."""
    scheme, sep, rest = url.partition(":")
    if not sep or not scheme.isalnum():
        raise DriverUnavailable(url, "not a driver URL (expected scheme:..., e.g. serial:///dev/ttyACM0)")
    rest, _, raw_query = rest.partition("?")
    if rest.startswith("//"):
        rest = rest[2:]
    query = {k: v[-1] for k, v in parse_qs(raw_query, keep_blank_values=True).items()}
    return ParsedUrl(scheme.lower(), rest, query)


def sim_url(url: str) -> ParsedUrl:
    """A `sim:NAME[?...]` URL split up; DriverUnavailable when NAME is missing."""
    parsed = parse_url(url)
    if not parsed.path:
        raise DriverUnavailable(url, "sim needs a name", "e.g. sim:lane1")
    return parsed


def scheme_of(url: str) -> str:
    return url.partition(":")[0].lower()


def default_role(url: str) -> str:
    """`relay` for relay-only schemes, `reader` otherwise (sim: is both; reader by default)."""
    return "relay" if scheme_of(url) in RELAY_SCHEMES else "reader"


def _load(url: str, table: dict[str, Backend], what: str) -> type:
    scheme = parse_url(url).scheme
    backend = table.get(scheme)
    if backend is None:
        known = ", ".join(f"{s}:" for s in sorted(table))
        raise DriverUnavailable(url, f"unknown {what} scheme {scheme + ':'!r}", f"known: {known}")
    try:
        module = importlib.import_module(backend.module)
    except ImportError as exc:
        package = backend.package or exc.name or "?"
        raise DriverUnavailable(
            url, f"python package {package} is not installed", backend.install
        ) from exc
    cls: type = getattr(module, backend.cls)
    return cls


def open_reader(url: str, **options: Any) -> Reader:
    """Build the reader for `url` (the device is opened later, by `start`, `probe` or `read_one`).

    `options` go to the reader's constructor (e.g. `backoff_initial`, `backoff_max`).
    """
    cls = _load(url, READERS, "reader")
    reader: Reader = cls(url, **options)
    return reader


def open_output(url: str, *, connect: bool = True, **options: Any) -> Output:
    """Build the output for `url` and `open()` it: the relay is off when this returns.

    With `connect=False` the device is not touched yet; the first `pulse` opens it (a daemon
    can start while a relay board is unplugged).
    """
    cls = _load(url, OUTPUTS, "output")
    output: Output = cls(url, **options)
    if connect:
        output.open()
    return output


def open_input(url: str, **options: Any) -> Any:
    """Build the contact input for `url` (drivers.inputs.Input); watched once started."""
    cls = _load(url, INPUTS, "input")
    return cls(url, **options)


def open_display(url: str, *, connect: bool = True, **options: Any) -> Any:
    """Build and open the text display for `url` (drivers.display.Display); with
    `connect=False` the device is not touched yet: the first text opens it."""
    cls = _load(url, DISPLAYS, "display")
    display = cls(url, **options)
    if connect:
        display.open()
    return display
