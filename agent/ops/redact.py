"""Scanned codes are bearer credentials: a code read off /status can be printed and walked in.

The status endpoint listens on loopback without a token by default, where any local user can
read it. So codes in what it serves are masked (`…` and the last 4 characters, enough to match
a complaint to a scan) unless the request is authenticated with `[status] token`. Metrics carry
no codes at all (labels are lanes, statuses, events and reader URLs).
"""

from __future__ import annotations

from typing import Any

SHOWN = 4  # characters of a code left visible
MIN_SHOWN_LEN = 8  # shorter codes are masked whole: 4 characters would be half of them


def mask_code(code: Any) -> Any:
    """`NU-VALID-0001` -> `…0001`; a short code -> `…`; anything not text unchanged."""
    if not isinstance(code, str) or not code:
        return code
    return "…" + code[-SHOWN:] if len(code) >= MIN_SHOWN_LEN else "…"


def masked_report(report: dict[str, Any]) -> dict[str, Any]:
    """A copy of the status report with every lane's last scanned code masked."""
    lanes = []
    for lane in report.get("lanes") or []:
        last = lane.get("last_scan") if isinstance(lane, dict) else None
        if isinstance(last, dict) and "code" in last:
            lane = {**lane, "last_scan": {**last, "code": mask_code(last["code"])}}
        lanes.append(lane)
    return {**report, "lanes": lanes} if "lanes" in report else dict(report)
