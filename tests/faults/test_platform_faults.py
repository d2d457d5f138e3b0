"""Platform failures: the gate keeps deciding at full speed, names the fault, loses nothing.

One daemon run goes through the faults the sandbox can inject, one after the other — 429
storms, 5xx, slow answers (3 s), connection resets, malformed JSON, a revoked token (401,
renewed the way the status message tells a technician to: new token file + SIGHUP), an expired
trial (403) and a server clock 10 minutes off (the gate then decides by the platform's time:
agent.runtime.clock). In each phase scans are fed while the fault is
active (after /status names it), their decision latency is taken from the daemon's own
`latency_ms`, then the fault is cleared and the test waits for the backlog to drain and the
reason to clear. At the end every uploadable scan must be on the platform exactly once.

The hot path must not feel the network: the p99 decision latency in each fault phase is compared
with the fault-free phase of the same run. The bound is deliberately generous (absolute times
vary between machines and runs); the figures themselves are printed and quoted in
RELIABILITY.md.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from agent import demo_data
from tests.conftest import FIGURES
from tests.faults.conftest import (
    LANES,
    FaultSite,
    cache_items,
    feed,
    p99,
    status_or_none,
)
from tests.rigs import audit_uploads, wait_until

TICKETS = 3000
PER_PHASE = 150
P99_RATIO_BOUND = 5.0  # generous on purpose; the target (2x) is reported, see RELIABILITY.md
# A scan that waited on the platform would take at least a network wait: the slow phase answers
# after SLOW_S. So a phase's p99 may exceed 5x the baseline when a neighbouring test (two pytest
# workers share 2 cores) loads the machine, as long as it stays far below any network wait
# (seen once: 172 ms in the lost-answer phase against a 20 ms baseline).
P99_CEILING_MS = 500.0
FIRST_HOLD_S = 2.0
# The slow phase's answers: six times the ceiling a scan may take, and longer than the phase's
# feeding (an upload stays on the wire while the scans are decided). It was 10 s; the test's
# longest wait, and 3 s tells a gate that waits on the network just as well.
SLOW_S = 3.0


def _reasons(report: dict[str, Any] | None) -> set[str]:
    return {r["code"] for r in (report or {}).get("reasons", [])}


class Phases:
    def __init__(self, site: FaultSite):
        self.site = site
        # 2 s, not 10, before a batch whose answer confirmed nothing is sent again: the phases
        # of such answers waited the 10 s out (tests/faults/shorter_hold/sitecustomize.py)
        self.run = site.daemon(first_hold_s=FIRST_HOLD_S)
        self.next_code = 0
        self.figures: dict[str, dict[str, Any]] = {}

    def status(self) -> dict[str, Any] | None:
        return status_or_none(self.run)

    def feed_phase(self, name: str) -> list[dict[str, Any]]:
        """Feed PER_PHASE fresh tickets in small steps; return their decisions."""
        before = len(self.run.decisions())
        for _ in range(PER_PHASE // 10):
            for n in range(10):
                lane = LANES[n % 5 == 0]  # floor: capacity 500, 120 inside already
                feed(self.site.scanners[lane], [demo_data.bulk_barcode(self.next_code)])
                self.next_code += 1
            time.sleep(0.02)
        decisions = self.run.wait_decisions(before + PER_PHASE, timeout=30)[before:]
        assert len(decisions) == PER_PHASE
        statuses = Counter((d["lane"], d["status"]) for d in decisions)
        assert set(s for _, s in statuses) == {"valid"}, (name, statuses)  # fresh tickets in
        latencies = [d["latency_ms"] for d in decisions]
        self.figures[name] = {"p99_ms": round(p99(latencies), 3),
                              "max_ms": round(max(latencies), 3)}
        return decisions

    def wait_reason(self, code: str, timeout: float = 20) -> None:
        wait_until(lambda: code in _reasons(self.status()), timeout, f"/status to say {code}")

    def recover(self, gone: str | None, timeout: float = 45) -> None:
        """After the fault is cleared: backlog uploaded and the reason gone."""
        def drained() -> bool:
            report = self.status()
            return bool(report and report["journal"]["pending"] == 0
                        and (gone is None or gone not in _reasons(report)))
        wait_until(drained, timeout, f"the backlog to drain and {gone} to clear", step=0.1)

    def phase(self, name: str, inject: Callable[[], None], clear: Callable[[], None],
              reason: str | None) -> None:
        inject()
        if reason:
            self.wait_reason(reason)
        self.feed_phase(name)
        if reason:  # still named after the scans: the fault lasts, so does the reason
            assert reason in _reasons(self.status()), name
        clear()
        self.recover(reason)


@pytest.mark.e2e
@pytest.mark.slow
def test_platform_faults_do_not_slow_or_lose_scans(site_factory) -> None:
    site: FaultSite = site_factory(extra_tickets=TICKETS, rpm=600, window_s=2,
                                   async_delay_s=0.05)
    site.write_config(upload_interval_s=0.3, batch=20, delta_interval_s=1.0, timeout_s=15)
    sb = site.sandbox
    p = Phases(site)
    started = time.monotonic()
    p.run.wait_ready()
    wait_until(lambda: (cache_items(p.status() or {"cache": {}}) or 0) >= TICKETS, 30,
               "the first full sync")

    p.feed_phase("baseline")
    p.recover(None)
    clear = sb.clear_faults
    p.phase("429_storm", lambda: sb.set_faults(storm=True), clear, "rate_limited")
    p.phase("5xx", lambda: sb.set_faults(error_rate=1.0), clear, "platform_unreachable")
    p.phase("reset", lambda: sb.set_faults(reset_rate=1.0), clear, "platform_unreachable")
    p.phase("malformed_json", lambda: sb.set_faults(malformed_rate=1.0), clear,
            "platform_unreachable")
    # Faults only uploads meet (no reason can show before scans are fed): the platform
    # applies a batch and its answer is lost or turns into a 500; then answers that confirm
    # nothing (kept, retried with back-off under the same request uuid).
    p.phase("lost_after_commit", lambda: sb.set_faults(lost_after_commit_rate=0.6,
                                                       error_after_commit_rate=0.4), clear, None)
    p.phase("success_false", lambda: sb.set_faults(upload_answer="success_false"), clear, None)

    def slow() -> None:
        sb.set_faults(latency_s=SLOW_S)
        # the fault is on the wire: a slow answer is still an answer (timeout_s = 15), so the
        # gate reports no fault; it must simply not wait for it
    p.phase("slow_3s", slow, clear, None)

    def renew_token() -> None:
        site.write_token(sb.add_token())
        p.run.signal(signal.SIGHUP)
    p.phase("revoked_token_401", lambda: sb.revoke_token(sb.token), renew_token, "auth_failed")
    p.phase("trial_expired_403", lambda: sb.set_faults(trial_expired=True), clear, "auth_failed")
    p.phase("clock_600s_off", lambda: sb.set_faults(clock_offset_s=600), clear, "clock_corrected")
    p.feed_phase("baseline_after")
    p.recover(None)
    p.run.signal(signal.SIGTERM)
    assert p.run.stop() == 0
    elapsed = time.monotonic() - started

    decisions = site.decisions()
    uploads = site.uploads()
    audit = audit_uploads(uploads)
    assert any(u.get("skipped") == "answered success_false" for u in uploads)
    recorded = Counter(audit["applied"])
    lost = [d["uuid"] for d in decisions if recorded[d["uuid"]] == 0]
    duplicated = [u for u, n in recorded.items() if n > 1]
    assert not lost and not duplicated
    # among all rows received: no scan again under a new request uuid
    assert audit["duplicates"] == 0 and not audit["resent"], audit["resent"][:5]
    assert audit["replays"] > 0  # the lost answers were retried with their own uuids
    assert set(recorded) <= {d["uuid"] for d in decisions}
    states = Counter(r["upload_state"] for r in site.journal_rows())
    assert set(states) == {"sent"}, states

    base = p.figures["baseline"]["p99_ms"]
    for figures in p.figures.values():
        figures["ratio_to_baseline"] = round(figures["p99_ms"] / base, 2)
    FIGURES["platform_faults"] = {
        "scans": len(decisions), "lost": len(lost), "duplicated": len(duplicated),
        "resent_under_new_uuid": len(audit["resent"]), "rows_replayed": audit["replays"],
        "seconds": round(elapsed, 1), "phases": p.figures}
    print("platform fault figures:", FIGURES["platform_faults"])
    slowed = {name: f for name, f in p.figures.items()
              if f["ratio_to_baseline"] > P99_RATIO_BOUND and f["p99_ms"] > P99_CEILING_MS}
    assert not slowed, p.figures
