"""Contact inputs: a turnstile's "passed" pulse, a door contact, a fire panel's release contact.

An `Input` watches one line in a thread of its own and reports each change of level
(`on_change(url, active, mono_ns)`). Backends implement three hooks, like `Reader`:

    _open()            claim the line; raise DriverUnavailable/OSError when it is not there
    _read(timeout)     levels seen within `timeout` s, oldest first (may be empty); raise on loss
    _close()           release the line (must not raise)

Backends (same URL scheme as readers and relays, see drivers.registry):

`gpio:/dev/gpiochip0:22?active_low=1`
    A GPIO line requested as an input through PyPI `gpiod` 2.x with edge detection: the thread
    sleeps in `wait_edge_events` and reads each edge the kernel queued, so a pulse shorter than
    any poll is still seen and an idle line costs nothing. A line whose chip cannot raise edge
    interrupts (some I2C expanders) is polled every `poll_ms` instead (default 5 ms: a
    turnstile's rotation pulse lasts 50-200 ms), said once in the log and in status (`mode`);
    `edges=0` polls by choice. Tests use the FAKE of tests/drivers/fake_gpiod.py: there is no
    gpio-sim on these machines.
`serial:///dev/ttyUSB0?line=cts`  (line = cts | dsr | dcd | ri; `active_low=1` inverts)
    A modem status line of a serial port (pyserial), the cheapest dry-contact input on a PC.
    A pty has no modem lines (Linux answers ENOTTY): opening one fails with a clear error.
    pyserial's `loop://` port wires RTS to CTS and DTR to DSR, which is how the tests drive it.
`sim:NAME[?socket=PATH]`
    Simulated: `sim_input_set(NAME, active)` / `sim_input_pulse(NAME)` in-process, or
    datagrams "1", "0", "pulse" on PATH from another process (`send_input(PATH, "pulse")`).
    Not simulated: contact bounce, a line that floats.

When a line vanishes the input reports "disconnected" and reopens with backoff; whoever relies
on it (the emergency release, a passage wait) says in status that the input is not being
watched. Its level is then unknown: `active` keeps the last level reported, and the first
reading after the line is back is reported when it differs from it. (Marking it inactive
while gone, unreported, hid a contact that cleared meanwhile: a fire release lost while active
and back inactive was never ended.) `opened_ns` tells a watcher whether the line was reopened
since a given instant, i.e. whether it may have missed an edge since.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import DriverError, DriverUnavailable
from drivers.gpio_lines import release_quietly, request_line, require_gpiod, split_chip_line
from drivers.registry import ParsedUrl, parse_url, sim_url
from drivers.serial_scanner import close_quietly

log = logging.getLogger(__name__)

OnChange = Callable[[str, bool, int], None]  # url, active, time.monotonic_ns()
MODEM_LINES = {"cts": "cts", "dsr": "dsr", "dcd": "cd", "cd": "cd", "ri": "ri"}


class Input:
    """One contact input watched in its own thread (see the module docstring)."""

    def __init__(self, url: str, *, poll_interval: float = 0.005, backoff_max: float = 5.0):
        self.url = url
        self.poll_interval = poll_interval
        self.backoff_max = backoff_max
        self.active = False
        self.connected = False
        self.last_error = ""
        self.changes = 0
        self.opened_ns = 0  # time.monotonic_ns() of the last successful open (0: never)
        self._on_change: OnChange | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, on_change: OnChange) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._on_change = on_change
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"input {self.url}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def probe(self) -> None:
        """Open and close the line once (the technician's "is it there?")."""
        try:
            self._open()
        except (OSError, DriverError) as exc:
            if isinstance(exc, DriverUnavailable):
                raise
            raise DriverUnavailable(self.url, str(exc)) from exc
        finally:
            self._close()

    def wait_pulse(self, timeout: float) -> bool:
        """Watch the line until it goes active then inactive again (`devices test`)."""
        self.probe()
        seen: queue.Queue[bool] = queue.Queue()
        self.start(lambda _url, active, _ns: seen.put(active))
        deadline = time.monotonic() + timeout
        went_active = False
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    active = seen.get(timeout=left)
                except queue.Empty:
                    break
                if active:
                    went_active = True
                elif went_active:
                    return True
            return False
        finally:
            self.stop()

    def get_status(self) -> dict[str, Any]:
        return {"url": self.url, "connected": self.connected, "active": self.active,
                "changes": self.changes, "last_error": self.last_error}

    # hooks
    def _open(self) -> None:
        raise NotImplementedError

    def _read(self, timeout: float) -> list[bool]:
        raise NotImplementedError

    def _close(self) -> None:
        """Release the line; must not raise."""

    def _run(self) -> None:
        delay = 0.2
        while not self._stopping.is_set():
            try:
                self._open()
                self.opened_ns = time.monotonic_ns()
                self.connected, self.last_error, delay = True, "", 0.2
                while not self._stopping.is_set():
                    for level in self._read(self.poll_interval):
                        self._level(level)
            except Exception as exc:  # noqa: BLE001 - any failure: report, reopen later
                if str(exc) != self.last_error:
                    log.warning("%s: input not watched: %s", self.url, exc)
                self.last_error = str(exc)
            finally:
                self._close()
                self.connected = False
            self._stopping.wait(delay)
            delay = min(delay * 2, self.backoff_max)

    def _level(self, active: bool) -> None:
        if active == self.active:
            return
        self.active = active
        self.changes += 1
        if self._on_change is not None:
            try:
                self._on_change(self.url, active, time.monotonic_ns())
            except Exception:  # noqa: BLE001 - a callback bug must not stop the watch
                log.exception("%s: input callback failed", self.url)


# -- sim ----------------------------------------------------------------------------------

_lock = threading.Lock()
_sim_levels: dict[str, list[queue.Queue[bool]]] = {}


def sim_input_set(name: str, active: bool) -> int:
    """Set every running `sim:NAME` input's level; returns how many inputs saw it."""
    with _lock:
        targets = list(_sim_levels.get(name, ()))
    for q in targets:
        q.put(active)
    return len(targets)


def sim_input_pulse(name: str) -> int:
    """A short pulse (active then inactive) on `sim:NAME`: a turnstile arm's rotation."""
    sim_input_set(name, True)
    return sim_input_set(name, False)


def send_input(address: str | os.PathLike[str], what: str = "pulse") -> None:
    """Drive a `sim:NAME?socket=PATH` input of another process: "1", "0" or "pulse"."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(what.encode(), os.fspath(address))


class SimInput(Input):
    """Levels come from `sim_input_set` and, with `?socket=PATH`, from datagrams."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        parsed = sim_url(url)
        self.name = parsed.path
        self.socket_path = parsed.query.get("socket") or None
        self._queue: queue.Queue[bool] = queue.Queue()
        self._sock: socket.socket | None = None

    def _open(self) -> None:
        with _lock:
            if self._queue not in _sim_levels.setdefault(self.name, []):
                _sim_levels[self.name].append(self._queue)
        if self.socket_path and self._sock is None:
            path = Path(self.socket_path)
            path.unlink(missing_ok=True)
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.bind(str(path))
            threading.Thread(target=self._listen, args=(self._sock,), daemon=True,
                             name=f"sim input {path}").start()

    def _listen(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(64).strip()
            except OSError:
                return
            if data == b"pulse":
                self._queue.put(True)
                self._queue.put(False)
            elif data in (b"1", b"0"):
                self._queue.put(data == b"1")

    def _read(self, timeout: float) -> list[bool]:
        try:
            levels = [self._queue.get(timeout=max(timeout, 0.05))]
        except queue.Empty:
            return []
        while not self._queue.empty():
            levels.append(self._queue.get_nowait())
        return levels

    def _close(self) -> None:
        if not self._stopping.is_set():
            return
        with _lock:
            if self._queue in _sim_levels.get(self.name, []):
                _sim_levels[self.name].remove(self._queue)
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()
            if self.socket_path:
                Path(self.socket_path).unlink(missing_ok=True)


# -- gpio ---------------------------------------------------------------------------------

EDGE_WAIT_S = 0.2  # longest sleep in wait_edge_events: how soon stop() is noticed


class GpioInput(Input):
    """A GPIO line as an input, through libgpiod v2 (PyPI `gpiod` 2.x): edge events, or
    polled when the line cannot raise them (see the module docstring)."""

    def __init__(self, url: str, **options: Any) -> None:
        parsed = parse_url(url)
        options.setdefault("poll_interval", parsed.number(url, "poll_ms", 5) / 1000)
        super().__init__(url, **options)
        self.chip, self.line = split_chip_line(url, parsed.path)
        self.active_low = parsed.flag("active_low")
        self.edges = parsed.query.get("edges", "1") != "0"
        self.mode = "edges" if self.edges else "poll"
        self._request: Any = None
        self._pending: list[bool] = []  # the level read at open, before any edge
        require_gpiod(url)

    def _open(self) -> None:
        from gpiod.line import Edge, Value

        if self.edges:
            try:
                self._request = request_line(self.url, self.chip, self.line,
                                             self._settings(Edge.BOTH))
            except DriverUnavailable as exc:
                cause = exc.__cause__
                if not isinstance(cause, OSError) or \
                        isinstance(cause, FileNotFoundError | PermissionError):
                    raise  # no chip, no rights: polling would not help
                log.warning("%s: the line gives no edge events (%s); polling every %g ms",
                            self.url, cause, self.poll_interval * 1000)
                self.edges, self.mode = False, "poll"
            else:
                self.mode = "edges"
                self._pending = [self._request.get_value(self.line) == Value.ACTIVE]
                return
        self._request = request_line(self.url, self.chip, self.line, self._settings(Edge.NONE))

    def _settings(self, edge: Any) -> Any:
        import gpiod
        from gpiod.line import Direction

        return gpiod.LineSettings(direction=Direction.INPUT, active_low=self.active_low,
                                  edge_detection=edge)

    def _read(self, timeout: float) -> list[bool]:
        import gpiod
        from gpiod.line import Value

        if self._request is None:
            raise OSError(f"{self.chip} line {self.line} is not requested")
        if self.mode == "poll":
            time.sleep(timeout)
            return [self._request.get_value(self.line) == Value.ACTIVE]
        if self._pending:
            levels, self._pending = self._pending, []
            return levels
        if not self._request.wait_edge_events(max(timeout, EDGE_WAIT_S)):
            return []
        # with active_low the kernel reports edges of the logical level: rising = active
        return [event.event_type == gpiod.EdgeEvent.Type.RISING_EDGE
                for event in self._request.read_edge_events()]

    def get_status(self) -> dict[str, Any]:
        return {**super().get_status(), "mode": self.mode}

    def _close(self) -> None:
        request, self._request = self._request, None
        release_quietly(request, self.url)


# -- serial modem lines -------------------------------------------------------------------

class ModemLineInput(Input):
    """A modem status line (CTS, DSR, DCD, RI) of a serial port, polled (pyserial)."""

    def __init__(self, url: str, **options: Any) -> None:
        parsed: ParsedUrl = parse_url(url)
        options.setdefault("poll_interval", parsed.number(url, "poll_ms", 5) / 1000)
        super().__init__(url, **options)
        line = parsed.query.get("line", "").lower()
        if line not in MODEM_LINES:
            raise DriverUnavailable(url, f"line={line!r} is not a modem status line",
                                    "add ?line=cts (or dsr, dcd, ri)")
        if not parsed.path:
            raise DriverUnavailable(url, "no port path", "e.g. serial:///dev/ttyUSB0?line=cts")
        self.port_path, self.attr = parsed.path, MODEM_LINES[line]
        self.active_low = parsed.flag("active_low")
        self.port: Any = None

    def _open(self) -> None:
        import serial

        try:
            self.port = serial.serial_for_url(self.port_path, timeout=0)
            bool(getattr(self.port, self.attr))  # a pty fails here (ENOTTY)
        except (serial.SerialException, OSError) as exc:
            self._close()
            raise DriverUnavailable(self.url, f"cannot read the {self.attr} line of "
                                    f"{self.port_path}: {exc}",
                                    "a pty has no modem lines; use a real UART or USB adapter"
                                    ) from exc

    def _read(self, timeout: float) -> list[bool]:
        time.sleep(timeout)
        level = bool(getattr(self.port, self.attr))
        return [level != self.active_low]

    def _close(self) -> None:
        port, self.port = self.port, None
        close_quietly(port, self.url)
