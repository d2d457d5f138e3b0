"""Find attached hardware for `gate-agent devices list`: each row carries the URL to configure.

Discovery only looks; it never writes to a device. NFC discovery therefore probes USB readers
only (nfcpy's `tty` probing sends bytes to every serial port, which could switch a relay
board). Every category degrades to an empty list plus a hint when its library or its /dev
nodes are missing, so the command works on any machine.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

# USB ids of serial relay boards (CH340 on LCUS boards); such ports get a serialrelay: URL too.
RELAY_USB_IDS = {(0x1A86, 0x7523)}
BY_ID = "/dev/serial/by-id"


@dataclass(frozen=True)
class DeviceRow:
    """One found device: the URL to put in config or `devices pair`, and what it is."""

    category: str
    url: str
    description: str
    usb_id: str = ""


@dataclass
class Category:
    name: str
    rows: list[DeviceRow]
    hint: str = ""


def _by_id_links(directory: str = BY_ID) -> dict[str, str]:
    """Map /dev/ttyXXX -> its stable /dev/serial/by-id/... link."""
    out: dict[str, str] = {}
    for link in sorted(glob.glob(os.path.join(directory, "*"))):
        out[os.path.realpath(link)] = link
    return out


def serial_ports() -> Category:
    hint = "plug in the scanner; USB-CDC scanners appear as /dev/ttyACM*, adapters as /dev/ttyUSB*"
    try:
        from serial.tools import list_ports
    except ImportError:
        return Category("serial", [], "pyserial is not installed: pip install pyserial")
    links = _by_id_links()
    rows = []
    for port in sorted(list_ports.comports(), key=lambda p: p.device):
        if port.vid is None and not port.device.startswith(("/dev/ttyACM", "/dev/ttyUSB")):
            continue  # built-in UARTs (ttyS*) with nothing behind them
        path = links.get(os.path.realpath(port.device), port.device)
        usb_id = f"{port.vid:04x}:{port.pid:04x}" if port.vid is not None else ""
        desc = " ".join(x for x in (port.manufacturer, port.product) if x) or port.description
        rows.append(DeviceRow("serial", f"serial://{path}", desc, usb_id))
        if port.vid is not None and (port.vid, port.pid) in RELAY_USB_IDS:
            rows.append(DeviceRow("relay", f"serialrelay://{path}?channel=1",
                                  f"{desc} (if this is a USB relay board)", usb_id))
    return Category("serial", rows, "" if rows else hint)


def nfc_readers() -> Category:
    try:
        import nfc
    except ImportError:
        return Category("nfc", [], "nfcpy is not installed: pip install nfcpy")
    nfc_log = logging.getLogger("nfc")
    level = nfc_log.level
    nfc_log.setLevel(logging.CRITICAL)  # nfcpy logs every probe failure at error level
    try:
        clf = nfc.ContactlessFrontend()
        try:
            found = clf.open("usb")
        except OSError as exc:
            if "libusb" in str(exc):
                return Category("nfc", [], "libusb is missing: apt install libusb-1.0-0")
            return Category("nfc", [], f"USB probing failed: {exc}")
        if not found:
            return Category("nfc", [], "no USB NFC reader (ACR122U/PN533); PN532 on UART: "
                                       "use nfc:tty:USB0:pn532 and test it with `devices test`")
        try:
            desc = str(clf.device)
            path = getattr(clf.device, "path", "") or "usb"
        finally:
            clf.close()
        return Category("nfc", [DeviceRow("nfc", f"nfc:{path}", desc)])
    finally:
        nfc_log.setLevel(level)


def input_devices() -> Category:
    hint = "keyboard-wedge scanners appear here once plugged in (needs the input group)"
    try:
        import evdev
        from evdev import ecodes
    except ImportError:
        return Category("hid", [], "evdev is not installed: pip install gate-agent[hid]")
    links = {os.path.realpath(p): p for p in glob.glob("/dev/input/by-id/*-event-kbd")}
    rows = []
    for path in sorted(evdev.list_devices()):
        try:
            dev = evdev.InputDevice(path)
        except OSError as exc:
            log.debug("cannot open %s: %s", path, exc)
            continue
        try:
            keys = dev.capabilities().get(ecodes.EV_KEY, [])
            if ecodes.KEY_ENTER not in keys or ecodes.KEY_0 not in keys:
                continue
            usb_id = f"{dev.info.vendor:04x}:{dev.info.product:04x}"
            stable = links.get(os.path.realpath(path), path)
            rows.append(DeviceRow("hid", f"hid:{stable}", dev.name, usb_id))
        finally:
            dev.close()
    return Category("hid", rows, "" if rows else hint)


def gpio_chips() -> Category:
    paths = sorted(glob.glob("/dev/gpiochip*"))
    if not paths:
        return Category("gpio", [], "no /dev/gpiochip* (not a Raspberry Pi-like board?)")
    rows = []
    for path in paths:
        desc = ""
        try:
            import gpiod

            with gpiod.Chip(path) as chip:
                info = chip.get_info()
                desc = f"{info.label} ({info.num_lines} lines)"
        except (ImportError, OSError, AttributeError) as exc:
            desc = f"cannot inspect: {exc}"
        rows.append(DeviceRow("gpio", f"gpio:{path}:LINE", desc))
    return Category("gpio", rows)


def contact_inputs(serial: Category, gpio: Category) -> Category:
    """Where a turnstile's passage contact or a fire panel's release can be wired: a serial
    port's modem status lines, or a GPIO line (test one with `devices test URL --role input`)."""
    rows = [DeviceRow("input", f"{r.url}?line=cts",
                      f"{r.description}: modem line as a contact (line=cts|dsr|dcd|ri)",
                      r.usb_id) for r in serial.rows]
    rows += [DeviceRow("input", r.url, f"{r.description}: a line as a contact", r.usb_id)
             for r in gpio.rows]
    return Category("inputs", rows, "" if rows else "no serial port or GPIO chip to wire a "
                    "passage or emergency contact to")


def discover() -> list[Category]:
    """All categories, in the order the CLI shows them."""
    serial, gpio = serial_ports(), gpio_chips()
    return [serial, nfc_readers(), input_devices(), gpio, contact_inputs(serial, gpio)]


def as_json(categories: list[Category]) -> dict[str, Any]:
    return {c.name: {"devices": [asdict(r) for r in c.rows], "hint": c.hint} for c in categories}
