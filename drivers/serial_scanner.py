"""`serial:///dev/ttyACM0?baud=9600`: barcode scanners in USB-CDC/serial mode (pyserial).

Scanners send each code followed by CR, LF or CRLF (configurable on the scanner; all three are
accepted). Reads are arbitrary slices of that stream, so `LineDecoder` buffers partial lines;
it is a pure class (bytes in, lines out) so it can be fuzzed without a port.

When the port vanishes (cable pulled, scanner reset) pyserial raises; the reader reports
"disconnected" and the base class reopens the same path with backoff. Prefer the stable
`/dev/serial/by-id/...` path over `/dev/ttyACM0`, which may change number on replug.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

import serial

from agent.core.codes import clean_code
from agent.errors import DriverUnavailable
from drivers.base import Chunk, DeviceLost, Reader
from drivers.registry import parse_url

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 256
# Bytes that are never part of a code: C0 controls (CR/LF are handled as terminators), DEL,
# and 0xFF (line noise when a scanner powers up). All are single bytes in UTF-8, so dropping
# them never splits a multi-byte character.
_DROP = bytes(b for b in range(256) if (b < 0x20 and b not in (0x0A, 0x0D)) or b in (0x7F, 0xFF))


class LineDecoder:
    """Turn a byte stream into cleaned text lines.

    - a line ends at CR or LF (so CRLF, LFCR and blank lines yield no empty codes);
    - NUL, 0xFF, DEL and control bytes are dropped;
    - a line longer than `max_bytes` (after dropping) is discarded whole, with a log line;
    - bytes that are not UTF-8 become U+FFFD, so a garbled read can never match a real ticket
      and is still visible in the journal; the decoder never raises.
    """

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._raw = bytearray()
        self._overflow = False
        self.discarded = 0

    def feed(self, data: bytes) -> list[str]:
        """Return the lines completed by `data`, cleaned; partial lines wait for more bytes."""
        return [text for text, _raw in self.feed_with_raw(data)]

    def feed_with_raw(self, data: bytes) -> list[tuple[str, bytes]]:
        """Like `feed`, with each line's bytes as received (controls kept, terminator not)."""
        lines: list[tuple[str, bytes]] = []
        for piece in _split_keep(data):
            if piece in (b"\r", b"\n"):
                line = self._finish()
                if line[0]:
                    lines.append(line)
                continue
            if self._overflow:
                continue
            self._raw += piece
            self._buf += piece.translate(None, _DROP)
            if len(self._buf) > self.max_bytes or len(self._raw) > 4 * self.max_bytes:
                log.warning(
                    "discarding a line longer than %d bytes (scanner misconfigured, or no "
                    "terminator?): starts %r", self.max_bytes, bytes(self._buf[:32]),
                )
                self._overflow = True
                self.discarded += 1
                self._buf.clear()
                self._raw.clear()
        return lines

    def pending(self) -> bytes:
        """Bytes of an unfinished line (for diagnostics)."""
        return bytes(self._buf)

    def _finish(self) -> tuple[str, bytes]:
        data, raw = bytes(self._buf), bytes(self._raw)
        self._buf.clear()
        self._raw.clear()
        if self._overflow:
            self._overflow = False
            return "", b""
        return clean_code(data.decode("utf-8", errors="replace")), raw


def _split_keep(data: bytes) -> list[bytes]:
    """Split at CR/LF, keeping each terminator as its own one-byte piece."""
    out: list[bytes] = []
    start = 0
    for i, byte in enumerate(data):
        if byte in (0x0A, 0x0D):
            if i > start:
                out.append(data[start:i])
            out.append(data[i : i + 1])
            start = i + 1
    if start < len(data):
        out.append(data[start:])
    return out


class SerialReader(Reader):
    """Reads lines from a serial port; reopens the same path after an unplug."""

    kind = "barcode"

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        parsed = parse_url(url)
        if not parsed.path:
            raise DriverUnavailable(url, "no port path", "e.g. serial:///dev/ttyACM0?baud=9600")
        self.port = parsed.path
        self.baud = parsed.number(url, "baud", 9600)
        self.max_bytes = parsed.number(url, "max_len", MAX_LINE_BYTES)
        self._serial: serial.Serial | None = None
        self._decoder = LineDecoder(self.max_bytes)

    def _open(self) -> None:
        try:
            self._serial = serial.Serial(self.port, self.baud, timeout=self.poll_interval)
        except serial.SerialException as exc:
            raise DriverUnavailable(self.url, f"cannot open {self.port}: {open_reason(exc)}",
                                    serial_hint(exc)) from exc
        self._decoder = LineDecoder(self.max_bytes)  # drop half a line from before an unplug

    def _read(self, timeout: float) -> list[Chunk]:
        port = self._serial
        if port is None:
            raise DeviceLost("port is closed")
        try:
            data = port.read(max(1, port.in_waiting))
        except (serial.SerialException, OSError) as exc:
            raise DeviceLost(f"{self.port}: {exc}") from exc
        if not data:
            return []
        return [Chunk(text, "barcode", raw) for text, raw in self._decoder.feed_with_raw(data)]

    def _close(self) -> None:
        port, self._serial = self._serial, None
        close_quietly(port, self.url)

    def hint(self, exc: BaseException) -> str:
        return serial_hint(exc)


def open_reason(exc: BaseException) -> str:
    """pyserial's SerialException carries errno; its text repeats the path twice."""
    code = getattr(exc, "errno", None)
    return os.strerror(code) if isinstance(code, int) else str(exc)


def close_quietly(port: serial.Serial | None, url: str) -> None:
    """Close a port that may already be gone (shared with the serial relay, display and modem-line
    input); never raises."""
    if port is None:
        return
    try:
        port.close()
    except (serial.SerialException, OSError):
        log.debug("%s: close failed", url, exc_info=True)


def serial_hint(exc: BaseException) -> str:
    """What to check for a serial port that would not open (shared with the serial relay)."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.EACCES or "Permission denied" in text:
        return "permission denied: add the service user to the dialout group (then log in again)"
    if code == errno.ENOENT or "No such file" in text:
        return "no such port: is the device plugged in? see `gate-agent devices list`"
    if code == errno.EBUSY or "busy" in text.lower():
        return "port busy: another program (ModemManager?) has it open"
    return "check the cable and run `gate-agent devices list`"
