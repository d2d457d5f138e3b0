"""The venue's part of /status and /metrics, as pure functions of a status snapshot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from agent.commands.daemon import _leader_line
from agent.core.codes import utc_iso
from agent.ops.heartbeat import RateWindow, compact
from agent.ops.metrics import Metrics
from agent.ops.status import evaluate, venue_degraded_reasons

VENUE = {"venue": "hall", "device": "g1", "stream": "VENUE_hall", "connected": True,
         "last_error": None, "applied_seq": 10, "lag": 0, "conflicts": 0,
         "decided_claimed": 4, "decided_offline": 0, "claims_granted": 4,
         "claims_conflicted": 2, "claims_timed_out": 0, "voids": 0, "published": 6,
         "bad_messages": 0, "conflicts_found": 0}


def _codes(venue: dict[str, Any] | None) -> list[str]:
    _health, reasons = evaluate({"venue": venue}, datetime.now(UTC), 3600)
    return [r.code for r in reasons if r.code.startswith("venue")]


def test_venue_reasons() -> None:
    assert _codes(None) == []  # no [venue]: nothing about a venue
    assert _codes(VENUE) == []
    assert _codes({**VENUE, "connected": False, "last_error": "no servers"}) == \
        ["venue_unreachable"]
    assert _codes({**VENUE, "conflicts": 2}) == ["venue_conflicts"]
    assert _codes({**VENUE, "leader": {"quarantined": 0}}) == []
    assert _codes({**VENUE, "leader": {"quarantined": 3}}) == ["venue_quarantined"]
    assert _codes({**VENUE, "claims_unanswered": 2}) == ["venue_claims_unanswered"]
    refused = {"term_unreadable": 2, "term_refused": "message 9 on venuecat.hall.pass.1: "
               "Venue-Leader-Term 'x' is neither <revision> nor <epoch>/<revision>"}
    assert _codes({**VENUE, "leader": refused}) == ["venue_term_unreadable"]
    _health, reasons = evaluate({"venue": {**VENUE, "leader": refused}}, datetime.now(UTC), 3600)
    said = next(r.message for r in reasons if r.code == "venue_term_unreadable")
    assert "2 venue catalog message(s) refused" in said and "'x'" in said
    assert "refunds and blocks" in said
    failing = {**VENUE, "apply_error": "StoreError: database or disk is full",
               "apply_failing_since": "2026-12-06T20:00:00Z"}
    assert _codes(failing) == ["venue_db_failing"]
    _health, reasons = evaluate({"venue": failing}, datetime.now(UTC), 3600)
    said = next(r.message for r in reasons if r.code == "venue_db_failing")
    assert "disk is full" in said and "free disk space in store.dir" in said


def test_a_connected_bus_that_does_not_answer_is_degraded() -> None:
    """Connected (the TCP link up) while JetStream does not work: claims keep timing out, or
    the publisher keeps failing. Said only while connected (otherwise venue_unreachable)."""
    now = datetime.now(UTC)

    def ago(seconds: float) -> str:
        return utc_iso(now - timedelta(seconds=seconds))

    def said(venue: dict[str, Any]) -> list[str]:
        return [r.message for r in venue_degraded_reasons(venue, now)]

    timing_out = {**VENUE, "claims_timing_out": 3, "claims_last_timeout": ago(2),
                  "claims_timeout_error": "no settled answer in 500 ms"}
    (message,) = said(timing_out)
    assert "last 3 claims got no answer (no settled answer in 500 ms)" in message
    assert "no quorum" in message and "nats server report jetstream" in message
    assert _codes(timing_out) == ["venue_degraded"]
    assert said({**timing_out, "claims_timing_out": 2}) == []  # one slow answer is not it
    assert said({**timing_out, "claims_last_timeout": ago(301)}) == []  # long ago
    assert _codes({**timing_out, "connected": False}) == ["venue_unreachable"]
    publishing = {**VENUE, "publish_error": "TimeoutError: nats: timeout",
                  "publish_failing_since": ago(120)}
    (message,) = said(publishing)
    assert "publishing this gate's scans has failed for 2 min (TimeoutError" in message
    assert said({**publishing, "publish_failing_since": ago(30)}) == []  # a blip
    assert said({**publishing, "publish_failing_since": None}) == []  # cleared by a success
    assert len(said({**timing_out, **publishing})) == 1  # one reason saying both


def test_a_stalled_leader_and_a_clock_off_the_bus_show_on_every_gate() -> None:
    def said(venue: dict[str, Any]) -> dict[str, str]:
        _health, reasons = evaluate({"venue": venue}, datetime.now(UTC), 3600)
        return {r.code: r.message for r in reasons if r.code != "cache_empty"}

    leading = {"leader": "gate-a", "upload_lag": 40, "upload_lag_s": 30.0}
    assert said({**VENUE, "leader": leading, "clock_offset_s": 0.4}) == {}
    stalled = said({**VENUE, "leader": {**leading, "upload_lag_s": 1800.0}})
    assert "gate-a" in stalled["upload_backlog"] and "30 min" in stalled["upload_backlog"]
    assert "40 scan(s)" in stalled["upload_backlog"]
    skewed = said({**VENUE, "clock_offset_s": -190.0})
    assert "-190 s" in skewed["clock_skew"] and "NTP" in skewed["clock_skew"]
    assert said({**VENUE, "clock_offset_s": None}) == {}  # no heartbeat seen yet


def test_a_leader_that_stepped_down_says_why_for_its_hold_down() -> None:
    step = {"at": "2026-12-06T20:00:00Z", "successor": "gate-b",
            "why": "no successful platform request for 130 s (last error: GET /zones/all: "
                   "network failure); gate-b reaches the platform",
            "held_until": "2026-12-06T20:10:00Z"}
    member = {"leader": "gate-b", "stepped_down": step, "held_until": step["held_until"],
              "platform_reachable": False, "platform_checked_by": "probe"}
    _health, reasons = evaluate({"venue": {**VENUE, "leader": member}}, datetime.now(UTC), 3600)
    said = {r.code: (r.level, r.message) for r in reasons}
    level, message = said["leader_stepped_down"]
    assert level == "warn" and "network failure" in message and "gate-b reaches" in message
    assert "until 2026-12-06T20:10:00Z" in message and "firewall" in message
    # the hold-down over: the step-down stays in status, the reason goes
    _health, reasons = evaluate({"venue": {**VENUE, "leader": {**member, "held_until": None}}},
                                datetime.now(UTC), 3600)
    assert "leader_stepped_down" not in {r.code for r in reasons}


def test_venue_metrics() -> None:
    snap = {"venue": {**VENUE, "lag": 3, "decided_offline": 5, "conflicts": 1,
                      "claims_unanswered": 2},
            "health": "warn"}
    text = Metrics(lambda: snap, lambda: datetime.now(UTC)).render().decode()
    for line in ("gate_venue_connected 1.0", "gate_venue_lag_messages 3.0",
                 'gate_venue_claims_total{outcome="granted"} 4.0',
                 'gate_venue_claims_total{outcome="conflicted"} 2.0',
                 "gate_venue_offline_decisions 5.0", "gate_venue_conflicts 1.0",
                 "gate_venue_claims_unanswered 2.0"):
        assert line in text, line
    bare = Metrics(lambda: {"health": "pass"}, lambda: datetime.now(UTC)).render().decode()
    assert "gate_venue" not in bare


def test_venue_leader_metrics() -> None:
    leader = {"this_device_leads": True, "leader_term": 3,
              "leader_term_epoch": "2026-12-07T02:29:34.257601Z", "budget_in_use_per_min": 12,
              "budget_per_min": 54, "upload_lag_s": 2.5, "upload_lag": 40, "quarantined": 0}
    text = Metrics(lambda: {"venue": {**VENUE, "leader": leader}},
                   lambda: datetime.now(UTC)).render().decode()
    for line in ("gate_venue_leader 1.0", "gate_venue_leader_term 3.0",
                 "gate_venue_leader_term_epoch_seconds 1.796610574257601e+09",  # that instant
                 "gate_venue_budget_used 12.0", "gate_venue_budget_limit 54.0",
                 "gate_venue_upload_lag_seconds 2.5", "gate_venue_upload_lag_scans 40.0",
                 "gate_venue_quarantined 0.0"):
        assert line in text, line
    # a gate that does not lead, before the first figures: 0, and nothing made up
    waiting = {"this_device_leads": False, "leader_term": None,
               "budget_in_use_per_min": None, "upload_lag_s": None}
    text = Metrics(lambda: {"venue": {**VENUE, "leader": waiting}},
                   lambda: datetime.now(UTC)).render().decode()
    assert "gate_venue_leader 0.0" in text
    assert "gate_venue_budget_used" not in text and "gate_venue_upload_lag_seconds" not in text
    assert "gate_venue_leader_term" not in text  # nor a term (or its epoch) nobody holds
    alone = Metrics(lambda: {"venue": VENUE}, lambda: datetime.now(UTC)).render().decode()
    assert "gate_venue_leader" not in alone


def test_a_link_this_gate_no_longer_measures_is_not_said_to_fail() -> None:
    """A venue gate that led, then stopped (a step-down, a lost lease): its client's last
    error is history, marked `not_measured_since`; no reason is drawn from it."""
    failed = {"last_success": "2026-12-06T19:58:00.000000Z", "last_error_kind": "transport",
              "last_error": "GET /zones/all: network failure",
              "last_error_at": "2026-12-06T20:00:00.000000Z", "not_measured_since": None}
    refused = {**failed, "last_error_kind": "unauthenticated", "last_error": "401"}

    def codes(platform: dict[str, Any]) -> set[str]:
        upload = {"state": "auth_failed" if platform["last_error"] == "401" else "backoff",
                  "last_error": platform["last_error"]}
        snap = {"platform": platform, "venue": VENUE, "journal": {"pending": 3},
                "upload": upload}
        _health, reasons = evaluate(snap, datetime.now(UTC), 3600)
        return {r.code for r in reasons}

    assert "platform_unreachable" in codes(failed)  # leading: measured by its requests
    assert "auth_failed" in codes(refused)
    since = "2026-12-06T20:01:00.000000Z"
    assert not {"platform_unreachable", "auth_failed"} & codes(
        {**failed, "not_measured_since": since})
    assert not {"platform_unreachable", "auth_failed"} & codes(
        {**refused, "not_measured_since": since})


def test_a_clock_skew_this_gate_no_longer_measures_is_history() -> None:
    """The platform's clock skew is a reading of its Date header, made only by the leader's
    requests: once this gate stops leading, its last reading goes stale like its last error.
    No `clock_skew` reason, no `gate_clock_skew_seconds` (an alert rule reads it), no skew in
    the heartbeat; /status keeps the number beside `not_measured_since`."""
    leading = {"last_success": "2026-12-06T20:00:00.000000Z", "clock_skew_s": 300.0,
               "not_measured_since": None}
    stale = {**leading, "not_measured_since": "2026-12-06T20:01:00.000000Z"}

    def seen(platform: dict[str, Any]) -> tuple[set[str], str, Any]:
        snap = {"platform": platform, "venue": VENUE}
        _health, reasons = evaluate(snap, datetime.now(UTC), 3600)
        metrics = Metrics(lambda: snap, lambda: datetime.now(UTC)).render().decode()
        beat = compact(snap, datetime.now(UTC), RateWindow())
        return {r.code for r in reasons}, metrics, beat["clock_skew_s"]

    codes, metrics, beat = seen(leading)
    assert "clock_skew" in codes and "gate_clock_skew_seconds 300.0" in metrics and beat == 300.0
    codes, metrics, beat = seen(stale)
    assert "clock_skew" not in codes
    assert "gate_clock_skew_seconds" not in metrics
    assert beat is None
    # the venue's own measure (heartbeats, every gate makes it) still says a skew
    _health, reasons = evaluate({"platform": stale, "venue": {**VENUE, "clock_offset_s": 9.0}},
                                datetime.now(UTC), 3600)
    assert "clock_skew" in {r.code for r in reasons}


def test_a_stepped_down_leader_says_what_it_knows_of_its_link_now() -> None:
    step = {"at": "2026-12-06T20:00:00Z", "successor": "gate-b", "why": "401",
            "held_until": "2026-12-06T20:10:00Z"}
    member = {"stepped_down": step, "held_until": step["held_until"],
              "platform_checked_by": "probe"}

    def said(**reach: Any) -> str:
        _health, reasons = evaluate({"venue": {**VENUE, "leader": {**member, **reach}}},
                                    datetime.now(UTC), 3600)
        return next(r.message for r in reasons if r.code == "leader_stepped_down")

    assert "link now: NOT reachable (1.2.3.4:443: refused)" in said(
        platform_reachable=False, platform_error="1.2.3.4:443: refused")
    assert "link now: reachable (a refused token" in said(platform_reachable=True)
    assert "link now: not known yet" in said(platform_reachable=None)


def test_a_venue_nobody_leads_is_said_once_it_is_no_election() -> None:
    """Nobody leads: no ticket sync, no upload for the whole venue. Said after three lease
    TTLs (30 s at least: an election takes one TTL and a tenth), only while this gate is on
    the bus (its reading of the bucket is current), with why this gate does not lead."""
    def said(leader: dict[str, Any], connected: bool = True) -> dict[str, tuple[str, str]]:
        _health, reasons = evaluate({"venue": {**VENUE, "connected": connected,
                                               "leader": leader}}, datetime.now(UTC), 3600)
        return {r.code: (r.level, r.message) for r in reasons}

    nobody = {"leader": None, "leaderless_since": "2026-12-07T10:00:00Z", "leaderless_s": 95.0,
              "lease_ttl_s": 10.0, "candidate": False}
    level, message = said(nobody)["venue_no_leader"]
    assert level == "warn" and "for 95 s (since 2026-12-07T10:00:00Z)" in message
    assert "may not lead (venue.leader = false)" in message and "refunds" in message
    assert "venue_no_leader" not in said({**nobody, "leaderless_s": 29.0})  # an election
    assert "venue_no_leader" not in said({**nobody, "lease_ttl_s": 40.0})  # 3 TTLs: 120 s
    assert "venue_no_leader" in said({**nobody, "lease_ttl_s": 30.0})
    assert "venue_no_leader" not in said({**nobody, "leaderless_s": None})  # someone leads
    assert "venue_no_leader" not in said(nobody, connected=False)  # venue_unreachable says
    held = said({**nobody, "candidate": True, "held_until": "2026-12-07T10:10:00Z"})
    assert "stays out of elections until 2026-12-07T10:10:00Z" in held["venue_no_leader"][1]
    failing = said({**nobody, "candidate": True, "lease_error": "TimeoutError: nats: timeout"})
    assert "last try to take the lease failed (TimeoutError" in failing["venue_no_leader"][1]
    # `gate-agent status` names the stretch in its leader line, and an election as one
    assert "Venue leader: NOBODY for 95 s (since 2026-12-07T10:00:00Z)" in _leader_line(nobody)
    assert "Venue leader: nobody (election under way)" in \
        _leader_line({**nobody, "leaderless_s": 12.0})


def test_the_bus_not_opening_journal_db_is_its_own_reason() -> None:
    """journal.db the venue bus could not open as it started (agent.venue.bus `_opened`): the
    bus is not running, said as venue_journal_failing naming the file (not venue_unreachable:
    the bus server is not the problem, nor venue_db_failing: venue.db is not)."""
    held = {**VENUE, "connected": False,
            "journal_open_error": "scan journal /var/lib/gate/journal.db cannot be opened: "
            "database is locked (another process holds it: `fuser -v "
            "/var/lib/gate/journal.db` names it)",
            "journal_open_failing_since": "2026-12-07T19:00:00Z",
            "last_error": "scan journal /var/lib/gate/journal.db cannot be opened"}
    assert _codes(held) == ["venue_journal_failing"]
    _health, reasons = evaluate({"venue": held}, datetime.now(UTC), 3600)
    (reason,) = [r for r in reasons if r.code == "venue_journal_failing"]
    said = reason.message
    assert reason.level == "warn"  # the lanes decide and journal (journal_unavailable if not)
    assert said.startswith("journal.db cannot be opened by the venue bus since "
                           "2026-12-07T19:00:00Z (scan journal /var/lib/gate/journal.db")
    assert "fuser -v /var/lib/gate/journal.db" in said and "not running" in said
    # venue.db failing too: each file its reason
    both = {**held, "db_open_error": "venue state /var/lib/gate/venue.db cannot be opened",
            "db_open_failing_since": "2026-12-07T19:00:01Z"}
    assert _codes(both) == ["venue_journal_failing", "venue_db_failing"]
    assert _codes({**held, "journal_open_error": None}) == ["venue_unreachable"]
