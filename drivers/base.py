"""Driver interfaces: `Scan`, `Reader` (scan sources) and `Output` (relays, LEDs, buzzers).

Modelled on python-can's `BusABC`: the public methods here hold the behaviour every driver
shares (a reader thread, connected-state tracking, bounded exponential backoff reconnects,
logging, fail-safe relay handling, `get_status()`), and backends implement small private hooks:

Reader hooks (called from the reader thread only):
    _open()              open the device; raise DriverUnavailable/OSError if it is not there
    _read(timeout)       return a list of `Chunk`s seen within `timeout` seconds; raise
                         DeviceLost/OSError when the device went away
    _close()             release the device (must not raise)
    _session(emit)       optional: override instead of `_read` when the library owns the loop
                         (nfcpy's blocking `connect()`); return when `self._stopping` is set

Output hooks:
    _open(), _set(on: bool), _close(), _feedback(accepted)

A reader never gives up: when its device vanishes it reports "disconnected" through
`on_state`, retries with backoff, and resumes by itself when the device is back, so one
unplugged scanner never takes the daemon down.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from agent.core.codes import clean_code, normalize_nfc_id, utc_iso
from agent.errors import DriverError, DriverUnavailable

log = logging.getLogger(__name__)

ScanKind = Literal["barcode", "nfc"]
OnScan = Callable[["Scan"], None]
OnState = Callable[[str, bool, str], None]
OpenGuard = Callable[[], AbstractContextManager[Any]]


@dataclass(frozen=True)
class Scan:
    """One read: a cleaned code plus where and when it was seen (both clocks) and the raw bytes."""

    code: str
    kind: ScanKind
    reader_id: str
    mono_ns: int
    wall: datetime
    raw: bytes


@dataclass(frozen=True)
class Chunk:
    """What a backend hands the base class: text still to be cleaned, its kind, the raw bytes."""

    text: str
    kind: ScanKind
    raw: bytes


class DeviceLost(DriverError):
    """Raised by a backend hook when its device went away (unplugged, powered off, reset)."""


class Reader:
    """A scan source running in its own thread; see the module docstring for the hooks."""

    kind: ScanKind = "barcode"

    def __init__(
        self,
        url: str,
        *,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        poll_interval: float = 0.2,
    ) -> None:
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        self.url = url
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.poll_interval = poll_interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._on_scan: OnScan | None = None
        self._on_state: OnState | None = None
        self._connected: bool | None = None  # None: not known yet, so the first state is reported
        self._ever_connected = False
        self.last_error = ""
        self.last_scan_at: datetime | None = None
        self.reconnects = 0
        self.scans = 0
        # Held around every open in the reader thread (the first and each reconnect): a
        # process that acts as another user for a while (`sudo gate-agent pair-tag` working
        # on the store as its owner) makes its readers wait until it is itself again, so a
        # device only root may open is never tried, and failed, as the store's owner.
        self.open_guard: OpenGuard = nullcontext

    # ----------------------------------------------------------------- public API
    @property
    def connected(self) -> bool:
        return bool(self._connected)

    def start(self, on_scan: OnScan, on_state: OnState | None = None) -> None:
        """Start the reader thread; `on_scan`/`on_state` are called from that thread.

        Calling `start` on a running reader is a no-op (idempotent), as is `stop` on a stopped one.
        """
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._on_scan = on_scan
            self._on_state = on_state
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._run, name=f"reader {self.url}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to end and wait up to `timeout` seconds for it (idempotent)."""
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            self._stopping.set()  # hooks poll it at least every poll_interval
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s: reader thread did not stop within %.1fs", self.url, timeout)
            else:
                self._thread = None

    def probe(self) -> None:
        """Open and close the device once in the caller's thread; raise DriverUnavailable if absent.

        The daemon does not need this (readers wait for their device); the technician CLI uses it
        to answer "is it there?" at once.
        """
        try:
            self._open()
        except (OSError, DriverError) as exc:
            if isinstance(exc, DriverUnavailable):
                raise
            raise DriverUnavailable(self.url, str(exc), self.hint(exc)) from exc
        finally:
            self._close()

    def read_one(self, timeout: float) -> Scan | None:
        """Open the device, wait up to `timeout` s for one scan, stop; None if nothing came."""
        self.probe()
        got: queue.Queue[Scan] = queue.Queue()
        self.start(got.put)
        try:
            return got.get(timeout=timeout)
        except queue.Empty:
            return None
        finally:
            self.stop()

    def get_status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "kind": self.kind,
            "connected": bool(self._connected),
            "last_error": self.last_error,
            "last_scan_at": utc_iso(self.last_scan_at) if self.last_scan_at else None,
            "reconnects": self.reconnects,
            "scans": self.scans,
        }

    def hint(self, exc: BaseException) -> str:
        """What a technician should check when opening failed; backends refine this."""
        return "check the cable and run `gate-agent devices list`"

    # ------------------------------------------------------------------- hooks
    def _open(self) -> None:
        raise NotImplementedError

    def _read(self, timeout: float) -> list[Chunk]:
        raise NotImplementedError

    def _close(self) -> None:
        """Release the device; must not raise."""

    def _session(self, emit: Callable[[Chunk], None]) -> None:
        while not self._stopping.is_set():
            for chunk in self._read(self.poll_interval):
                emit(chunk)

    # --------------------------------------------------------------- machinery
    def _run(self) -> None:
        delay = self.backoff_initial
        while not self._stopping.is_set():
            try:
                with self.open_guard():
                    self._open()
            except Exception as exc:  # noqa: BLE001 - any failure to open means "retry later"
                self._close()
                self._set_state(False, f"cannot open: {exc}")
                self._stopping.wait(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = self.backoff_initial
            if self._ever_connected:
                self.reconnects += 1
            self._ever_connected = True
            self._set_state(True, "open")
            try:
                self._session(self._emit)
                reason = "stopped"
            except Exception as exc:  # noqa: BLE001 - the device went away or misbehaved
                reason = f"device lost: {exc}"
                log.debug("%s: session ended", self.url, exc_info=True)
            finally:
                self._close()
            self._set_state(False, reason)
            if not self._stopping.is_set():
                self._stopping.wait(self.backoff_initial)

    def _set_state(self, connected: bool, reason: str) -> None:
        changed = connected != self._connected
        self._connected = connected
        if not connected and reason != "stopped":
            if reason != self.last_error:
                log.warning("%s: disconnected (%s)", self.url, reason)
            self.last_error = reason
        elif connected and changed:
            log.info("%s: connected", self.url)
        if changed and self._on_state is not None:
            self._call(self._on_state, self.url, connected, reason)

    def _emit(self, chunk: Chunk) -> None:
        scan = make_scan(self.url, chunk)
        if scan is None:
            log.info("%s: ignored an empty or malformed read (raw %s)", self.url, chunk.raw.hex())
            return
        self.last_scan_at = scan.wall
        self.scans += 1
        log.debug("%s: scan %r (%s)", self.url, scan.code, scan.kind)
        if self._on_scan is not None:
            self._call(self._on_scan, scan)

    def _call(self, func: Callable[..., None], *args: Any) -> None:
        try:
            func(*args)
        except Exception:  # noqa: BLE001 - a callback bug must not kill the reader
            log.exception("%s: callback %r failed", self.url, func)


def make_scan(reader_id: str, chunk: Chunk) -> Scan | None:
    """Clean a chunk into a Scan (NFC ids as `0x`+HEX), or None when nothing usable is left."""
    if chunk.kind == "nfc":
        code = normalize_nfc_id(chunk.text)
    else:
        code = clean_code(chunk.text) or None
    if not code:
        return None
    return Scan(
        code=code,
        kind=chunk.kind,
        reader_id=reader_id,
        mono_ns=time.monotonic_ns(),
        wall=datetime.now(UTC),
        raw=chunk.raw,
    )


class Output:
    """A relay (and optional LED/buzzer). `pulse` returns at once; the relay goes off by a timer.

    Fail safe: the relay is driven off when opened, when closed and after any error, and a
    pulse that fails raises DriverError after the off attempt.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self._open_now = False
        self.is_on = False
        self.held = False  # on until released (emergency release); pulses change nothing
        # a pulse asked for while held (an admit decided just before the release began):
        # when the hold ends before this time.monotonic(), the relay stays on until it
        self._owed_until = 0.0
        self.pulses = 0
        self.last_error = ""
        self.last_pulse_at: datetime | None = None

    def open(self) -> None:
        """Open the device and drive the relay off; DriverUnavailable when it is not there."""
        with self._lock:
            if self._open_now:
                return
            try:
                self._open()
                self._set(False)
            except Exception as exc:
                self._safe_off()
                self._close()
                self.last_error = str(exc)
                if isinstance(exc, DriverUnavailable):
                    raise
                raise DriverUnavailable(self.url, str(exc), self.hint(exc)) from exc
            self.is_on = False
            self._open_now = True
            self.last_error = ""  # opened and driven off: it works again (a probe's success)

    def pulse(self, ms: int) -> None:
        """Relay on now, off after `ms` milliseconds (a new pulse restarts the timer)."""
        if ms <= 0:
            raise ValueError("pulse length must be positive")
        with self._lock:
            if self.held:  # held open: the gate is free already; should the hold end
                self._owed_until = max(self._owed_until,  # within `ms`, the person still
                                       time.monotonic() + ms / 1000.0)  # gets their opening
                return
            if not self._open_now:
                self.open()  # a replugged relay comes back on the next pulse
            self._cancel_timer()
            self._switch(True, "relay pulse")
            self.is_on = True
            if self.last_error:
                self.last_error = ""  # it works again: no stale warning in status
            self.pulses += 1
            self.last_pulse_at = datetime.now(UTC)
            self._end_in(ms / 1000.0)
        log.debug("%s: pulse %d ms", self.url, ms)

    def _end_in(self, seconds: float) -> None:
        """Under the lock: the relay goes off after `seconds` (this pulse's timer)."""
        self._timer = threading.Timer(seconds, self._end_pulse)
        self._timer.name = f"pulse {self.url}"
        self._timer.daemon = True
        self._timer.start()

    def hold(self, on: bool) -> None:
        """Keep the relay on until `hold(False)` (free egress while the fire panel says so,
        or a technician's release). DriverError when the device refuses; off is fail safe.

        `hold(True)` on a held relay switches it on again: a board that reset, or whose
        device went away and came back, powers up off while nothing else writes to it
        (agent.runtime.lane re-applies a release's hold this way). A pulse asked for during
        the hold (an admit decided just before the release began) is owed when it ends: the
        relay stays on for the rest of that pulse, so the person is not shut out mid-way."""
        with self._lock:
            if not self._open_now:
                self.open()
            self._cancel_timer()
            owed = 0.0 if on else self._owed_until - time.monotonic()
            try:
                self._switch(on or owed > 0, "relay hold")
            except DriverError:
                self.held = False
                raise
            self.held = on
            self.is_on = on or owed > 0
            self.last_error = ""
            if not on:
                self._owed_until = 0.0
                if owed > 0:
                    self._end_in(owed)

    def off(self) -> None:
        """Off now, cutting a pulse short (a light whose meaning has changed: the green of the
        last admit when the next scan is refused). A held relay is left held; nothing to do
        when it is off. DriverError when the device refuses (then closed, as after any error)."""
        with self._lock:
            if self.held:
                return
            self._cancel_timer()
            if not self.is_on or not self._open_now:
                return
            self._switch(False, "switching off")
            self.is_on = False

    def feedback(self, accepted: bool) -> None:
        """Show the decision on the device's LED/buzzer, where it has one; errors are logged."""
        try:
            self._feedback(accepted)
        except Exception as exc:  # noqa: BLE001 - feedback is cosmetic, never fatal
            log.warning("%s: feedback failed: %s", self.url, exc)

    def close(self) -> None:
        """Relay off and release the device; safe to call twice."""
        with self._lock:
            self._cancel_timer()
            if self._open_now:
                self._safe_off()
            self._close()
            self._open_now = False
            self.held = False
            self._owed_until = 0.0

    def get_status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "open": self._open_now,
            "ok": self._open_now and not self.last_error,
            "on": self.is_on,
            "held": self.held,
            "pulses": self.pulses,
            "last_error": self.last_error,
            "last_pulse_at": utc_iso(self.last_pulse_at) if self.last_pulse_at else None,
        }

    def hint(self, exc: BaseException) -> str:
        return "check the cable and run `gate-agent devices list`"

    def _switch(self, on: bool, what: str) -> None:
        """`_set(on)` under the lock; a failure drives the relay off and closes the device
        (opened again at the next use) and is raised as DriverError naming `what`."""
        try:
            self._set(on)
        except Exception as exc:
            self._fail(exc)
            raise DriverError(f"{self.url}: {what} failed: {exc}") from exc

    def _end_pulse(self) -> None:
        with self._lock:
            if self._timer is not threading.current_thread():
                return  # superseded by a newer pulse, or cancelled by close() while waiting
            self._timer = None
            try:
                self._set(False)
                self.is_on = False
            except Exception as exc:  # noqa: BLE001 - recorded; retried by _fail
                self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        log.error("%s: relay error: %s (driving it off)", self.url, exc)
        self.last_error = str(exc)
        self._safe_off()
        self._close()
        self._open_now = False

    def _safe_off(self) -> None:
        try:
            self._set(False)
            self.is_on = False
        except Exception:  # noqa: BLE001 - the device may be gone; nothing more to do
            log.debug("%s: could not drive relay off", self.url, exc_info=True)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # hooks
    def _open(self) -> None:
        raise NotImplementedError

    def _set(self, on: bool) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        """Release the device; must not raise."""

    def _feedback(self, accepted: bool) -> None:
        """Default: the hardware has no LED/buzzer."""
