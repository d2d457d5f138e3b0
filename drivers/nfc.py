"""`nfc:PATH`: NFC readers through nfcpy (ACR122U, PN53x on USB or UART, nfcpy's UDP simulator).

PATH is nfcpy's device path: `usb`, `usb:072f:2200` (vendor:product), `usb:001:004` (bus:dev),
`tty:USB0:pn532`, `udp:127.0.0.1:54321`. Query options:

- `targets=106A,106B,212F` (default): technologies to poll. Restrict them when you know your
  tags (`106A` for NTAG/Ultralight): each silent poll of a technology costs time.
- `ndef=1`: if the tag carries an NDEF Text or URI record, the scan is that text as a
  *barcode* (tickets written onto tags); otherwise it falls back to the UID.

The scan of a plain tag is its UID as `0x` + upper-case hex, kind "nfc". A tag left on the
reader counts once: on-connect returns True so nfcpy waits for the tag to leave before polling
again. nfcpy's blocking `connect()` runs in the reader thread; `stop()` ends it through the
`terminate` callback (latency: one poll cycle, about 1 s on the UDP simulator). `connect()`
returning False (an IOError inside nfcpy) means the reader was lost: the base class closes it
and reopens with backoff. USB paths need Debian's `libusb-1.0-0` and a udev rule/plugdev group.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any

import nfc
import nfc.clf

from agent.errors import DriverUnavailable
from drivers.base import Chunk, DeviceLost, Reader
from drivers.registry import parse_url

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("106A", "106B", "212F")
_KNOWN_TARGETS = {"106A", "212A", "424A", "106B", "212B", "424B", "212F", "424F"}


def ndef_text(tag: Any) -> str | None:
    """The first Text or URI record of the tag's NDEF message, or None (never raises)."""
    try:
        ndef = tag.ndef
        records = list(ndef.records) if ndef is not None else []
    except Exception as exc:  # noqa: BLE001 - a tag pulled mid-read; fall back to the UID
        log.debug("ndef read failed: %s", exc)
        return None
    for record in records:
        text = getattr(record, "text", None)
        if isinstance(text, str) and text.strip():
            return text
        uri = getattr(record, "iri", None) or getattr(record, "uri", None)
        if isinstance(uri, str) and uri.strip():
            return uri
    return None


class NfcReader(Reader):
    """An nfcpy ContactlessFrontend polled in the reader thread."""

    kind = "nfc"

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        parsed = parse_url(url)
        if not parsed.path:
            raise DriverUnavailable(url, "no device path", "e.g. nfc:usb or nfc:tty:USB0:pn532")
        self.path = parsed.path
        self.use_ndef = parsed.flag("ndef")
        raw_targets = parsed.query.get("targets")
        targets = tuple(t.strip() for t in raw_targets.split(",")) if raw_targets else DEFAULT_TARGETS
        bad = [t for t in targets if t not in _KNOWN_TARGETS]
        if bad or not targets:
            raise DriverUnavailable(
                url, f"unknown targets {','.join(bad)!r}", f"use some of {sorted(_KNOWN_TARGETS)}"
            )
        self.targets = targets
        self._clf: Any = None

    def _open(self) -> None:
        clf = nfc.ContactlessFrontend()
        try:
            found = clf.open(self.path)
        except OSError as exc:
            raise DriverUnavailable(self.url, f"cannot open {self.path}: {exc}", self.hint(exc)) from exc
        if not found:
            raise DriverUnavailable(self.url, f"no NFC reader found at {self.path}", self.hint(None))
        self._clf = clf
        log.info("%s: opened %s", self.url, clf.device)

    def _session(self, emit: Callable[[Chunk], None]) -> None:
        clf = self._clf
        if clf is None:
            raise DeviceLost("reader is not open")

        def on_connect(tag: Any) -> bool:
            emit(self._chunk(tag))
            return True  # wait for removal: a held tag counts once

        options = {
            "targets": list(self.targets),
            "on-connect": on_connect,
            "iterations": 1,
            "interval": 0.1,
            "beep-on-connect": True,
        }
        while not self._stopping.is_set():
            result = clf.connect(rdwr=options, terminate=self._stopping.is_set)
            if result is False:
                raise DeviceLost("nfcpy reported an I/O error (reader unplugged?)")

    def _chunk(self, tag: Any) -> Chunk:
        uid = bytes(tag.identifier)
        if self.use_ndef:
            text = ndef_text(tag)
            if text is not None:
                return Chunk(text, "barcode", text.encode("utf-8"))
        return Chunk(uid.hex(), "nfc", uid)

    def _close(self) -> None:
        clf, self._clf = self._clf, None
        if clf is not None:
            try:
                clf.close()
            except Exception:  # noqa: BLE001 - the device may already be gone
                log.debug("%s: close failed", self.url, exc_info=True)

    def hint(self, exc: BaseException | None) -> str:
        code = getattr(exc, "errno", None)
        if code == errno.EACCES:
            return "permission denied: add a udev rule for the reader or the user to plugdev"
        if code == errno.EBUSY:
            return "reader busy: unload the pn533/pn533_usb kernel modules (blacklist them)"
        if self.path.startswith("usb"):
            return "is the reader plugged in and libusb-1.0-0 installed? see `gate-agent devices list`"
        if self.path.startswith("tty"):
            return "check the serial path and the dialout group"
        return "check the device path"
