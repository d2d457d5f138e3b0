"""A lane's safety net: a scan whose decision ends in an exception is still refused, recorded,
shown and counted — never only a line in the log.

A bug, or an error nobody foresaw, can end `LaneRunner._decide` in an exception anywhere on
the scan's path. The gate stays shut either way (fail closed); what this module adds is the
rest of the product's promise ("a refusal is always recorded"), by where the exception came:

- `before_journal`: the gate raised before it wrote any row for the scan. The scan is
  journaled on its own as `denied/gateError` (the exception's type and message in the row's
  message; kept locally, never uploaded: no ticket was looked up for certain), shown as a
  refusal on the lane's lights and display, and reported like any decision. If the journal
  fails too, the refusal is counted and reported as unrecorded (agent.runtime.gate
  `_unrecorded`: `unrecorded_scans`, `journal_unavailable`).
- `after_journal`: the scan's decision was made, and its row committed if it is recorded at
  all (by the lane, or inside the gate before the gate raised: `Gate.committed`). That row is
  kept exactly as it is — never a second row for the scan, never rewritten. An admit whose
  gate did not open is not voided either: the exception may have come after its relay fired
  (inside a driver's pulse), and voiding on that guess frees the ticket for a second person.
  It stands and is shown as a refusal a steward reads ("a steward must let you through"),
  like an unopened admit the lane cannot void (agent.runtime.lane `_unopened`).

Both are counted per lane and stage (status `decision_errors`, the reason `decision_failing`,
the metric `gate_decision_errors_total`), and logged: with the traceback the first time an
error is seen, in one line after that. The API token never appears: every text is redacted
(agent.errors.redact).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from agent.config import LaneConfig
from agent.core.codes import clean_code
from agent.core.decide import Decision
from agent.errors import redact
from agent.ops.redact import mask_code
from agent.runtime.gate import ScanResult
from agent.store.passages import now_iso
from drivers import Scan

log = logging.getLogger("agent.runtime.lane")  # the lane's own: where its failures are looked for

GATE_ERROR = "gateError"  # the refusal's detail, and its display key (agent.runtime.display_text)
STAGES = ("before_journal", "after_journal")
RECENT_S = 300.0  # failures in the last 5 minutes keep the status reason (warn) after a good one
ERROR_TEXT_MAX = 300  # characters of the exception's text kept in a row, status and the log
MASK_FROM = 4  # a shorter code is not looked for in the text (it would mangle it)
_SEEN_MAX = 64  # distinct errors remembered for "traceback once"; forgotten all at once beyond


@dataclass(slots=True)
class Progress:
    """How far `LaneRunner._decide` got with one scan, for the net if it raises. Each step
    is marked before it is tried, so the net never repeats the step that raised."""

    started: float  # time.perf_counter() when the scan was taken up
    scan: Scan  # on the time decisions use (the clock's correction applied, when it is)
    released: bool = False
    asked_gate: bool = False  # Gate.scan was called (its `committed` is this scan's)
    result: ScanResult | None = None  # the gate's answer (None: the gate raised before it)
    pulsed: bool = False
    shown: bool = False
    noted: bool = False
    sunk: bool = False


def error_text(exc: BaseException, code: str) -> str:
    """The exception's type and message on one line, at most ERROR_TEXT_MAX: the token
    redacted, and the scanned code masked as status masks it (agent.ops.redact: a code is a
    bearer credential, and this text reaches status's reasons and last scan's message)."""
    text = redact(f"{type(exc).__name__}: {exc}".replace("\n", " ").strip())
    code = clean_code(code)
    if len(code) >= MASK_FROM:
        text = text.replace(code, mask_code(code))
    return text if len(text) <= ERROR_TEXT_MAX else text[:ERROR_TEXT_MAX - 3] + "..."


def gate_error_refusal(code: str, kind: str, lane: LaneConfig, text: str) -> Decision:
    """What a scan whose decision raised is journaled and shown as: denied/gateError, no
    ticket named (nothing looked up can be trusted), the error in its message."""
    return Decision(False, "denied", GATE_ERROR, "out" if lane.direction == "out" else "in",
                    f"Gate error ({text}): this scan was not decided; please call staff",
                    clean_code(code), "nfc" if kind == "nfc" else "barcode")


def unopened_admit(decision: Decision, uuid: str | None, text: str) -> Decision:
    """An admit that stands (its row kept) whose gate was not opened by this lane: shown and
    reported as a refusal a steward reads, as `_unopened` does for one it cannot void."""
    log.error("admit %s stands after a gate error (%s); its gate was not opened by this "
              "lane: a steward must let the patron through", uuid, text)
    return replace(decision, admit=False, status="denied", detail=GATE_ERROR,
                   message=f"Gate error after this admit was recorded ({text}); a steward "
                           "must let you through")


class DecisionErrors:
    """One lane's decisions that ended in an exception: counted per stage, the run of
    failures now in progress (`failing_since`, cleared by the next decision that completes),
    the last error, and which errors were logged with their traceback already."""

    def __init__(self, lane: str):
        self.lane = lane
        self.totals = dict.fromkeys(STAGES, 0)
        self.failing_since: str | None = None  # set while the lane's last decision failed
        self.last: dict[str, Any] | None = None
        self._recent: deque[float] = deque()
        self._seen: set[tuple[str, str, str, int]] = set()  # (stage, type, file, line) logged
        self._lock = threading.Lock()

    def decided(self) -> None:
        """A decision completed: the lane's decisions are no longer failing."""
        if self.failing_since is not None:
            self.failing_since = None
            log.warning("lane %s: decisions work again", self.lane)

    def failed(self, stage: str, exc: BaseException, text: str, code: str,
               uuid: str | None) -> None:
        """Count and log one failure (with the traceback the first time this error is seen)."""
        at = now_iso()
        with self._lock:
            self.totals[stage] += 1
            now = time.monotonic()
            self._recent.append(now)
            while self._recent and now - self._recent[0] > RECENT_S:
                self._recent.popleft()
            if self.failing_since is None:
                self.failing_since = at
            self.last = {"at": at, "stage": stage, "error": text, "uuid": uuid}  # no code
            key = (stage, *_raised_at(exc))
            first = key not in self._seen
            if first:
                if len(self._seen) >= _SEEN_MAX:
                    self._seen.clear()
                self._seen.add(key)
        if stage == "after_journal":
            what = f"after its decision (its row {uuid or '(none)'} kept as it is)"
        else:
            what = (f"before any row: refused, journaled as denied/gateError (row {uuid})"
                    if uuid else "before any row: refused as denied/gateError, NOT journaled "
                    "(the journal failed too)")
        log.error("lane %s: decision failed for scan of %s, %s: %s%s", self.lane, code, what,
                  text, "" if first else " (an error seen before, raised at the same place: "
                  "its traceback was logged the first time)", exc_info=exc if first else None)

    def get_status(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            recent = sum(1 for at in self._recent if now - at <= RECENT_S)
            return {"failing_since": self.failing_since, "last": dict(self.last or {}) or None,
                    "total": dict(self.totals), "last_5min": recent}


def _raised_at(exc: BaseException) -> tuple[str, str, int]:
    """What makes two errors the same one: their type and the line that raised them (their
    messages may differ by the scan: a code, an id)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return type(exc).__name__, "", 0
    return type(exc).__name__, tb.tb_frame.f_code.co_filename, tb.tb_lineno
