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

from agent.ops.status import _age

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    def __init__(self, report: Callable[[], dict[str, Any]], now: Callable[[], datetime]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter("gate_decisions_total", "Decisions by lane and status",
                                 ["lane", "status"], registry=self.registry)
        self.latency = Histogram("gate_decision_latency_seconds",
                                 "Scan to decision (incl. durable journal commit)", ["lane"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_StateCollector(report, now))

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
        for state in ("pending", "quarantined", "local", "sent"):
            scans.add_metric([state], float(journal.get(state) or 0))
        yield scans
        oldest = GaugeMetricFamily("gate_oldest_pending_age_seconds", "Age of the oldest unsent scan")
        oldest.add_metric([], float(_age(journal.get("oldest_pending"), self.now()) or 0))
        yield oldest
        age = GaugeMetricFamily("gate_sync_age_seconds", "Seconds since the last ticket sync",
                                labels=["event"])
        items = GaugeMetricFamily("gate_cached_items", "Items in the ticket cache", labels=["event"])
        for event in (snap.get("cache") or {}).get("events") or []:
            seconds = _age(event.get("last_sync"), self.now())
            age.add_metric([str(event.get("id"))], float(seconds if seconds is not None else -1))
            items.add_metric([str(event.get("id"))], float(event.get("items") or 0))
        yield age
        yield items
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
        yield from _venue_metrics(snap.get("venue"))
        health = GaugeMetricFamily("gate_health", "0 pass, 1 warn, 2 fail")
        health.add_metric([], float({"pass": 0, "warn": 1, "fail": 2}.get(snap.get("health", ""), 2)))
        yield health


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
    for outcome in ("granted", "conflicted", "timed_out"):
        claims.add_metric([outcome], float(venue.get(f"claims_{outcome}") or 0))
    yield claims
    offline = GaugeMetricFamily("gate_venue_offline_decisions",
                                "Journaled scans decided without the bus (policy applied)")
    offline.add_metric([], float(venue.get("decided_offline") or 0))
    yield offline
    conflicts = GaugeMetricFamily("gate_venue_conflicts",
                                  "Admits beyond a ticket's limit found after the fact")
    conflicts.add_metric([], float(venue.get("conflicts") or 0))
    yield conflicts
