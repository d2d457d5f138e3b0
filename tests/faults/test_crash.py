"""Crash consistency: SIGKILL the real daemon again and again while it decides and uploads.

The journal is the promise behind every opened gate: a scan that was decided (its log line was
written) or that opened a relay must reach the platform exactly once, with the time it was
scanned, however often the power is cut. And a ticket admitted once to a single-access zone must
be refused afterwards, restarts or not. This test feeds thousands of scans through two pty
scanners and kills the daemon (SIGKILL, no clean-up) at moments chosen to hurt:

- `burst`: a burst of scans is written and the daemon is killed a few ms later, while the lanes
  are committing journal rows;
- `inflight`: the sandbox answers slowly (latency) and the kill comes while an upload request is
  on the wire (seen in /status), so the platform records a batch the journal never marks sent;
- `recorded`: the kill comes the moment the sandbox has recorded a batch, before the daemon can
  mark it sent;
- `random`: at a random time from process start (during start-up, sync or decisions).

Then one last run drains the outbox and stops cleanly, and the evidence from the outside (log
lines, relay logs, journal file, sandbox) is checked. Scans typed while the daemon was dead are
lost by the pty, as with a real scanner: only what was decided counts.
"""

from __future__ import annotations

import itertools
import random
import signal
import time
from collections import Counter

import pytest

from agent import demo_data
from agent.core.codes import format_upload_time, parse_utc_iso
from tests.conftest import FIGURES
from tests.faults.conftest import LANES, FaultSite, cache_items, feed
from tests.rigs import audit_uploads, wait_until

TICKETS = 15000  # the planned storm takes about 8,500 fresh ones; the rest: extra cycles
CYCLES = 24
PER_CYCLE = 350
FINAL = 1500
MODES = ("burst", "inflight", "recorded", "random")


