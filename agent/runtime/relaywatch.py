"""Whether a lane's relays work: a failed relay tried again on its own, its return said once.

A relay that fails (a pulse refused, its device gone at start or at the end of a pulse) is
closed by its driver and said by status (`relay_error`, `fail`) until an operation on it works.
On a lane nobody scans for a while (the night, an exit relay that opens rarely, a lane whose
admits are voided while the relay is down and whose people go to the next lane), no operation
comes, and the reason stayed after the board was back. So while a relay is down it is opened
again every RELAY_PROBE_S: opening drives the relay *off* (drivers.base.Output.open), which a
probe may do at any time, and a device that opens and takes that write clears the error. A
probe cannot switch the relay on (that would open the gate), so a board that takes "off" and
refuses "on" shows as working until the next admit fails again; that admit is voided as
before. Nothing is probed while the lane is released: its hold is applied again every
HOLD_REAPPLY_S (agent.runtime.lanehold), which is the probe then.

The failure is logged where it happens (the lane, the driver); the return is logged here, once
per outage, whichever operation found it (an admit's pulse, a release's hold, the probe).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from agent.errors import DriverError
from drivers import Output

log = logging.getLogger(__name__)

RELAY_PROBE_S = 5.0  # a down relay is opened again this often (read at each wait: tests shorten it)

Relays = Callable[[], list[tuple[str, Output]]]


class RelayWatch:
    """The relays of one lane that are down (url -> the error seen), for the log's one line
    when each works again. Called from the lane's thread and from the probe's."""

    def __init__(self, lane: str, relays: Relays, released: Callable[[], bool]):
        self.lane = lane
        self.relays = relays
        self.released = released
        self.down: dict[str, str] = {}
        self._lock = threading.Lock()

    def note(self, url: str, output: Output, was: str = "", say: bool = True) -> bool:
        """Look at one relay after an operation (`was`: its error before it, if any); True
        when it works again after being down (logged here, once; `say` False: the caller
        said it in its own words, as a release's hold does)."""
        with self._lock:
            if output.last_error:
                self.down[url] = output.last_error
                return False
            error = self.down.pop(url, None) or was
        if not error:
            return False
        if say:
            log.warning("lane %s: relay %s works again (it failed: %s)", self.lane, url, error)
        return True

    def probe(self) -> bool:
        """Open each relay that is down (driving it off); True when one works again."""
        if self.released():
            return False
        back = False
        for url, output in self.relays():
            if output.last_error:
                try:
                    output.open()
                except DriverError as exc:  # still down: said already, not logged again
                    log.debug("lane %s: relay %s still down: %s", self.lane, url, exc)
            back = self.note(url, output) or back
        return back

    def run(self, stop: threading.Event, on_back: Callable[[], None]) -> None:
        """The probe's thread: every RELAY_PROBE_S until `stop`."""
        while not stop.wait(RELAY_PROBE_S):
            if self.probe():
                on_back()
