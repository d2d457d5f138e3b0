"""A lane's lights, buzzer and text display, driven from each decision.

Why a pattern per outcome and not per status: the person at the gate needs to know three
things — go, stop, or call someone — and the staff a fourth (an alarm). Each pattern names
outputs and how long each stays on (`"red:1500,buzzer:300"`, agent.config.parse_pattern);
all start at once. Outputs are ordinary relay drivers (`gpio:`, `serialrelay:`, `sim:`), so a
stack light wired to a relay board needs nothing new. Indicators are cosmetic: a failing one
is logged and shown in status, and never delays or changes a decision (they are driven after
the relay pulse and the registration of the admit's passage wait).

A new outcome first switches off every light the previous one left on that its own pattern
does not name: the green of an admit lasts `indicate_admit`'s 1.5 s, and the next person's
refusal (or the admit's own void, or a forced-passage alarm) within it must not show green and
red together. Outcomes come from the lane's thread and its passage worker, so one at a time.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from agent.config import LaneConfig, parse_pattern
from agent.errors import DriverError
from agent.runtime.display_text import display_text
from drivers import Output, open_output
from drivers.registry import open_display

log = logging.getLogger(__name__)

OUTCOMES = ("admit", "refuse", "not_passed", "alarm")


class Indicators:
    """Green/red lights, buzzer and display of one lane (all optional)."""

    def __init__(self, lane: LaneConfig, language: str = "en"):
        self.lane = lane
        self.language = language
        self.outputs: dict[str, Output] = {}
        self.display: Any = None
        self.errors: dict[str, str] = {}
        self.patterns = {
            "admit": parse_pattern(lane.indicate_admit),
            "refuse": parse_pattern(lane.indicate_refuse),
            "not_passed": parse_pattern(lane.indicate_not_passed),
            "alarm": parse_pattern(lane.indicate_alarm),
        }
        self.shown: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._lock = threading.Lock()  # the lane thread and the passage worker both show

    def open(self) -> None:
        """Open what is configured; a missing device is reported, never fatal, and kept: it
        is opened again at its next use (a USB board or display plugged in late, or back)."""
        for name, url in (("green", self.lane.light_green), ("red", self.lane.light_red),
                          ("buzzer", self.lane.buzzer)):
            if not url:
                continue
            try:
                self.outputs[name] = output = open_output(url, connect=False)
                output.open()
            except DriverError as exc:
                self.errors[name] = str(exc)
                log.error("lane %s: %s light/buzzer %s unavailable (tried again at its next "
                          "use): %s", self.lane.name, name, url, exc)
        if self.lane.display:
            try:
                self.display = open_display(self.lane.display, connect=False)
                self.display.open()
            except DriverError as exc:
                self.errors["display"] = str(exc)
                log.error("lane %s: display %s unavailable (tried again at its next text): "
                          "%s", self.lane.name, self.lane.display, exc)

    @property
    def configured(self) -> bool:
        return bool(self.outputs or self.display is not None or self.errors)

    def show(self, outcome: str | None, key: str, fallback: str = "") -> None:
        """Run the outcome's pattern (None: lights stay as they are) and put the short text
        for `key` (agent.runtime.display_text, in `api.language`) on the display."""
        with self._lock:
            if outcome is not None:
                self.shown[outcome] = self.shown.get(outcome, 0) + 1
                pattern = self.patterns.get(outcome, ())
                named = {name for name, _ms in pattern}
                for name, output in self.outputs.items():
                    if name not in named:  # left on by the outcome before: not this one's
                        self._drive(name, output.off, clears=False)
                for name, ms in pattern:
                    if name in self.outputs:
                        self._drive(name, self.outputs[name].pulse, ms)
            if self.display is not None:
                text = display_text(self.language, key, fallback)
                if text:
                    self.display.show(text)  # never raises: its failure is its last_error
                    if self.display.last_error:
                        self.errors["display"] = self.display.last_error
                    else:
                        self.errors.pop("display", None)

    def _drive(self, name: str, action: Any, *args: Any, clears: bool = True) -> None:
        """One output's switch; a failing device is logged and kept in `errors` until a pulse
        works again (`clears`: switching off an output that is not open touches nothing, so
        proves nothing), never raised."""
        try:
            action(*args)
        except DriverError as exc:
            self.errors[name] = str(exc)
            log.warning("lane %s: %s indicator failed: %s", self.lane.name, name, exc)
            return
        if clears:
            self.errors.pop(name, None)

    def close(self) -> None:
        for output in self.outputs.values():
            output.close()
        if self.display is not None:
            self.display.close()

    def get_status(self) -> dict[str, Any] | None:
        if not self.configured:
            return None
        return {"outputs": {n: o.get_status() for n, o in self.outputs.items()},
                "display": self.display.get_status() if self.display is not None else None,
                "errors": dict(self.errors), "shown": dict(self.shown)}
