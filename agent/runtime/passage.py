"""Passage confirmation and alarms of one lane: did the person the gate admitted walk through?

After an admit on a lane with a passage input for its direction (`passage_in`/`passage_out`),
the scan waits `passage_timeout_ms` (agent.store.passages has the states):
- a pulse on the input in time: the admit stands (`passed`); people in the zone +1 (-1 out);
- no pulse: the admit is voided — the scans row becomes `denied/notPassed` (uploaded as
  `failed`), the admit stays in `passages`, the ticket can be used again, the venue claim is
  released with the venue's void message, and the lane shows the `not_passed` pattern.
The upload holds the admit (and the rows after it) while it waits (agent.store.journal).

Alarms: a pulse with no admit waiting (someone forced the arm, or walked in behind an admitted
person: `forced`), and an input that stays active past `held_open_ms` (`held_open`). Each is
logged, counted (status, metrics), journaled in `lane_events` and shown with the `alarm`
pattern. During a release (emergency or manual) pulses are people leaving freely: counted,
never alarms. A technician's one-person release (`gate-agent release LANE`: one relay pulse)
registers the passage it expects (`expect_release`): the next edge after its pulse is that
person's (`free`), never `forced` and never an admit's passage; an entry admit that was waiting
when it came stands at its deadline instead of being voided (the one edge may have been its
person's: "not passed" would free the ticket on a guess), an exit is voided as any unseen exit.
While it waits it shows in status (`releases_waiting`: who, directions, seconds left; the
metric `gate_passage_waiting{kind="release"}`) beside the admits (`waiting`); a release
nobody walks through is only logged.

People per zone count every passage pulse (+1 in, -1 out) of the current *counting day*: from
the last `[device] people_day_starts` (local time, default 06:00) on. Each counted pulse is a
`lane_events` row, so a restart sums them back instead of starting from zero, and the count
goes back to zero by itself when the next day starts (docs/turnstile.md).

One worker thread per lane owns the waits and its own journal connection; the input threads
only queue what they saw, so a slow fsync never loses an edge.

Three rules keep a person who went through from being voided (the ticket freed for a second one):
- the lane registers an admit's wait under `opening()`, held from just before its relay pulse,
  and the worker judges an edge only outside it: an edge that comes while the gate opens is
  judged against that wait, never as `forced` (a slow light or display used to sit between the
  pulse and the registration);
- a wait expires only when every edge seen so far has been judged: the worker can fall
  behind (its journal writes wait for the file's lock and fsync), and an edge that came in
  time but was still queued at the deadline used to leave its admit voided;
- an entry's wait whose input could not see a passage (lost during the wait, even if back
  since: an edge may have been missed; or active since before the gate opened: a passage makes
  no new edge) stands at its deadline (`interrupted`, counted `unconfirmed`), as an admit
  does whose input is down when it is made: nobody saw the person not pass. An exit's is
  voided as any other (standing would be the guess that frees the ticket: the person may
  still be inside, the ticket handed back over the barrier), and so is an exit still waiting
  when the lane stops (`stop`, a reload; agent.store.passages does the same after a crash
  and at the upload's bound). An exit admitted while its input is already down stands, as
  documented (docs/turnstile.md: voiding would record no exit at all behind a broken
  sensor; status warns `passage_input`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agent.config import LaneConfig
from agent.core.codes import utc_iso
from agent.errors import DriverError, JournalUnavailable
from agent.runtime.indicators import Indicators
from agent.store.journal import Journal
from agent.store.passages import EXIT_VOIDED_NOTE, PassageLog, now_iso
from drivers.registry import open_input

log = logging.getLogger("gate_agent.passage")

ALARM_RECENT_S = 300.0
OnAlarm = Callable[[str, str, str], None]  # lane, kind, detail
VoidClaim = Callable[[dict[str, Any]], None]


@dataclass
class _Wait:
    uuid: str
    direction: str
    deadline: float  # time.monotonic()
    since_ns: int  # time.monotonic_ns() when the gate opened: earlier edges are not this one
    shared: bool = False  # a released person's passage came during it (`expect_release`)


@dataclass
class _Release:
    """The passage a technician's one-person release expects: one person, in either
    direction its relay opens (one object in each direction's queue; the first edge uses it)."""

    by: str
    deadline: float  # time.monotonic()
    since_ns: int
    used: bool = False


class PassageWatch:
    """The passage inputs, waits and alarms of one lane (see the module docstring)."""

    def __init__(self, lane: LaneConfig, journal: Journal | None, indicators: Indicators,
                 on_alarm: OnAlarm, void_claim: VoidClaim | None = None,
                 released: Callable[[], bool] = lambda: False, day_starts: str = "06:00",
                 clock: Callable[[], datetime] = lambda: datetime.now().astimezone(),
                 exit_stands: Callable[[], None] | None = None):
        self.lane = lane
        # an exit's wait stood (passed, or its input not watched): the venue bus confirms it
        # to the other gates now (agent.venue.bus `_settle_exits`; its next round otherwise)
        self.exit_stands = exit_stands or (lambda: None)
        self.day_starts = day_starts
        self.clock = clock  # local wall clock: when the counting day starts
        self.log = PassageLog(journal) if journal is not None else None
        self.indicators = indicators
        self.on_alarm = on_alarm
        self.void_claim = void_claim
        self.released = released
        self.inputs: dict[str, Any] = {}  # direction -> Input
        self.input_errors: dict[str, str] = {}
        self.waits: dict[str, deque[_Wait]] = {"in": deque(), "out": deque()}
        self.releases: dict[str, deque[_Release]] = {"in": deque(), "out": deque()}
        self.totals: dict[str, int] = {"passed": 0, "voided": 0, "forced": 0, "held_open": 0,
                                       "free": 0, "unconfirmed": 0}
        self.people: dict[str, int] = {}  # zone -> passages in minus out (counting day)
        self.people_since = ""  # utc_iso start of the counting day `people` covers
        self._people_lock = threading.Lock()
        self.recent_alarms: deque[tuple[float, str]] = deque()
        self.held_open: set[str] = set()
        self._active_since: dict[str, float] = {}
        self._active_from_ns: dict[str, int] = {}  # direction -> the edge time it went active
        self._events: queue.Queue[tuple[str, str, bool, int] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._opening = threading.Lock()  # see opening(): an edge is judged outside it

    @property
    def configured(self) -> bool:
        return bool(self.lane.passage_in or self.lane.passage_out)

    def start(self) -> None:
        if not self.configured:
            return
        self._roll_day(load=True)
        for direction, url in (("in", self.lane.passage_in), ("out", self.lane.passage_out)):
            if not url:
                continue
            try:
                watched = open_input(url)
            except DriverError as exc:
                self.input_errors[direction] = str(exc)
                log.error("lane %s: passage input %s unavailable: %s", self.lane.name, url, exc)
                continue
            self.inputs[direction] = watched
            watched.start(lambda _url, active, ns, d=direction:
                          self._events.put(("edge", d, active, ns)))
        self._thread = threading.Thread(target=self._work, daemon=True,
                                        name=f"passage {self.lane.name}")
        self._thread.start()

    def stop(self) -> None:
        """Stop watching, and settle the admits still waiting (so a reload or a stop holds
        no upload) by the rule of agent.store.passages: an entry stands (the gate opened and
        nobody saw the person not pass), an exit is voided (nobody saw the holder leave)."""
        for watched in self.inputs.values():
            watched.stop()
        self._events.put(None)
        if self._thread is not None:
            self._thread.join(5.0)
        for waits in self.waits.values():
            while waits:
                wait = waits.popleft()
                if self.log is None:
                    continue
                try:
                    if wait.direction == "out":
                        self._voided(wait, f"the lane stopped while waiting; {EXIT_VOIDED_NOTE}",
                                     show=False)
                    else:
                        self.log.stand(wait.uuid, now_iso(), "the lane stopped while waiting")
                except JournalUnavailable as exc:
                    log.error("lane %s: wait of %s left to the next start: %s",
                              self.lane.name, wait.uuid, exc)

    @contextmanager
    def opening(self) -> Iterator[None]:
        """Held by the lane from just before its relay pulse until the admit's wait is
        registered (`admitted`): the worker judges no edge meanwhile, so an edge of the person
        the gate just let through waits for their wait instead of being taken for `forced`."""
        with self._opening:
            yield

    def admitted(self, uuid: str, direction: str, since_ns: int | None = None) -> None:
        """Called by the lane, under `opening()`, after the relay pulse of an admit whose row
        waits for us; `since_ns`: when the gate opened (time.monotonic_ns())."""
        since_ns = time.monotonic_ns() if since_ns is None else since_ns
        watched = self.inputs.get(direction)
        if watched is None or not watched.connected:
            # Nobody can see the passage: voiding would guess "not passed" and free the
            # ticket for a second person; the admit stands, status says the input is down.
            # An exit too (docs/turnstile.md): voided, a broken exit sensor would record no
            # exit at all — everyone inside, refused `alreadyIn` — until staff act.
            if self.log is not None:
                self.log.stand(uuid, now_iso(), f"passage input {direction} not watched")
            self.totals["unconfirmed"] += 1
            if direction == "out":
                self.exit_stands()
            return
        deadline = time.monotonic() + self.lane.passage_timeout_ms / 1000
        self.waits[direction].append(_Wait(uuid, direction, deadline, since_ns))
        self._events.put(("admit", uuid, False, since_ns))  # wakes the worker

    def expect_release(self, directions: tuple[str, ...], by: str,
                       since_ns: int | None = None) -> bool:
        """Called by a technician's one-person release, under `opening()`, after its relay
        pulse: the next passage in one of `directions` after `since_ns` is that person's.
        False when no passage input watches any of them (nothing to expect)."""
        since_ns = time.monotonic_ns() if since_ns is None else since_ns
        watched = [d for d in directions if d in self.inputs]
        if not watched:
            return False
        release = _Release(by, time.monotonic() + self.lane.passage_timeout_ms / 1000, since_ns)
        for direction in watched:
            self.releases[direction].append(release)
        self._events.put(("admit", "", False, since_ns))  # wakes the worker
        return True

    # -- the worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            try:
                item = self._events.get(timeout=self._next_timeout())
            except queue.Empty:
                item = ("tick", "", False, 0)
            if item is None:
                return
            try:
                if item[0] == "edge":
                    self._edge(item[1], item[2], item[3])
                if self._events.empty():  # a queued edge may be the one a wait waits for
                    self._expire()
            except JournalUnavailable as exc:
                log.error("lane %s: passage not recorded: %s", self.lane.name, exc)
            except Exception:  # noqa: BLE001 - a bug must not stop the watch; it is logged
                log.exception("lane %s: passage handling failed", self.lane.name)

    def _next_timeout(self) -> float:
        soonest = [w[0].deadline for w in self.waits.values() if w]
        soonest += [r[0].deadline for r in self.releases.values() if r]
        soonest += [at + self.lane.held_open_ms / 1000 for d, at in self._active_since.items()
                    if d not in self.held_open]
        if not soonest:
            return 1.0
        return min(1.0, max(0.0, min(soonest) - time.monotonic()))

    def _edge(self, direction: str, active: bool, at_ns: int) -> None:
        if not active:
            self._active_since.pop(direction, None)
            self._active_from_ns.pop(direction, None)
            self.held_open.discard(direction)
            return
        self._active_since[direction] = time.monotonic()
        self._active_from_ns[direction] = at_ns
        waits = self.waits[direction]
        with self._opening:  # not while a lane registers the wait this edge may be for
            release = self._released_person(direction, at_ns)
            ours = release is None and bool(waits) and at_ns >= waits[0].since_ns
            wait = waits.popleft() if ours else None  # an earlier edge: someone else
        self._count_person(direction)
        if release is not None:
            self.totals["free"] += 1
            log.info("lane %s: passage %s of the person released by %s", self.lane.name,
                     direction, release.by)
            return
        if wait is not None:
            if self.log is None or self.log.passed(wait.uuid, now_iso()):
                self.totals["passed"] += 1
                if direction == "out":
                    self.exit_stands()
            return
        if self.released():
            self.totals["free"] += 1
            return
        self._alarm("forced", f"passage {direction} with no admit (forced or tailgating)")

    def _released_person(self, direction: str, at_ns: int) -> _Release | None:
        """Under `_opening`: the one-person release this edge is for (the first one expected in
        its direction, pulsed before it), used up; the admits then waiting in that direction
        are marked `shared` (the edge may have been their person's)."""
        releases = self.releases[direction]
        while releases and releases[0].used:
            releases.popleft()
        if not releases or at_ns < releases[0].since_ns:
            return None
        release = releases.popleft()
        release.used = True
        for wait in self.waits[direction]:
            if wait.since_ns <= at_ns:
                wait.shared = True
        return release

    def _roll_day(self, load: bool = False) -> None:
        """Keep `people` to the current counting day: at start (`load`) sum the journal's
        counted passages since it began; when a new day begins, start again from zero."""
        since = utc_iso(counting_day_start(self.clock(), self.day_starts))
        with self._people_lock:  # the worker counts, the status thread may roll the day
            if since == self.people_since and not load:
                return
            self.people_since, self.people = since, {}
            if load and self.log is not None:
                try:
                    self.people = self.log.people_since(self.lane.name, since)
                except JournalUnavailable as exc:
                    log.error("lane %s: people counted earlier today not read: %s",
                              self.lane.name, exc)

    def _count_person(self, direction: str) -> None:
        """+1 in, -1 out, journaled; a journal failure loses the row, never the passage."""
        self._roll_day()
        zone = _zone_key(self.lane)
        with self._people_lock:
            self.people[zone] = self.people.get(zone, 0) + (1 if direction == "in" else -1)
        if self.log is None:
            return
        try:
            self.log.count_person(utc_iso(self.clock()), self.lane.name, direction, zone)
        except JournalUnavailable as exc:
            log.error("lane %s: counted passage not journaled (a restart will not see it): %s",
                      self.lane.name, exc)

    def _expire(self) -> None:
        now = time.monotonic()
        for waits in self.waits.values():
            while waits and waits[0].deadline <= now:
                self._void(waits.popleft())
        for releases in self.releases.values():
            while releases and (releases[0].used or releases[0].deadline <= now):
                release = releases.popleft()
                if not release.used:
                    release.used = True
                    log.info("lane %s: nobody passed within %d ms of the release by %s",
                             self.lane.name, self.lane.passage_timeout_ms, release.by)
        for direction, since in list(self._active_since.items()):
            if direction not in self.held_open and now - since >= self.lane.held_open_ms / 1000:
                self.held_open.add(direction)
                self._alarm("held_open", f"passage {direction} held open for more than "
                                         f"{self.lane.held_open_ms} ms")

    def _blind(self, wait: _Wait) -> str | None:
        """Why the input could not have seen this wait's passage, or None when it could: it
        was lost during the wait (and may be back: an edge may have been missed), or it has
        been active since before the gate opened (stuck, or held by someone: a passage makes
        no new edge)."""
        watched = self.inputs.get(wait.direction)
        if watched is None or not watched.connected or watched.opened_ns > wait.since_ns:
            return "lost during the wait"
        if self._active_from_ns.get(wait.direction, wait.since_ns + 1) <= wait.since_ns:
            return "active since before the gate opened"
        return None

    def _void(self, wait: _Wait) -> None:
        blind = self._blind(wait) if wait.direction == "in" else None
        if blind is None and wait.direction == "in" and wait.shared:
            blind = "saw a released person's passage during the wait (it may have been this one)"
        if blind is not None:
            # "Not passed" would be a guess that frees the ticket: the admit stands. (An exit
            # is voided as before: "passed" would be the guess that frees it, for a ticket
            # handed back over the barrier.)
            if self.log is None or self.log.stand(
                    wait.uuid, now_iso(), f"passage input {wait.direction} {blind}; the admit "
                    "stands"):
                self.totals["unconfirmed"] += 1
                log.warning("lane %s: admit %s stands: passage input %s %s", self.lane.name,
                            wait.uuid, wait.direction, blind)
            return
        self._voided(wait, None)

    def _voided(self, wait: _Wait, note: str | None, show: bool = True) -> None:
        """Void the wait's admit (`note`: why, when it is not the deadline), show it (`show`)
        and release its venue claim."""
        scan = self.log.void(wait.uuid, now_iso(), note) if self.log is not None else None
        if scan is None:
            return  # settled elsewhere (the uploader's bound) or no journal
        self.totals["voided"] += 1
        log.warning("lane %s: admit %s (%s) voided: %s", self.lane.name, wait.uuid,
                    wait.direction, note or f"no passage within {self.lane.passage_timeout_ms} "
                    "ms (ticket usable again)")
        if show:
            self.indicators.show("not_passed", "notPassed", "Not passed - please scan again")
        if self.void_claim is not None and scan.get("item_id") is not None:
            self.void_claim(scan)

    def _alarm(self, kind: str, detail: str) -> None:
        self.totals[kind] += 1
        now = time.monotonic()
        self.recent_alarms.append((now, kind))
        while self.recent_alarms and now - self.recent_alarms[0][0] > ALARM_RECENT_S:
            self.recent_alarms.popleft()
        self.indicators.show("alarm", "alarm", "Alarm - staff called")
        if self.log is not None:
            self.log.event(now_iso(), self.lane.name, kind, None, detail)
        self.on_alarm(self.lane.name, kind, detail)

    def _people_copy(self) -> dict[str, int]:
        with self._people_lock:
            return dict(self.people)

    def get_status(self) -> dict[str, Any] | None:
        if not self.configured:
            return None
        self._roll_day()
        now = time.monotonic()
        recent: dict[str, int] = {}
        for at, kind in list(self.recent_alarms):
            if now - at <= ALARM_RECENT_S:
                recent[kind] = recent.get(kind, 0) + 1
        return {"inputs": {d: i.get_status() for d, i in self.inputs.items()},
                "input_errors": dict(self.input_errors),
                "waiting": sum(len(w) for w in self.waits.values()),
                "releases_waiting": self._releases_waiting(now),
                "totals": dict(self.totals), "alarms_5min": recent,
                "held_open": sorted(self.held_open), "people": self._people_copy(),
                "people_since": self.people_since}


    def _releases_waiting(self, now: float) -> list[dict[str, Any]]:
        """The technicians' one-person releases whose person has not passed yet (`waiting`
        counts admits only): who, which directions, how long until the wait ends. One release
        sits in each direction's queue it opens; the worker thread pops them (a deque copied
        in one step never sees it mid-change)."""
        seen: dict[int, dict[str, Any]] = {}
        for direction in ("in", "out"):
            for release in tuple(self.releases[direction]):
                if release.used or release.deadline <= now:
                    continue
                entry = seen.setdefault(id(release), {
                    "by": release.by, "directions": [],
                    "ends_in_s": round(release.deadline - now, 1)})
                entry["directions"].append(direction)
        return list(seen.values())


def counting_day_start(now: datetime, day_starts: str) -> datetime:
    """The start of the counting day `now` (an aware local time) falls in: the last
    `day_starts` (HH:MM) at or before it — an evening that runs past midnight is one day."""
    hour, minute = (int(part) for part in day_starts.split(":"))
    start = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return start if start <= now else start - timedelta(days=1)


def _zone_key(lane: LaneConfig) -> str:
    """People are counted into the lane's zone; `default` for a lane on the events' default
    zones (a forced passage names no event, so the admits' own zone ids would split one
    zone's count in two)."""
    return str(lane.zone_id) if lane.zone_id is not None else "default"