class Codes:
    """Mostly first scans of distinct tickets, some repeats (same lane), a few refusals."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.next_fresh = 0
        self.history: list[tuple[str, str]] = []

    def take(self, n: int) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {lane: [] for lane in LANES}
        for _ in range(n):
            roll = self.rng.random()
            if roll < 0.12 and self.history:
                lane, code = self.rng.choice(self.history)
            elif roll < 0.14:
                lane = self.rng.choice(LANES)
                code = self.rng.choice([demo_data.CODES["refunded"], demo_data.CODES["unknown"],
                                        demo_data.CODES["locked"]])
            else:
                code = demo_data.bulk_barcode(self.next_fresh)
                lane = LANES[self.next_fresh % 3 == 0]
                self.next_fresh += 1
                self.history.append((lane, code))
            out[lane].append(code)
        return out


def _feed_all(site: FaultSite, batch: dict[str, list[str]], timeout: float = 5.0) -> int:
    return sum(feed(site.scanners[lane], codes, timeout) for lane, codes in batch.items())


@pytest.mark.e2e
@pytest.mark.slow
def test_sigkill_storm_loses_nothing_and_duplicates_nothing(site_factory) -> None:
    storm(site_factory)


def storm(site_factory, *, cycles: int = CYCLES, per_cycle: int = PER_CYCLE,
          final: int = FINAL, min_kills: int = 20, min_decisions: int = 4000, extra: str = "",
          figures: str = "crash", tickets: int = TICKETS) -> FaultSite:
    """The storm; `extra` config text (e.g. a [venue] section, tests/venue/test_crash.py);
    `tickets`: the platform's extra tickets (the first start's full sync fetches them all; a
    smaller storm needs fewer fresh ones).

    `min_decisions` proves the storm did real work: thousands of scans decided by daemons that
    were then killed mid-burst, mid-upload, mid-start-up. How many a killed run decides depends
    on the machine's speed (a burst killed 0-250 ms after it was typed, a start-up killed at a
    random time), so a fixed number of cycles missed the floor on a loaded machine (3,714 and
    3,967 of 4,000 at a load of 4-7 on 2 cores). The floor stays; the storm's length adapts
    instead: after the planned `cycles`, it goes on with more kill cycles (same rotation of
    kinds) until its killed runs decided `min_decisions - final` (the last, clean run decides
    every one of its `final` scans: asserted), up to three times the planned cycles and while
    fresh tickets last. A machine that cannot get there fails, with the figures.
    """
    rng = random.Random(7)
    site: FaultSite = site_factory(extra_tickets=tickets, rpm=6000, window_s=60,
                                   async_delay_s=0.05)
    if extra:
        site.write_config(extra=extra)
    codes = Codes(rng)
    fed = 0
    kinds: Counter[str] = Counter()
    kills_mid_burst = 0
    started = time.monotonic()
    killed_target = min_decisions - final
    for cycle in itertools.count():
        if cycle >= cycles and (len(site.decisions()) >= killed_target or cycle >= 3 * cycles
                                or codes.next_fresh + per_cycle + final > tickets):
            break
        mode = MODES[cycle % len(MODES)]
        run = site.daemon()
        if mode == "random":
            # killed at any point from process start: start-up, sync, decisions
            deadline = time.monotonic() + rng.uniform(0.3, 2.5)
            ready = False
            while time.monotonic() < deadline:
                if not ready and any(" ready: " in r.get("msg", "") for r in run.records):
                    ready = True
                    fed += _feed_all(site, codes.take(per_cycle), timeout=0.5)
                time.sleep(0.01)
            run.kill()
            kinds[mode] += 1
            continue
        run.wait_ready()
        if cycle == 0:  # the first start fills the cache from the platform
            wait_until(lambda r=run: (cache_items(r.status()) or 0) >= tickets, 60,
                       "the first full sync")
        before = len(run.decisions())
        if mode == "burst":
            fed += _feed_all(site, codes.take(per_cycle))
            time.sleep(rng.uniform(0.0, 0.25))
            run.kill()
            if len(run.decisions()) - before < per_cycle:
                kills_mid_burst += 1
        elif mode == "inflight":
            site.sandbox.set_faults(latency_s=0.5)
            fed += _feed_all(site, codes.take(per_cycle))
            wait_until(lambda r=run: (r.status().get("upload") or {}).get("requests"), 15,
                       "an upload request on the wire", step=0.02)
            time.sleep(rng.uniform(0.0, 0.3))  # well inside the 0.5 s the sandbox stalls
            run.kill()
            site.sandbox.set_faults(latency_s=0.0)
        else:  # recorded
            fed += _feed_all(site, codes.take(per_cycle))
            wait_until(lambda r=run, b=before: len(r.decisions()) - b > per_cycle // 2, 15,
                       "half the burst decided", step=0.01)
            seen = site.upload_requests()
            wait_until(lambda s=seen: site.upload_requests() > s, 15,
                       "the sandbox to record a batch", step=0.001)
            run.kill()
        kinds[mode] += 1

    # the last run: more scans, then drain the outbox and stop cleanly
    cycles_run = cycle
    run = site.daemon()
    run.wait_ready()
    batch = codes.take(final)
    fed_final = _feed_all(site, batch)
    fed += fed_final
    # a daemon that is not killed decides every scan typed into it
    wait_until(lambda: sum(1 for d in run.decisions() if d.get("uuid")) >= fed_final, 60,
               "the last run to decide every scan typed")
    try:
        wait_until(lambda: (s := run.status())["journal"]["pending"] == 0 and
                   sum(lane["queue"] for lane in s["lanes"]) == 0, 60, "the outbox to drain")
    except AssertionError:
        report = run.status()
        raise AssertionError(f"not drained: journal {report['journal']}, upload "
                             f"{report['upload']}, jobs {report['jobs']}, reasons "
                             f"{report['reasons']}") from None

    # With [venue], a row is marked sent once the bus has it; the venue leader (this daemon)
    # delivers it to the platform after that: stop only once it has (without a venue, sent
    # means the platform answered, so this holds at once).
    def delivered() -> bool:
        applied = Counter(audit_uploads(site.uploads())["applied"])
        return all(applied[r["uuid"]] for r in site.journal_rows() if r["upload_state"] != "local")

    wait_until(delivered, 60, "every scan handed over to reach the platform")
    run.signal(signal.SIGTERM)
    assert run.stop() == 0
    elapsed = time.monotonic() - started

    decisions = site.decisions()
    journal = {row["uuid"]: row for row in site.journal_rows()}
    uploads = site.uploads()
    audit = audit_uploads(uploads)
    recorded = Counter(audit["applied"])
    assert site.sandbox.state is not None
    request_uuids = list(site.sandbox.state.received.request_uuids)
    replayed = len(request_uuids) - len(set(request_uuids))

    # every decided scan is in the journal, and every journaled uploadable scan reached the
    # platform exactly once with the time it was scanned
    missing_from_journal = [d["uuid"] for d in decisions if d["uuid"] not in journal]
    assert not missing_from_journal
    states = Counter(row["upload_state"] for row in journal.values())
    assert set(states) <= {"sent", "local"}, states
    to_platform = [u for u, row in journal.items() if row["upload_state"] != "local"]
    lost = [u for u in to_platform if recorded[u] == 0]
    duplicated = [u for u in to_platform if recorded[u] > 1]
    assert not lost and not duplicated
    # ... and among *all* rows the platform received (before its de-duplication): a scan came
    # again only as a replay of its own request, never under a new request uuid
    assert audit["duplicates"] == 0 and not audit["resent"], audit["resent"][:5]
    first = {u["uuid"]: u for u in uploads if not u.get("skipped")}
    for d in decisions:
        if journal[d["uuid"]]["upload_state"] == "local":
            continue
        assert first[d["uuid"]]["scannedOn"] == format_upload_time(parse_utc_iso(d["at"])), d
        assert first[d["uuid"]]["scan"] == d["direction"]
    # nothing the daemon never decided appears on the platform
    decided = {d["uuid"] for d in decisions} | set(journal)
    assert set(recorded) <= decided

    # every relay pulse is backed by its own journaled admit on that lane, made before it
    pulses = site.relay_pulses()
    for lane in LANES:
        walls = sorted(parse_utc_iso(p["wall"]) for p in pulses if p["relay"] == lane)
        admits = sorted(parse_utc_iso(r["scanned_on"]) for r in journal.values()
                        if r["lane"] == lane and r["admit"])
        assert len(walls) <= len(admits), lane
        assert all(a <= w for a, w in zip(admits, walls, strict=False)), lane
        logged = sum(1 for d in decisions if d["lane"] == lane and d["relay"])
        assert len(walls) >= logged, lane

    # single access (max_entries = 1 on both lanes): never two admits of one ticket per lane
    admits_per_ticket = Counter((r["lane"], r["item_id"]) for r in journal.values() if r["admit"])
    assert admits_per_ticket and max(admits_per_ticket.values()) == 1
    already_in = sum(1 for d in decisions if d["status"] == "alreadyIn")
    assert already_in > 0  # repeats across restarts were refused

    kills = sum(kinds.values())
    assert fed_final == final
    assert kills >= min_kills and len(decisions) >= min_decisions, (
        f"{len(decisions)} decisions (floor {min_decisions}) and {kills} kills (floor "
        f"{min_kills}) in {cycles_run} cycles, {elapsed:.0f} s: {dict(kinds)}")
    FIGURES[figures] = {
        "scans_fed": fed, "cycles": cycles_run, "decided_logged": len(decisions),
        "journaled": len(journal),
        "uploaded": len(recorded), "kept_local": states.get("local", 0), "kills": kills,
        "kills_by_kind": dict(kinds), "burst_kills_mid_burst": kills_mid_burst,
        "lost": len(lost), "duplicated": len(duplicated),
        "resent_under_new_uuid": len(audit["resent"]), "rows_replayed": audit["replays"],
        "batches_replayed_after_kill": replayed,
        "relay_pulses": len(pulses), "admits": sum(admits_per_ticket.values()),
        "already_in_refusals": already_in, "seconds": round(elapsed, 1),
    }
    print(f"{figures} figures:", FIGURES[figures])
    return site
