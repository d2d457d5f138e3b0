"""The status reasons the fault tests rely on, checked on snapshots (no daemon needed).

The end-to-end faults test found that a refused token was reported as `platform_unreachable`
on a gate with nothing to upload (only sync requests met the 401), and that `auth_failed`
outlived a renewed token. These pin the rules: `auth_failed` is named whichever request was
refused, lasts while the link's latest outcome is a refusal or scans wait behind one, and
other failures are `platform_unreachable`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agent.ops.status import evaluate

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _codes(platform: dict[str, Any], upload: dict[str, Any] | None = None,
           pending: int = 0) -> set[str]:
    snap = {"platform": platform, "upload": upload or {"state": "ok"},
            "journal": {"pending": pending}, "cache": {"events": [{"items": 1}]}}
    return {r.code for r in evaluate(snap, NOW, 3600)[1]}


def test_a_refused_sync_request_is_auth_failed_not_unreachable() -> None:
    codes = _codes({"last_success": 10.0, "last_error_at": 20.0,
                    "last_error": "GET /entry/tickets: the token was refused (401)",
                    "last_error_kind": "unauthenticated"})
    assert "auth_failed" in codes and "platform_unreachable" not in codes


def test_forbidden_is_auth_failed() -> None:
    assert "auth_failed" in _codes({"last_success": None, "last_error_at": 20.0,
                                    "last_error_kind": "forbidden"})


def test_auth_failed_clears_after_a_success_when_nothing_waits() -> None:
    platform = {"last_success": 30.0, "last_error_at": 20.0, "last_error_kind": "forbidden"}
    stale_upload = {"state": "auth_failed", "last_error": "403"}
    assert "auth_failed" not in _codes(platform, stale_upload, pending=0)
    assert "auth_failed" in _codes(platform, stale_upload, pending=3)  # scans still blocked


def test_other_failures_are_unreachable() -> None:
    codes = _codes({"last_success": 10.0, "last_error_at": 20.0, "last_error": "reset",
                    "last_error_kind": "transport"})
    assert codes >= {"platform_unreachable"} and "auth_failed" not in codes


def _reasons(snap: dict[str, Any]) -> dict[str, tuple[str, str]]:
    base = {"cache": {"events": [{"items": 1}]}, "journal": {}}
    return {r.code: (r.level, r.message) for r in evaluate({**base, **snap}, NOW, 3600)[1]}


def test_a_venue_db_not_opened_is_one_fail_reason_not_also_the_bus_unreachable() -> None:
    said = _reasons({"venue": {"venue": "hall", "connected": False,
                               "open_error": "venue state /s/venue.db is marked immutable"}})
    level, message = said["venue_db_unavailable"]
    assert level == "fail" and "/s/venue.db is marked immutable" in message
    assert "storeUnavailable" in message and "emergency release" in message
    assert "venue_unreachable" not in said


def test_a_journal_not_opened_at_start_says_it_is_tried_again_a_failing_read_does_not() -> None:
    unopened = _reasons({"journal": {"error": "scan journal /s/journal.db ...",
                                     "unopened": True}})["journal_unavailable"]
    assert unopened[0] == "fail" and "tried again every few seconds" in unopened[1]
    failing = _reasons({"journal": {"error": "disk I/O error"}})["journal_unavailable"]
    assert failing[0] == "fail" and "tried again" not in failing[1]
