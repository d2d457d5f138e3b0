"""A released lane's relays held open, and kept open, for as long as anyone releases it.

Who releases a lane (the fire panel, a technician: agent.runtime.release) and what that does to
its relays: each one held on (drivers.base.Output.hold) while any source releases the lane,
switched on again every HOLD_REAPPLY_S, dropped when the last source ends its release.

Apart from agent.runtime.lane because it is a job of its own that runs beside the lane's, never
in it: its own thread (the keeper that applies the hold again), its own lock (a release never
waits on a scan being decided, so not the lane's `lock`) and its own errors (`hold_errors`,
status `release_not_held`). The scan -> decision -> relay path only reads whether the lane is
released: the `releases` set, which the lane holds too (the same object), so that read is
the attribute it always was, not a call.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from agent.config import LaneConfig
from agent.errors import DriverError
from agent.runtime.relaywatch import RelayWatch
from drivers import Output

log = logging.getLogger("agent.runtime.lane")  # said as the lane's own lines always were

# How often a release's hold is applied again. A relay board that resets, or whose USB device
# goes away and comes back, powers up off (the gate shut) and tells nobody; nothing else
# writes to a held relay. Switching it on again this often re-opens the gate within about a
# second of the board's return, for every relay kind (a write to a vanished device fails,
# which closes it, and the next round opens it again), and it is what shows a hold that is not
# applied in status (`hold_errors`).
HOLD_REAPPLY_S = 0.5


class HeldLane(Protocol):
    """What the hold uses of its lane (agent.runtime.lane.LaneRunner): its relays, the error
    they share with its pulses, and the watch that says once when one works again."""

    lane: LaneConfig
    relay: Output | None
    relay_out: Output | None
    relay_error: str | None
    relay_watch: RelayWatch

    def relays_back(self) -> None: ...


class ReleaseHold:
    """The sources releasing one lane and its relays' hold; `stopped` is the lane's event,
    set (under this hold's lock, by `close`) when the lane stops: no hold after that."""

    def __init__(self, runner: HeldLane, stopped: threading.Event):
        self.runner = runner
        self.releases: set[str] = set()  # "emergency", "manual:<who>"
        self.errors: dict[str, str] = {}  # relay url -> why the hold is off
        self._lock = threading.Lock()
        self._keeper: threading.Thread | None = None  # applies the hold again while released
        self._stopped = stopped

    def set(self, source: str, on: bool) -> None:
        """Hold every relay of the lane open while any source releases it (free egress),
        and keep it held: the hold is applied again every HOLD_REAPPLY_S while the release
        lasts (a board that reset is off). A scan decided just before still pulses: the held
        relay owes it the rest of its pulse when the release ends (drivers.base.Output.hold)."""
        with self._lock:
            if on:
                self.releases.add(source)
            else:
                self.releases.discard(source)
            if self._stopped.is_set():
                return  # the lane has stopped: its relays are closed (off) for good
            self._apply(again=False)
            if self.releases and self._keeper is None:
                self._keeper = threading.Thread(target=self._keep, daemon=True,
                                                name=f"hold {self.runner.lane.name}")
                self._keeper.start()

    def close(self, timeout: float) -> None:
        """The lane stops: no hold is applied again once its relays are closed."""
        with self._lock:
            self._stopped.set()
            keeper = self._keeper
        if keeper is not None:
            keeper.join(timeout)

    def _keep(self) -> None:
        """While the lane is released: switch its relays on again every HOLD_REAPPLY_S."""
        while not self._stopped.wait(HOLD_REAPPLY_S):
            with self._lock:
                if not self.releases or self._stopped.is_set():
                    self._keeper = None
                    return
                self._apply(again=True)
        with self._lock:
            self._keeper = None

    def _apply(self, again: bool) -> None:
        """Under `_lock`: every relay held while the lane is released, dropped when not;
        `again`: switch a held one on once more. A relay whose hold is not applied is in
        `errors` (status: `release_not_held`) until a hold works."""
        runner, name = self.runner, self.runner.lane.name
        held = bool(self.releases)
        for url, output in ((runner.lane.relay, runner.relay),
                            (runner.lane.relay_out, runner.relay_out)):
            if not url:
                continue
            if output is None:  # no driver for the URL: nothing can hold the gate open
                if held:
                    self.errors[url] = runner.relay_error or "no driver for this URL"
                continue
            if output.held == held and not (held and again):
                continue
            was = output.last_error
            try:
                output.hold(held)
            except DriverError as exc:
                runner.relay_error = str(exc)
                runner.relay_watch.note(url, output)
                if held and self.errors.get(url) != str(exc):
                    log.error("lane %s: relay %s not held open during the release (the gate "
                              "may be shut; tried again every %.1f s): %s", name, url,
                              HOLD_REAPPLY_S, exc)
                if held:
                    self.errors[url] = str(exc)
                else:
                    log.error("lane %s: relay hold failed: %s", name, exc)
                continue
            again = self.errors.pop(url, None) is not None
            if again:
                log.warning("lane %s: relay %s held open again", name, url)
            runner.relay_watch.note(url, output, was, say=not again)  # its return said once
            runner.relays_back()
        if not held:
            self.errors.clear()
