"""`hid:/dev/input/by-id/...-event-kbd`: keyboard-wedge barcode scanners (python-evdev).

Most cheap scanners pretend to be a USB keyboard and "type" each code followed by Enter. We
open the input device and `grab()` it, so the codes do not also land on a console login
prompt, and turn key events into lines with `KeyDecoder`, a pure class tested with synthetic
`InputEvent`s. The decoder assumes the scanner is set to a US keyboard layout (the factory
default of nearly all scanners); keys it does not know are dropped, never guessed.
"""

from __future__ import annotations

import errno
import logging
import select
from typing import Any

import evdev
from evdev import ecodes

from agent.core.codes import MAX_CODE_LEN, clean_code
from agent.errors import DriverUnavailable
from drivers.base import Chunk, DeviceLost, Reader
from drivers.registry import parse_url

log = logging.getLogger(__name__)

_PLAIN = {
    **{getattr(ecodes, f"KEY_{c}"): c.lower() for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"},
    **{getattr(ecodes, f"KEY_{d}"): d for d in "0123456789"},
    ecodes.KEY_SPACE: " ", ecodes.KEY_MINUS: "-", ecodes.KEY_EQUAL: "=",
    ecodes.KEY_LEFTBRACE: "[", ecodes.KEY_RIGHTBRACE: "]", ecodes.KEY_BACKSLASH: "\\",
    ecodes.KEY_SEMICOLON: ";", ecodes.KEY_APOSTROPHE: "'", ecodes.KEY_GRAVE: "`",
    ecodes.KEY_COMMA: ",", ecodes.KEY_DOT: ".", ecodes.KEY_SLASH: "/",
    ecodes.KEY_KP0: "0", ecodes.KEY_KP1: "1", ecodes.KEY_KP2: "2", ecodes.KEY_KP3: "3",
    ecodes.KEY_KP4: "4", ecodes.KEY_KP5: "5", ecodes.KEY_KP6: "6", ecodes.KEY_KP7: "7",
    ecodes.KEY_KP8: "8", ecodes.KEY_KP9: "9", ecodes.KEY_KPMINUS: "-", ecodes.KEY_KPPLUS: "+",
    ecodes.KEY_KPASTERISK: "*", ecodes.KEY_KPSLASH: "/", ecodes.KEY_KPDOT: ".",
}
_SHIFTED = {
    **{getattr(ecodes, f"KEY_{c}"): c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"},
    **{getattr(ecodes, f"KEY_{d}"): s for d, s in zip("1234567890", "!@#$%^&*()", strict=True)},
    ecodes.KEY_SPACE: " ", ecodes.KEY_MINUS: "_", ecodes.KEY_EQUAL: "+",
    ecodes.KEY_LEFTBRACE: "{", ecodes.KEY_RIGHTBRACE: "}", ecodes.KEY_BACKSLASH: "|",
    ecodes.KEY_SEMICOLON: ":", ecodes.KEY_APOSTROPHE: '"', ecodes.KEY_GRAVE: "~",
    ecodes.KEY_COMMA: "<", ecodes.KEY_DOT: ">", ecodes.KEY_SLASH: "?",
}
SHIFT_KEYS = frozenset({ecodes.KEY_LEFTSHIFT, ecodes.KEY_RIGHTSHIFT})
ENTER_KEYS = frozenset({ecodes.KEY_ENTER, ecodes.KEY_KPENTER})
KEY_DOWN, KEY_UP, KEY_HOLD = 1, 0, 2


def char_for(code: int, shifted: bool) -> str | None:
    """The character a US-layout key produces, or None for keys that type nothing we accept."""
    if shifted and code in _SHIFTED:
        return _SHIFTED[code]
    return _PLAIN.get(code)


class KeyDecoder:
    """Key events in, lines out: tracks Shift, ends a line on Enter/KP-Enter, caps the length.

    Only key-down events type; auto-repeat (value 2) is ignored because a scanner never holds a
    key and a repeat would invent characters. A line longer than `max_len` is discarded whole.
    """

    def __init__(self, max_len: int = MAX_CODE_LEN) -> None:
        self.max_len = max_len
        self._shift: set[int] = set()
        self._chars: list[str] = []
        self._overflow = False

    def feed(self, event: Any) -> str | None:
        """Feed one `evdev.InputEvent`; return a finished, cleaned line (never an empty one)."""
        if event.type != ecodes.EV_KEY:
            return None
        code, value = event.code, event.value
        if code in SHIFT_KEYS:
            if value == KEY_UP:
                self._shift.discard(code)
            else:
                self._shift.add(code)
            return None
        if value != KEY_DOWN:
            return None
        if code in ENTER_KEYS:
            text = "".join(self._chars)
            overflow = self._overflow
            self._chars.clear()
            self._overflow = False
            if overflow:
                return None
            return clean_code(text) or None
        ch = char_for(code, bool(self._shift))
        if ch is None or self._overflow:
            return None
        self._chars.append(ch)
        if len(self._chars) > self.max_len:
            log.warning("discarding a keyboard-wedge line longer than %d characters", self.max_len)
            self._chars.clear()
            self._overflow = True
        return None

    def feed_all(self, events: Any) -> list[str]:
        return [line for line in (self.feed(e) for e in events) if line is not None]


class HidReader(Reader):
    """Grabs a keyboard-wedge scanner's input device and decodes its key events."""

    kind = "barcode"

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        parsed = parse_url(url)
        if not parsed.path:
            raise DriverUnavailable(url, "no input device path", "e.g. hid:/dev/input/by-id/usb-...-event-kbd")
        self.path = parsed.path
        self.grab = parsed.flag("grab", default=True)
        self._device: Any = None
        self._decoder = KeyDecoder()

    def _open(self) -> None:
        try:
            device = evdev.InputDevice(self.path)
        except OSError as exc:
            raise DriverUnavailable(self.url, f"cannot open {self.path}: {exc.strerror}", self.hint(exc)) from exc
        if self.grab:
            try:
                device.grab()
            except OSError as exc:
                device.close()
                raise DriverUnavailable(self.url, f"cannot grab {self.path}: {exc.strerror}",
                                        "another program holds the device grabbed") from exc
        self._device = device
        self._decoder = KeyDecoder()

    def _read(self, timeout: float) -> list[Chunk]:
        device = self._device
        if device is None:
            raise DeviceLost("device is closed")
        try:
            ready, _, _ = select.select([device.fd], [], [], timeout)
            if not ready:
                return []
            events = list(device.read())
        except BlockingIOError:
            return []
        except OSError as exc:
            raise DeviceLost(f"{self.path}: {exc.strerror}") from exc
        return [Chunk(line, "barcode", line.encode("utf-8")) for line in self._decoder.feed_all(events)]

    def _close(self) -> None:
        device, self._device = self._device, None
        if device is not None:
            try:
                if self.grab:
                    device.ungrab()
            except OSError:
                pass
            device.close()

    def hint(self, exc: BaseException) -> str:
        if getattr(exc, "errno", None) == errno.EACCES:
            return "permission denied: add the service user to the input group"
        return "is the scanner plugged in? see `gate-agent devices list`"
