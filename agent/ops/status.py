"""Health for ops: every component's `get_status()` gathered into one report with reasons.

`evaluate()` is pure (a snapshot and the time in, health and reasons out), so each reason is
tested on its own. Reasons carry a stable code (the README's troubleshooting section is keyed by
them), a level and a sentence saying what is wrong and what to do.

pass  everything as it should be
warn  the gate admits correctly, but something needs attention (scans piling up, a reader
      unplugged on a lane that has another, the platform refusing us)
fail  the gate cannot be trusted to work (journal unwritable, a lane without any reader
      connected, a stalled lane, a cache too old to decide on, a configured relay that does
      not work)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.core.codes import parse_utc_iso

CLOCK_SKEW_WARN_S = 60.0
# venue_degraded: a connected bus whose last claims all timed out (this many in a row, the last
# within the window), or whose publisher has failed for this long
VENUE_TIMEOUTS_IN_A_ROW = 3
VENUE_TIMEOUT_WINDOW_S = 300.0
VENUE_PUBLISH_FAILING_S = 60.0
# venue_degraded: a link that is up whose bus session is not set up after this long (or whose
# set-up step failed): JetStream does not answer it (no quorum)
VENUE_SETUP_SLOW_S = 10.0
VENUE_CLOCK_WARN_S = 5.0  # gates order a ticket's in/out scans by their own clocks
BACKLOG_WARN_S = 600.0
# A venue without a leader for this long (or three lease TTLs, if longer: a dead leader's
# lease runs out, then a candidate takes it within a tenth of a TTL) is not an election
VENUE_LEADERLESS_S = 30.0
LANE_STALL_S = 15.0
PLATFORM_JOBS = frozenset({"upload", "delta", "refresh", "full_resync", "initial_resync"})
AUTH_ERRORS = ("unauthenticated", "forbidden")  # PlatformClient's last_error_kind for 401/403
# Every reason code evaluate() can give (the README's troubleshooting table, and the series of
# the gate_reason_active metric: one per code, 0 or 1, so alert rules never meet a missing one)
REASON_CODES = (
    "journal_unavailable", "no_reader", "lane_stalled", "cache_empty", "cache_stale",
    "reader_disconnected", "pairings_unreadable", "relay_error", "cache_rebuilding",
    "upload_backlog", "quarantined_scans", "auth_failed", "rate_limited", "clock_skew",
    "platform_unreachable", "no_token", "venue_unreachable", "venue_conflicts", "job_failing",
    "venue_quarantined", "venue_claims_unanswered",
    "emergency_release", "emergency_input", "lane_released", "passage_forced", "held_open",
    "passage_input", "cache_unreadable", "status_unavailable", "config_not_applied",
    "cache_read_failed", "venue_db_failing", "venue_degraded", "venue_settings_differ",
    "venue_upload_stream_lost", "clock_corrected", "leader_stepped_down",
    "venue_term_unreadable", "venue_bucket_lost", "release_not_held", "venue_clock_unmeasured",
    "venue_db_unavailable", "venue_no_leader", "cache_not_rebuilt", "venue_journal_failing",
    "decision_failing",
)


@dataclass(frozen=True)
class Reason:
    level: str  # warn | fail
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level, "code": self.code, "message": self.message}


def _age(stamp: str | None, now: datetime) -> float | None:
    if not stamp:
        return None
    try:
        return (now - parse_utc_iso(stamp)).total_seconds()
    except ValueError:
        return None


def oldest_pending_age(snap: dict[str, Any], now: datetime) -> float | None:
    """Seconds the oldest unsent scan has waited, on the clock scans are stamped by; never
    below 0: that clock's offset is measured again with every platform answer, so a scan
    stamped a moment ago can read a few ms "in the future" (a negative gauge in CI)."""
    age = _age((snap.get("journal") or {}).get("oldest_pending"), scan_clock_now(snap, now))
    return None if age is None else max(0.0, age)


def scan_clock_now(snap: dict[str, Any], now: datetime) -> datetime:
    """`now` on the clock scans are stamped by (agent.runtime.clock): the platform's while
    this clock is corrected (`clock.offset_s`, the platform's time minus this clock's), else
    `now`. The age of a scan time is measured on it: on the wall clock, a correction hours
    long showed a fresh scan hours old (a false `upload_backlog`) or hid a backlog as long."""
    clock = snap.get("clock") or {}
    offset = clock.get("offset_s")
    if clock.get("corrected") and isinstance(offset, int | float):
        return now + timedelta(seconds=offset)
    return now


def evaluate(snap: dict[str, Any], now: datetime, max_cache_age_s: float) -> tuple[str, list[Reason]]:
    reasons: list[Reason] = []
    add = reasons.append
    journal = snap.get("journal") or {}
    if journal.get("error") and not journal.get("unopened"):
        add(Reason("fail", "journal_unavailable",
                   f"scan journal cannot be read ({journal['error']}); free disk space or fix "
                   "permissions of store.dir"))
    elif journal.get("error"):  # not opened at start
        add(Reason("fail", "journal_unavailable",
                   f"scan journal cannot be opened ({journal['error']}); every scan is refused "
                   "(journalUnavailable: shown, logged and counted, with no journal to record "
                   "it in) — it is tried again every few seconds and the lanes record scans "
                   "again by themselves once it opens; the file is kept as it is"))
    if snap.get("reload_error"):
        add(Reason("warn", "config_not_applied", "the configuration file is not in force "
                   f"(last reload refused): {snap['reload_error']}"))
    if snap.get("status_error"):
        add(Reason("warn", "status_unavailable", f"status endpoint {snap['status_error']}: "
                   "the gate runs without it and tries again every few seconds; free the "
                   "port or change status.listen"))
    lanes = snap.get("lanes") or []
    unjournaled = [lane for lane in lanes if lane.get("journal_error")]
    if unjournaled and not journal.get("error"):
        names = ", ".join(str(lane.get("name")) for lane in unjournaled)
        add(Reason("fail", "journal_unavailable",
                   f"scan journal write failed on lane(s) {names} ({unjournaled[0]['journal_error']});"
                   " scans are refused while store.fail_closed is on, otherwise admitted without"
                   " a record — free disk space or fix permissions of store.dir"))
    with_readers = [lane for lane in lanes if lane.get("readers")]
    if with_readers and not any(lane.get("readers_connected") for lane in with_readers):
        add(Reason("fail", "no_reader", "no reader is connected on any lane; check cables and "
                   "`gate-agent devices list`"))
    else:  # a lane with none left admits nobody, however well the others work
        for lane in with_readers:
            if not lane.get("readers_connected"):
                add(Reason("fail", "no_reader",
                           f"lane {lane.get('name')}: no reader connected, nobody can scan "
                           f"there ({', '.join(str(r.get('url')) for r in lane['readers'])}); "
                           "check cables and `gate-agent devices list`"))
    for lane in lanes:
        name = lane.get("name")
        total = len(lane.get("readers") or [])
        connected = lane.get("readers_connected", 0)
        if total and connected < total:
            down = [r.get("url") for r in lane["readers"] if not r.get("connected")]
            add(Reason("warn", "reader_disconnected",
                       f"lane {name}: reader(s) not connected: {', '.join(map(str, down))}"))
        # A relay a release cannot hold open is said once, by release_not_held (its words fit
        # a release: let people out by hand); relay_error's ("admits are refused") do not.
        unheld = lane.get("hold_errors") or {}
        for relay in (lane.get("relay"), lane.get("relay_out")):
            if relay and relay.get("url") not in unheld and not relay_ok(relay):
                add(Reason("fail", "relay_error", f"lane {name}: relay {relay.get('url')} not "
                           f"working ({relay.get('last_error') or 'not open'}): admits are "
                           "refused, the ticket stays valid, and it is tried again at each "
                           "admit; check the relay board's cable and power and "
                           "`gate-agent devices list`"))
        if (lane.get("heartbeat_age_s") or 0) > LANE_STALL_S:
            add(Reason("fail", "lane_stalled",
                       f"lane {name}: decision loop has not run for {lane['heartbeat_age_s']:.0f} s"))
        failed = decision_failing(name, lane.get("decision_errors") or {})
        if failed is not None:
            add(failed)
    reasons += turnstile_reasons(snap)
    if snap.get("pairings_error"):
        add(Reason("warn", "pairings_unreadable", f"paired devices (devices.json) not used, only "
                   f"the config file's: {snap['pairings_error']}"))
    cache = snap.get("cache") or {}
    if cache.get("unreadable"):  # not damaged: only its owner or mode is wrong, kept as it is
        add(Reason("fail", "cache_unreadable", "ticket cache cannot be opened by this service, "
                   f"every code is refused until it can: {cache['unreadable']}"))
    failed = cache_read_failure(cache, lanes, snap.get("jobs") or {})
    if failed is not None:
        add(failed)
    elif cache.get("degraded"):
        add(Reason("warn", "cache_rebuilding", f"ticket cache: {cache['degraded']}"
                   + _rebuild_tries(snap.get("jobs") or {})))
    events = cache.get("events") or []
    if not cache.get("unreadable") and failed is None and not any(e.get("items") for e in events):
        add(Reason("fail", "cache_empty", "no tickets synced yet: every code is refused "
                   "(cacheEmpty); run `gate-agent sync` or `gate-agent import`"))
    for event in events:
        age = _age(event.get("last_sync"), now)
        if event.get("items") and (age is None or age > max_cache_age_s):
            shown = "never" if age is None else f"{age / 60:.0f} min ago"
            add(Reason("fail", "cache_stale",
                       f"event {event.get('id')}: tickets last synced {shown} "
                       f"(limit sync.max_cache_age_s = {max_cache_age_s:.0f} s)"))
    rebuild = cache_rebuild_reason(cache, failed is not None, snap.get("jobs") or {}, now)
    if rebuild is not None:
        add(rebuild)
    pending_age = oldest_pending_age(snap, now)
    if pending_age is not None and pending_age > BACKLOG_WARN_S:
        add(Reason("warn", "upload_backlog",
                   f"{journal.get('pending')} scan(s) not uploaded, oldest "
                   f"{pending_age / 60:.0f} min ago"))
    if journal.get("quarantined"):
        add(Reason("warn", "quarantined_scans",
                   f"{journal['quarantined']} scan(s) refused by the platform; see "
                   "`gate-agent queue`, then `gate-agent queue retry`"))
    platform = snap.get("platform") or {}
    upload = snap.get("upload") or {}
    if platform.get("disabled") and not platform.get("offline"):
        add(Reason("warn", "no_token", f"platform link off: {platform['disabled']}"))
    last_ok, last_err = platform.get("last_success"), platform.get("last_error_at")
    # A venue gate that no longer leads does not measure the link any more: its client's last
    # error is history (agent.venue.leader `platform_status`), said by no reason.
    measured = not platform.get("not_measured_since")
    link_failing = measured and bool(last_err and (not last_ok or last_err > last_ok))
    # The token (or the company's trial) refused: named whatever request met it — a quiet gate
    # only syncs — and only while it lasts: an upload refused before a renewal is stale once
    # nothing waits for upload.
    link_refused = link_failing and platform.get("last_error_kind") in AUTH_ERRORS
    uploads_blocked = measured and upload.get("state") == "auth_failed" \
        and bool(journal.get("pending"))
    auth = link_refused or uploads_blocked
    if auth:
        said = platform.get("last_error") if link_refused else upload.get("last_error")
        add(Reason("warn", "auth_failed", f"the platform refuses this gate: {said}; "
                   "renew the token with `gate-agent login` (taken at once; under systemd a token "
                   "file edited by hand is read at the next restart, not on reload)"))
    if platform.get("rate_limited_until"):
        add(Reason("warn", "rate_limited", "the platform's rate limit is exhausted; requests wait "
                   "for the window (other devices of the company share it)"))
    # The skew is a reading of the platform's Date header: on a venue gate that no longer
    # leads it is the last one it made, as stale as its last error, so no reason comes of it.
    skew = platform.get("clock_skew_s") if measured else None
    clock = snap.get("clock") or {}
    if clock.get("corrected"):
        add(Reason("warn", "clock_corrected",
                   f"this clock is {-(clock.get('offset_s') or 0):+.0f} s off the platform's: "
                   f"decisions and scan times use the platform's time (since "
                   f"{clock.get('corrected_since')}); fix time sync (NTP) on this device"))
    elif skew is not None and abs(skew) > CLOCK_SKEW_WARN_S:
        add(Reason("warn", "clock_skew", f"this clock differs from the platform's by {skew:+.0f} s;"
                   " check NTP (validity times and scan times depend on it)"))
    if link_failing and not auth:
        add(Reason("warn", "platform_unreachable",
                   f"last platform request failed: {platform.get('last_error')}"))
    venue = snap.get("venue") or {}
    if venue.get("open_error"):  # no bus at all: said by this reason alone
        add(Reason("fail", "venue_db_unavailable",
                   f"venue state cannot be opened ({venue['open_error']}); every scan is "
                   "refused (storeUnavailable, journaled) and the relays stay shut — an "
                   "emergency release still opens them. It is tried again every few seconds: "
                   "the bus starts and the lanes open by themselves once it opens; the file is "
                   "kept as it is (never moved aside or made anew)"))
    elif venue and not venue.get("connected") and not venue.get("db_open_error") \
            and not venue.get("journal_open_error"):
        add(Reason("warn", "venue_unreachable",
                   f"venue bus not reachable ({venue.get('last_error') or 'connecting'}); "
                   "limited zones follow venue.offline_policy and scans are published later"))
    reasons += venue_db_reasons(venue)
    reasons += venue_degraded_reasons(venue, now)
    reasons += venue_watch_reasons(venue)
    reasons += venue_settings_reasons(venue)
    reasons += venue_upload_stream_reasons(venue)
    reasons += venue_bucket_reasons(venue)
    if venue.get("conflicts"):
        add(Reason("warn", "venue_conflicts",
                   f"{venue['conflicts']} admit(s) beyond a ticket's limit by gates that could "
                   "not see each other; see `gate-agent venue conflicts`"))
    if venue.get("claims_unanswered"):
        add(Reason("warn", "venue_claims_unanswered",
                   f"{venue['claims_unanswered']} admit(s) journaled while their venue claim "
                   "got no answer; held from the upload and from the bus until settled from "
                   "the stream once connected and caught up (granted, the admit stands; never "
                   "stored, it is voided)"))
    held = (venue.get("leader") or {}).get("quarantined")
    if held:
        add(Reason("warn", "venue_quarantined",
                   f"{held} venue scan(s) refused by the platform (quarantined on the bus); "
                   "see `gate-agent venue quarantine`, then `--requeue` after fixing"))
    # Jobs that talk to the platform fail for the reason just given: one reason, not four.
    said = link_failing or auth or bool(platform.get("rate_limited_until"))
    failing = [(name, job) for name, job in (snap.get("jobs") or {}).items()
               if job.get("failing_since") and not (said and name in PLATFORM_JOBS)
               and not (rebuild is not None and name == "full_resync")]
    if failing:
        names = ", ".join(name for name, _ in failing)
        add(Reason("warn", "job_failing", f"job(s) {names} failing: "
                   f"{failing[0][1].get('last_error')}"))
    reasons = sorted(dict.fromkeys(reasons), key=lambda r: r.level != "fail")  # fail first
    levels = {r.level for r in reasons}
    health = "fail" if "fail" in levels else "warn" if "warn" in levels else "pass"
    return health, reasons


def relay_ok(relay: dict[str, Any]) -> bool:
    """A configured relay can open its gate: open and without error (drivers.base.Output
    `ok`); a relay status without `ok` is judged by its last error. One rule for the
    `relay_error` reason and the `gate_relay_ok` metric."""
    return bool(relay.get("ok", not relay.get("last_error")))


def decision_failing(lane: Any, errors: dict[str, Any]) -> Reason | None:
    """A lane's decisions ending in an exception (agent.runtime.decisionnet): `fail` while its
    last decision failed (since the first of that run), `warn` for 5 minutes after one failed
    once a later decision worked (a bug one ticket meets must not vanish at the next scan)."""
    last = errors.get("last") or {}
    total = sum((errors.get("total") or {}).values())
    said = (f"the last at {last.get('at')} ({last.get('error')}); each such scan is refused "
            "and its gate stays shut, journaled as denied/gateError (when it had no row yet) "
            "or its row kept as it is (an admit that then stands: a steward lets the person "
            f"through). {errors.get('last_5min', 0)} in the last 5 min, {total} since start. "
            "The log (logger agent.runtime.lane) has the traceback: report it with the log; "
            "if every scan fails, restart the service")
    if errors.get("failing_since"):
        return Reason("fail", "decision_failing",
                      f"lane {lane}: decisions are failing since {errors['failing_since']}: "
                      + said)
    if errors.get("last_5min"):
        return Reason("warn", "decision_failing",
                      f"lane {lane}: a decision failed on an error (its latest decision "
                      "worked): " + said)
    return None


def cache_read_failure(cache: dict[str, Any], lanes: list[dict[str, Any]],
                       jobs: dict[str, Any]) -> Reason | None:
    """The running cache could not be read (a lane's `cache_error`, or status's own read):
    every code is refused (cacheUnavailable) until it is rebuilt. Said instead of
    `cache_empty` (a sync into a damaged file fixes nothing) and of `cache_rebuilding` (the
    rebuild's progress is said here, with what to do if it does not help)."""
    failing = [lane for lane in lanes if lane.get("cache_error")]
    error = failing[0]["cache_error"] if failing else cache.get("read_failed")
    if not error:
        return None
    where = f"lane(s) {', '.join(str(lane.get('name')) for lane in failing)}" if failing \
        else "status's own read"
    degraded = cache.get("degraded")
    if degraded and str(error) in degraded:  # the daemon's plan already names the error
        said = degraded
    else:
        said = f"{error}; " + (degraded or "restart the service: a damaged cache is moved "
                               "aside at start and rebuilt")
    return Reason("fail", "cache_read_failed",
                  f"ticket cache unreadable: every code is refused (cacheUnavailable) "
                  f"on {where}: {said}{_rebuild_tries(jobs)} — if it fails again, check the "
                  "disk (`dmesg`, free space in store.dir)")


def cache_rebuild_reason(cache: dict[str, Any], read_failed: bool, jobs: dict[str, Any],
                         now: datetime) -> Reason | None:
    """The nightly full resync (job `full_resync`) failing: the cache was not rebuilt. Said
    on its own, whatever the cause (a platform link failing is said too, by its reason, but
    that one does not say what the gate is missing): deltas keep the tickets current, but an
    item removed on the platform stays in the cache (and admits) until a rebuild works. The
    last rebuild is the cache's own record (`last_full` per event, kept across restarts).
    Not said while the cache is being rebuilt or cannot be read: those reasons name the
    rebuild's failure already (`_rebuild_tries`)."""
    job = jobs.get("full_resync") or {}
    if not job.get("failing_since") or read_failed or cache.get("degraded") \
            or cache.get("unreadable"):
        return None
    fulls = [e.get("last_full") for e in cache.get("events") or [] if e.get("items")]
    oldest = None if not fulls or None in fulls else min(fulls)
    age = _age(oldest, now)
    last = "never (since this cache was made)" if oldest is None else (
        f"at {oldest}" + ("" if age is None else f", {age / 3600:.1f} h ago"))
    tries = job.get("failed_in_a_row") or job.get("failures") or 1
    return Reason("warn", "cache_not_rebuilt",
                  f"ticket cache not rebuilt: the nightly full resync has failed since "
                  f"{job['failing_since']} ({tries} tr{'y' if tries == 1 else 'ies'} in a row; "
                  f"last error: {job.get('last_error')}); last full rebuild {last}; next try "
                  f"{job.get('next_run') or 'not planned'}. Deltas keep tickets current "
                  "meanwhile (cache_stale says when they do not), but items removed on the "
                  "platform stay in the cache until a rebuild works: check free space in "
                  "store.dir and the platform link, then `gate-agent sync --full`")


def _rebuild_tries(jobs: dict[str, Any]) -> str:
    """What the rebuild's own job says when it has been failing: its error and next try."""
    job = jobs.get("initial_resync") or jobs.get("full_resync") or {}
    if not job.get("last_error"):
        return ""
    return f"; the last try failed ({job['last_error']}), next try {job.get('next_run')}"


def venue_watch_reasons(venue: dict[str, Any]) -> list[Reason]:
    """What every gate can see of the venue's health beyond its own link: the leader's
    uploads stalled (the lease depends only on the bus, so a leader that lost the platform
    keeps it while no other gate can reach the platform either, and the members, whose own
    platform link is idle, would say nothing), a step-down of this gate (it handed the lease
    to a gate that reaches the platform: agent.venue.stepdown), and this
    gate's clock off the bus server's (other gates' scans are placed on this clock by the
    measured offset, but validity windows and the scan times the platform gets are this
    clock's own)."""
    found = []
    leader = venue.get("leader") or {}
    lag_s = leader.get("upload_lag_s")
    if lag_s is not None and lag_s > BACKLOG_WARN_S:
        holder = leader.get("leader") or "no device"
        found.append(Reason(
            "warn", "upload_backlog",
            f"venue: {leader.get('upload_lag')} scan(s) wait on the bus for the leader "
            f"({holder}) to upload them, oldest {lag_s / 60:.0f} min; check that device's "
            "platform link (its status: platform_unreachable, auth_failed) or restart it"))
    leaderless = leaderless_too_long(leader)
    if venue.get("connected") and leaderless is not None:
        found.append(Reason("warn", "venue_no_leader",
            f"no device has led the venue for {leaderless:.0f} s (since "
            f"{leader.get('leaderless_since')}): nobody syncs the venue's tickets from the "
            "platform (refunds and blocks do not reach the gates) or uploads its scans (they "
            f"wait on the bus); {_why_not_leading(leader)}. A gate with venue.leader = true "
            "must be up and on the bus: `gate-agent venue status` lists the gates"))
    step = leader.get("stepped_down") or {}
    if leader.get("held_until") and step:
        found.append(Reason("warn", "leader_stepped_down",
            f"this gate stepped down as the venue's leader at {step.get('at')}: "
            f"{step.get('why')}; it stays out of elections until {leader['held_until']}. "
            f"{_probe_now(leader)}. Check this device's own platform link (cable, route, "
            "firewall, DNS, api.token_file)"))
    refused = leader.get("term_unreadable")
    if refused:
        found.append(Reason("warn", "venue_term_unreadable",
            f"{refused} venue catalog message(s) refused: their leader term cannot be read "
            f"(last: {leader.get('term_refused')}); this gate does not apply them and may miss "
            "refunds and blocks the leader published: run one gate-agent version on every "
            "gate of the venue, then `gate-agent sync --full` (the leader publishes every "
            "item again)"))
    unmeasured = venue.get("clock_unmeasured_since")
    if venue.get("connected") and unmeasured and venue.get("clock_offset_s") is None:
        found.append(Reason("warn", "venue_clock_unmeasured",
            f"venue bus connected since {unmeasured} but this clock is not measured against "
            "the bus server's yet: an entry whose answer depends on the order of this gate's "
            "and other gates' scans is refused (denied/clockUnmeasured), and this gate's scans "
            "go out without an offset. The server answered without its time and no heartbeat "
            "has been delivered: check the other gates' heartbeats (`gate-agent venue status`) "
            "and the bus servers' version"))
    offset = venue.get("clock_offset_s")
    if offset is not None and abs(offset) > VENUE_CLOCK_WARN_S:
        found.append(Reason(
            "warn", "clock_skew",
            f"this clock differs from the venue bus server's by {offset:+.0f} s; in/out across "
            "gates is ordered on the bus server's clock, but validity windows and the scan "
            "times uploaded use this one: fix time sync (NTP) here or on the bus servers"))
    return found


def leaderless_too_long(leader: dict[str, Any]) -> float | None:
    """How long nobody has led the venue (agent.venue.election `leaderless_s`), once that is
    longer than an election takes; else None."""
    leaderless = leader.get("leaderless_s")
    if leaderless is None or leaderless <= max(VENUE_LEADERLESS_S,
                                               3 * (leader.get("lease_ttl_s") or 0)):
        return None
    return float(leaderless)


def _why_not_leading(leader: dict[str, Any]) -> str:
    """Why this gate, while nobody leads, does not take the lease itself."""
    if leader.get("candidate") is False:
        return "this gate may not lead (venue.leader = false)"
    if leader.get("held_until"):
        return f"this gate stepped down and stays out of elections until {leader['held_until']}"
    if leader.get("lease_error"):
        return f"this gate's last try to take the lease failed ({leader['lease_error']})"
    return "this gate is a candidate and tries to take the lease"


def _probe_now(leader: dict[str, Any]) -> str:
    """What this gate knows of its platform link now (agent.venue.stepdown: its probe, or its
    last requests' verdict until the first probe after it stopped leading)."""
    reachable = leader.get("platform_reachable")
    if reachable is True:
        return ("Its platform link now: reachable (a refused token shows only in requests: "
                "check api.token_file)")
    if reachable is False:
        return f"Its platform link now: NOT reachable ({leader.get('platform_error')})"
    return "Its platform link now: not known yet"


def venue_degraded_reasons(venue: dict[str, Any], now: datetime) -> list[Reason]:
    """A bus that is connected but does not do its work: the TCP link to this gate's node is
    up, yet JetStream does not answer (the node on the minority side of a partition, a cluster
    without quorum, the venue's stream missing), so every claim follows the offline policy and
    scans are not published. `connected` alone (venue_unreachable) cannot see it. Seen by
    claims timing out in a row, the publisher failing, or the session's set-up not getting
    through on the link (agent.venue.bus `_set_up_step`)."""
    if not venue.get("connected"):
        return []  # venue_unreachable says it
    found = []
    # the bus's session, and the venue role's (agent.venue.leader: catalog, uploads, lease)
    for part, what, costs in (
            (venue, "its session", "limited zones follow venue.offline_policy and scans are "
             "not published"),
            (venue.get("leader") or {}, "its venue role's session (catalog and upload streams, "
             "buckets)", "this gate neither follows the leader's catalog nor hands its scans "
             "over for upload, and takes no part in the leader election"),
            ((venue.get("leader") or {}).get("term_setup") or {}, "its leader term (the "
             "batches and quarantine buckets, the upload consumer)", "the venue's scans are "
             "not uploaded while this gate holds the lease")):
        step = part.get("session_step")
        setting_up = _age(part.get("setup_since"), now)
        if step not in (None, "running") and (part.get("setup_error") or (
                setting_up is not None and setting_up > VENUE_SETUP_SLOW_S)):
            found.append(f"{what} is not set up ({part.get('setup_error') or step}, "
                         f"for {setting_up or 0:.0f} s), so {costs}")
    in_a_row = venue.get("claims_timing_out") or 0
    last = _age(venue.get("claims_last_timeout"), now)
    if in_a_row >= VENUE_TIMEOUTS_IN_A_ROW and last is not None and \
            last <= VENUE_TIMEOUT_WINDOW_S:
        found.append(f"the last {in_a_row} claims got no answer "
                     f"({venue.get('claims_timeout_error') or 'timed out'}), so limited zones "
                     "follow venue.offline_policy")
    failing = _age(venue.get("publish_failing_since"), now)
    if failing is not None and failing > VENUE_PUBLISH_FAILING_S:
        found.append(f"publishing this gate's scans has failed for {failing / 60:.0f} min "
                     f"({venue.get('publish_error')})")
    if not found:
        return []
    # the errors above say what failed; the advice is for the usual cause, said as such (a
    # set-up refused for another reason, e.g. a stream's consumer limit, has no quorum issue)
    return [Reason("warn", "venue_degraded",
                   "venue bus connected but not working: " + "; ".join(found) + ". When "
                   "JetStream does not answer, it usually has no quorum (this node on the "
                   "minority side of a partition, or most nodes down) or the venue's stream is "
                   "missing; check `nats server report jetstream` and the other nodes")]


def venue_settings_reasons(venue: dict[str, Any]) -> list[Reason]:
    """A venue stream or bucket the server keeps with other settings than this gate's config
    asks (agent.venue.streams: the gate uses it as it is); the text names the setting and the
    `nats stream edit` command."""
    drift = [*(venue.get("settings_drift") or []),
             *((venue.get("leader") or {}).get("settings_drift") or [])]
    if not drift:
        return []
    more = f" (and {len(drift) - 1} more: see `gate-agent status --json`)" if len(drift) > 1 else ""
    return [Reason("warn", "venue_settings_differ", f"venue: {drift[0]}{more}")]


def venue_upload_stream_reasons(venue: dict[str, Any]) -> list[Reason]:
    """The venue's upload stream deleted or made again under this gate (agent.venue.uplink):
    the scans waiting on it went with it; until this gate has handed its scans over again
    to the new one (and the leader set up its consumer on it), they are not on their way to
    the platform."""
    lost = (venue.get("leader") or {}).get("upload_stream_lost")
    if not lost:
        return []
    return [Reason("warn", "venue_upload_stream_lost",
                   f"venue: the upload stream was lost at {lost.get('since')} "
                   f"({lost.get('error')}); this gate hands its scans sent since it was made "
                   "over again (repeats are kept once by the platform) — if it stays, check "
                   "that JetStream can create the stream (`nats stream info`)")]


def venue_bucket_reasons(venue: dict[str, Any]) -> list[Reason]:
    """A venue KV bucket deleted or made again under this gate whose loss is still being
    dealt with (agent.venue.lost_streams `adopt_buckets`): the budget's request log (the
    company's budget taken as spent until the lost requests no longer count: the leader sends
    nothing meanwhile), the quarantine (this gate's handed-over scans go again so the refused
    ones come back to it)."""
    lost = (venue.get("leader") or {}).get("buckets_lost") or {}
    return [Reason("warn", "venue_bucket_lost",
                   f"venue: bucket {stream.removeprefix('KV_')} was lost at {what.get('since')}"
                   f" ({what.get('error')}); "
                   + ("the company's request budget is taken as spent until its requests no "
                      "longer count (no platform request meanwhile)" if "BUDGET" in stream
                      else "this gate hands its scans over again, so the rows the platform "
                           "refused are quarantined again")
                   + " — if it stays, check that JetStream can create it "
                     f"(`nats kv info {stream.removeprefix('KV_')}`)")
            for stream, what in sorted(lost.items())]


_BUS_NOT_RUNNING = (
    "the venue bus is not running: this gate's scans wait in its journal to be published, "
    "other gates' scans are not applied here and claims follow venue.offline_policy — find "
    "the process holding it or fix its permissions (tried again every few seconds; the bus "
    "starts by itself once it opens)")


def venue_db_reasons(venue: dict[str, Any]) -> list[Reason]:
    """venue.db refusing the stream's messages (agent.venue.bus `_apply`): they are tried
    again in order, but until then this gate decides without the other gates' latest scans.
    Or status's own reads of it failing (agent.venue.status_read): its figures are old. Or
    the bus not opening it as it starts (agent.venue.bus `_opened`): no bus at all. The same
    for the bus's own connection to journal.db (venue_journal_failing; the lanes' journal is
    journal_unavailable's)."""
    reasons = []
    said = _failing_said(venue, (("journal.db", "journal_open", "opened by the venue bus",
                                  _BUS_NOT_RUNNING),))
    if said:
        reasons.append(Reason("warn", "venue_journal_failing", said))
    said = _failing_said(venue, (
        ("venue.db", "db_open", "opened", _BUS_NOT_RUNNING),
        ("venue.db", "apply", "written",
         "other gates' scans wait to be applied here and claims on their tickets follow "
         "venue.offline_policy — free disk space in store.dir or fix its permissions "
         "(retried by itself)"),
        ("venue.db", "db_read", "read",
         "the conflicts and occupancy shown are the last read — find the process holding it "
         "(retried by itself)")))
    if said:
        reasons.append(Reason("warn", "venue_db_failing", said))
    return reasons


def _failing_said(venue: dict[str, Any], cases: tuple[tuple[str, str, str, str], ...]) -> str:
    """The first of `cases` (file, field, what, meaning) failing, said with its error and
    since when ("" for none): each `<field>_error` and `<field>_failing_since` pair is one
    record of the bus (agent.venue.failing)."""
    for file, field, what, meaning in cases:
        error = venue.get(f"{field}_error")
        if error:
            return (f"{file} cannot be {what} since {venue.get(f'{field}_failing_since')} "
                    f"({error}); {meaning}")
    return ""


def turnstile_reasons(snap: dict[str, Any]) -> list[Reason]:
    """The turnstile's own signals (issue 17): releases, passage alarms, unwatched inputs."""
    out: list[Reason] = []
    emergency = snap.get("emergency") or {}
    if emergency.get("active"):
        lost = "" if emergency.get("connected") else (
            f"; its input {emergency.get('url')} is not watched now "
            f"({emergency.get('error') or 'connecting'}): the release holds until it is read "
            "again")
        out.append(Reason("fail", "emergency_release",
                          f"emergency input active since {emergency.get('since')}: every lane "
                          f"is held open, scans are recorded but not counted as entries{lost}"))
    elif emergency and not emergency.get("connected"):
        out.append(Reason("warn", "emergency_input",
                          f"emergency input {emergency.get('url')} is not watched "
                          f"({emergency.get('error') or 'connecting'}); check its cable"))
    for lane in snap.get("lanes") or []:
        name = lane.get("name")
        for url, error in sorted((lane.get("hold_errors") or {}).items()):
            out.append(Reason("fail", "release_not_held",
                              f"lane {name}: relay {url} is not held open during the release "
                              f"({error}): the gate may be shut; the hold is applied again "
                              "as soon as the relay answers — check the relay board's cable "
                              "and power"))
        manual = [s for s in lane.get("released_by") or [] if s.startswith("manual:")]
        if manual:
            out.append(Reason("warn", "lane_released",
                              f"lane {name} held open by {', '.join(m[7:] for m in manual)}; "
                              f"end it with `gate-agent release {name} --end`"))
        passage = lane.get("passage") or {}
        alarms = passage.get("alarms_5min") or {}
        if alarms.get("forced"):
            out.append(Reason("warn", "passage_forced",
                              f"lane {name}: {alarms['forced']} passage(s) without an admit in "
                              "the last 5 min (forced arm or tailgating)"))
        if passage.get("held_open"):
            out.append(Reason("warn", "held_open", f"lane {name}: passage "
                              f"{', '.join(passage['held_open'])} held open past its time"))
        broken = dict(passage.get("input_errors") or {})
        broken.update({d: i.get("last_error") or "not connected"
                       for d, i in (passage.get("inputs") or {}).items() if not i.get("connected")})
        if broken:
            out.append(Reason("warn", "passage_input",
                              f"lane {name}: passage input(s) not watched: "
                              f"{'; '.join(f'{d}: {e}' for d, e in broken.items())} "
                              "(admits there stand unconfirmed)"))
    return out


def summary_line(report: dict[str, Any]) -> str:
    """One line for systemd's STATUS= and the CLI header."""
    lanes = report.get("lanes") or []
    journal = report.get("journal") or {}
    admitted = sum(lane.get("decisions_total", {}).get("valid", 0) for lane in lanes)
    first = report["reasons"][0]["code"] if report.get("reasons") else ""
    return (f"{report['health']}{' (' + first + ')' if first else ''}: {len(lanes)} lane(s), "
            f"{admitted} admitted, {journal.get('pending', 0)} to upload")


def now_utc() -> datetime:
    return datetime.now(UTC)
