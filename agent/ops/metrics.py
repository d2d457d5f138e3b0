"""Prometheus metrics (prometheus-client), on a registry of the daemon's own.

Counters and the latency histogram are updated on the hot path (cheap, thread-safe); everything
that is a state (backlog, sync age, reader connections, API outcomes) is read from the status
report at scrape time by a collector, so the numbers can never drift from `GET /status`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.core.codes import parse_utc_iso
from agent.ops.status import REASON_CODES, _age, oldest_pending_age, relay_ok
from agent.venue.heartbeat import STATES

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    def __init__(self, report: Callable[[], dict[str, Any]], now: Callable[[], datetime]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter("gate_decisions_total", "Decisions by lane and status",
                                 ["lane", "status"], registry=self.registry)
        self.latency = Histogram("gate_decision_latency_seconds",
                                 "Scan to decision (incl. durable journal commit)", ["lane"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.alarms = Counter("gate_passage_alarms_total",
                              "Passage alarms by lane and kind (forced, held_open)",
                              ["lane", "kind"], registry=self.registry)
        self.registry.register(_StateCollector(report, now))

    def alarm(self, lane: str, kind: str) -> None:
        self.alarms.labels(lane, kind).inc()

    def observe(self, lane: str, status: str, latency_s: float) -> None:
        self.decisions.labels(lane, status).inc()
        self.latency.labels(lane).observe(latency_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, report: Callable[[], dict[str, Any]], now: Callable[[], datetime]):
        self.report = report
        self.now = now

    def collect(self) -> Iterator[Any]:
        snap = self.report()
        journal = snap.get("journal") or {}
        scans = GaugeMetricFamily("gate_journal_scans", "Journal rows by upload state", labels=["state"])
        for state in ("pending", "quarantined", "local", "sent", "voided"):
            scans.add_metric([state], float(journal.get(state) or 0))
        yield scans
        oldest = GaugeMetricFamily("gate_oldest_pending_age_seconds", "Age of the oldest unsent scan")
        oldest.add_metric([], oldest_pending_age(snap, self.now()) or 0.0)
        yield oldest
        age = GaugeMetricFamily("gate_sync_age_seconds", "Seconds since the last ticket sync",
                                labels=["event"])
        items = GaugeMetricFamily("gate_cached_items", "Items in the ticket cache", labels=["event"])
        rebuilt = GaugeMetricFamily("gate_cache_rebuild_age_seconds", "Seconds since the "
                                    "event's tickets were last rebuilt by a full resync (-1: "
                                    "never; status reason cache_not_rebuilt while it fails)",
                                    labels=["event"])
        for event in (snap.get("cache") or {}).get("events") or []:
            seconds = _age(event.get("last_sync"), self.now())
            age.add_metric([str(event.get("id"))], float(seconds if seconds is not None else -1))
            items.add_metric([str(event.get("id"))], float(event.get("items") or 0))
            full = _age(event.get("last_full"), self.now())
            rebuilt.add_metric([str(event.get("id"))], float(full if full is not None else -1))
        yield age
        yield items
        yield rebuilt
        unreadable = GaugeMetricFamily("gate_cache_unreadable", "1 when cache.db cannot be "
                                       "opened by this service (its owner or mode)")
        unreadable.add_metric([], 1.0 if (snap.get("cache") or {}).get("unreadable") else 0.0)
        yield unreadable
        readers = GaugeMetricFamily("gate_reader_connected", "1 when a reader is connected",
                                    labels=["lane", "reader"])
        for lane in snap.get("lanes") or []:
            for reader in lane.get("readers") or []:
                readers.add_metric([str(lane.get("name")), str(reader.get("url"))],
                                   1.0 if reader.get("connected") else 0.0)
        yield readers
        platform = snap.get("platform") or {}
        requests = CounterMetricFamily("gate_api_requests_total", "Platform requests by outcome",
                                       labels=["outcome"])
        for outcome, count in (platform.get("requests") or {}).items():
            requests.add_metric([outcome], float(count))
        yield requests
        limited = CounterMetricFamily("gate_api_rate_limited_total", "429 answers from the platform")
        limited.add_metric([], float((platform.get("requests") or {}).get("ratelimited", 0)))
        yield limited
        yield from _lane_metrics(snap.get("lanes") or [])
        available = GaugeMetricFamily("gate_journal_available",
                                      "1 when the scan journal can be written")
        available.add_metric([], 0.0 if journal.get("error") or any(
            lane.get("journal_error") for lane in snap.get("lanes") or []) else 1.0)
        yield available
        skew = platform.get("clock_skew_s")
        if skew is not None and not platform.get("not_measured_since"):
            # not exported once this venue gate stops leading: a reading it no longer makes
            # (agent.venue.leader `platform_status`) must not keep an alert on skew firing
            clock = GaugeMetricFamily("gate_clock_skew_seconds",
                                      "This clock minus the platform's (from its Date header)")
            clock.add_metric([], float(skew))
            yield clock
        yield from _venue_metrics(snap.get("venue"))
        yield from _turnstile_metrics(snap)
        reasons = GaugeMetricFamily("gate_reason_active", "1 while a health reason is in force, "
                                    "else 0 (codes as in /status)", labels=["code"])
        active = {str(r.get("code")) for r in snap.get("reasons") or []}
        for code in sorted(active | set(REASON_CODES)):
            reasons.add_metric([code], 1.0 if code in active else 0.0)
        yield reasons
        health = GaugeMetricFamily("gate_health", "0 pass, 1 warn, 2 fail")
        health.add_metric([], float({"pass": 0, "warn": 1, "fail": 2}.get(snap.get("health", ""), 2)))
        yield health


def _lane_metrics(lanes: list[dict[str, Any]]) -> Iterator[Any]:
    """Per lane: how long since its decision loop last ran (a stall), its queue, and its
    decisions that ended in an exception (agent.runtime.decisionnet)."""
    age = GaugeMetricFamily("gate_lane_heartbeat_age_seconds",
                            "Seconds since the lane's decision loop last ran", labels=["lane"])
    queued = GaugeMetricFamily("gate_lane_queue", "Scans waiting for a decision",
                               labels=["lane"])
    failed = CounterMetricFamily("gate_decision_errors", "Decisions that ended in an error, "
                                 "by lane and stage (before_journal: refused and journaled as "
                                 "denied/gateError; after_journal: its row kept as it is); "
                                 "status reason decision_failing", labels=["lane", "stage"])
    for lane in lanes:
        age.add_metric([str(lane.get("name"))], float(lane.get("heartbeat_age_s") or 0))
        queued.add_metric([str(lane.get("name"))], float(lane.get("queue") or 0))
        for stage, count in ((lane.get("decision_errors") or {}).get("total") or {}).items():
            failed.add_metric([str(lane.get("name")), str(stage)], float(count))
    yield age
    yield queued
    yield failed


def _venue_metrics(venue: dict[str, Any] | None) -> Iterator[Any]:
    """The venue bus (only with [venue]): link, lag, claims, offline decisions, conflicts."""
    if not venue:
        return
    connected = GaugeMetricFamily("gate_venue_connected", "1 when the venue bus is connected")
    connected.add_metric([], 1.0 if venue.get("connected") else 0.0)
    yield connected
    lag = GaugeMetricFamily("gate_venue_lag_messages", "Venue messages not yet applied here")
    lag.add_metric([], float(venue.get("lag") or 0))
    yield lag
    claims = CounterMetricFamily("gate_venue_claims", "Venue claims by outcome",
                                 labels=["outcome"])
    for outcome in ("granted", "conflicted", "timed_out", "not_sent"):
        claims.add_metric([outcome], float(venue.get(f"claims_{outcome}") or 0))
    yield claims
    offline = GaugeMetricFamily("gate_venue_offline_decisions",
                                "Journaled scans decided without the bus (policy applied)")
    offline.add_metric([], float(venue.get("decided_offline") or 0))
    yield offline
    unanswered = GaugeMetricFamily("gate_venue_claims_unanswered",
                                   "Admits journaled while their venue claim got no answer "
                                   "(held from the upload until settled)")
    unanswered.add_metric([], float(venue.get("claims_unanswered") or 0))
    yield unanswered
    conflicts = GaugeMetricFamily("gate_venue_conflicts",
                                  "Admits beyond a ticket's limit found after the fact")
    conflicts.add_metric([], float(venue.get("conflicts") or 0))
    yield conflicts
    offset = venue.get("clock_offset_s")
    if offset is not None:  # not measured yet: left out (status: venue_clock_unmeasured)
        clock = GaugeMetricFamily("gate_venue_clock_offset_seconds", "This clock minus the "
                                  "venue bus server's (status reason clock_skew beyond 5 s)")
        clock.add_metric([], float(offset))
        yield clock
    gates = GaugeMetricFamily("gate_venue_gates", "Gates of the venue by heartbeat state, as "
                              "this gate sees them", labels=["state"])
    for state in STATES:
        gates.add_metric([state], float((venue.get("gates") or {}).get(state, 0)))
    yield gates
    yield from _leader_metrics(venue.get("leader"))


# The venue leader's figures (VenueRole.get_status(), every gate reads them from the bus):
# metric name, help, status key. A figure not known yet is left out, never shown as 0.
LEADER_GAUGES = (
    ("gate_venue_leader_term", "Term of the venue's current leader: the lease's revision "
     "(grows at every change within one lease bucket; see gate_venue_leader_term_epoch_seconds)",
     "leader_term"),
    ("gate_venue_budget_used", "The venue's platform requests in the last minute",
     "budget_in_use_per_min"),
    ("gate_venue_budget_limit", "Platform requests per minute the venue's leader may use",
     "budget_per_min"),
    ("gate_venue_upload_lag_seconds", "How long the oldest scan on the bus has waited for "
     "the platform", "upload_lag_s"),
    ("gate_venue_upload_lag_scans", "Scans on the bus not yet at the platform", "upload_lag"),
    ("gate_venue_quarantined", "Venue scans the platform refused, held on the bus",
     "quarantined"),
)


def _leader_metrics(leader: Any) -> Iterator[Any]:
    """The venue leader (only in venue mode): who leads here, term, budget, upload lag."""
    if not isinstance(leader, dict):
        return
    mine = GaugeMetricFamily("gate_venue_leader", "1 on the device that leads the venue")
    mine.add_metric([], 1.0 if leader.get("this_device_leads") else 0.0)
    yield mine
    for name, text, key in LEADER_GAUGES:
        value = leader.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], float(value))
            yield gauge
    created = leader.get("leader_term_epoch")  # ISO 8601 in status, as every time there
    if isinstance(created, str):
        epoch = GaugeMetricFamily(
            "gate_venue_leader_term_epoch_seconds", "Epoch of the venue leader's term: when its "
            "lease bucket was created (unix time); a later epoch outranks every revision of an "
            "earlier one")
        epoch.add_metric([], parse_utc_iso(created).timestamp())
        yield epoch


def _turnstile_metrics(snap: dict[str, Any]) -> Iterator[Any]:
    """Passages per outcome, people per zone, releases (issue 17)."""
    passages = CounterMetricFamily("gate_passages", "Passages by lane and outcome "
                                   "(passed, voided, forced, held_open, free)",
                                   labels=["lane", "outcome"])
    people: dict[str, int] = {}
    released = GaugeMetricFamily("gate_lane_released", "1 while a lane is held open",
                                 labels=["lane"])
    not_held = GaugeMetricFamily("gate_release_not_held", "1 while a released lane's relay "
                                 "is not held open (the board reset or is gone: the gate may "
                                 "be shut)", labels=["lane", "relay"])
    relays = GaugeMetricFamily("gate_relay_ok", "1 when a lane's relay can open its gate "
                               "(0: status reason relay_error)", labels=["lane", "relay"])
    inputs = GaugeMetricFamily("gate_passage_input_connected", "1 while a lane's passage "
                               "input is watched (0: status reason passage_input)",
                               labels=["lane", "direction"])
    waiting = GaugeMetricFamily("gate_passage_waiting", "Passages a lane waits for: admits "
                                "(kind admit) and technicians' one-person releases (kind "
                                "release)", labels=["lane", "kind"])
    for lane in snap.get("lanes") or []:
        name = str(lane.get("name"))
        released.add_metric([name], 1.0 if lane.get("released_by") else 0.0)
        for relay in (r for r in (lane.get("relay"), lane.get("relay_out")) if r):
            url = str(relay["url"])
            not_held.add_metric([name, url],
                                1.0 if url in (lane.get("hold_errors") or {}) else 0.0)
            relays.add_metric([name, url], 1.0 if relay_ok(relay) else 0.0)
        passage = lane.get("passage") or {}
        for direction, watched in sorted((passage.get("inputs") or {}).items()):
            inputs.add_metric([name, direction], 1.0 if watched.get("connected") else 0.0)
        for direction in sorted(passage.get("input_errors") or {}):  # never opened
            inputs.add_metric([name, direction], 0.0)
        if passage:
            waiting.add_metric([name, "admit"], float(passage.get("waiting") or 0))
            waiting.add_metric([name, "release"],
                               float(len(passage.get("releases_waiting") or [])))
        for outcome, count in (passage.get("totals") or {}).items():
            passages.add_metric([str(lane.get("name")), outcome], float(count))
        for zone, count in (passage.get("people") or {}).items():
            people[zone] = people.get(zone, 0) + count
    yield passages
    yield released
    yield not_held
    yield relays
    yield inputs
    yield waiting
    zones = GaugeMetricFamily("gate_zone_people", "People in a zone counted from passages "
                              "here (in minus out) since start", labels=["zone"])
    for zone, count in people.items():
        zones.add_metric([zone], float(count))
    yield zones
    emergency = GaugeMetricFamily("gate_emergency_release", "1 while the emergency input is "
                                  "active (every lane held open)")
    emergency.add_metric([], 1.0 if (snap.get("emergency") or {}).get("active") else 0.0)
    yield emergency
