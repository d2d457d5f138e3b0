"""Background jobs of the daemon on APScheduler 3.11's AsyncIOScheduler.

upload every `sync.upload_interval_s` (and at once when a full batch is waiting), delta sync
every `sync.delta_interval_s`, events and zones every `sync.refresh_interval_s`, a full resync
nightly at `sync.full_resync_at`, journal pruning hourly. Every job: coalesce, one instance at a
time, a generous misfire grace. Job bodies are plain coroutines (tested directly); this module
only wires them and keeps their health: a failure is logged once when it starts and once when
the job recovers, and is visible in status.

A job that runs rarely (the nightly full resync; the one-shot rebuild of a damaged cache at
start) is given a retry delay: after a failed run it runs again that much later, doubling
after each failure in a row up to RETRY_CAP_S, instead of waiting for its next day (or, for
a one-shot, for ever). Interval jobs need none: their next run is never far.

APScheduler plans on the wall clock, which a gate without a real-time clock sees step by
hours when NTP first answers. No run is dropped for being late (no misfire grace: a late run
runs once, coalesced; with a grace, a one-shot late by more than it was deleted unrun), and
`follow_clock` (called by the daemon's watchdog) re-plans every job after a step, so a step
back does not hold the interval jobs for as long as the step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from agent.core.codes import epoch_iso, utc_iso
from agent.errors import ConfigError

log = logging.getLogger(__name__)

JobBody = Callable[[], Awaitable[Any]]

RETRY_CAP_S = 600.0  # the longest wait between retries of a failing job (or its retry_s)
CLOCK_STEP_S = 30.0  # wall and monotonic clocks apart by more than this: the wall clock stepped


@dataclass
class JobHealth:
    name: str
    runs: int = 0
    failures: int = 0
    failing_since: float | None = None
    last_error: str | None = None
    last_success: float | None = None
    last_run: float | None = None
    running: bool = False
    rerun: bool = False  # asked to run again while running: once more when this run ends
    retry_s: float | None = None  # after a failed run, run again this much later (doubling)
    failed_in_a_row: int = 0

    def as_dict(self) -> dict[str, Any]:
        times = ("failing_since", "last_success", "last_run")
        return {k: epoch_iso(v) if k in times else v for k, v in self.__dict__.items()
                if k not in ("running", "rerun", "retry_s")}

    def retry_delay(self) -> float:
        """Seconds until the next try of a failing job with `retry_s`: retry_s after the first
        failure, doubling after each one in a row, at most RETRY_CAP_S (or retry_s if longer)."""
        assert self.retry_s is not None
        return min(self.retry_s * 2 ** max(0, self.failed_in_a_row - 1),
                   max(self.retry_s, RETRY_CAP_S))


class Jobs:
    """The daemon's scheduled jobs and their health."""

    def __init__(self) -> None:
        self.scheduler = AsyncIOScheduler(job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        self.health: dict[str, JobHealth] = {}
        self._clocks = (time.time(), time.monotonic())

    def add_interval(self, name: str, body: JobBody, seconds: float,
                     first_in: float = 0.5) -> None:
        self._add(name, body, IntervalTrigger(seconds=seconds),
                  datetime.now().astimezone() + timedelta(seconds=first_in))

    def add_daily(self, name: str, body: JobBody, hhmm: str,
                  retry_s: float | None = None) -> None:
        try:
            hour, minute = (int(x) for x in hhmm.split(":"))
            trigger = CronTrigger(hour=hour, minute=minute)
        except ValueError:
            raise ConfigError(f"must be HH:MM, got {hhmm!r}", key="sync.full_resync_at") from None
        self._add(name, body, trigger, None, retry_s)

    def add_once(self, name: str, body: JobBody, first_in: float, retry_s: float) -> None:
        """A job that runs until one run succeeds (tried again after `retry_s`, doubling)."""
        self._add(name, body, self._at(first_in), None, retry_s)

    @staticmethod
    def _at(seconds: float) -> DateTrigger:
        return DateTrigger(run_date=datetime.now().astimezone() + timedelta(seconds=seconds))

    def _add(self, name: str, body: JobBody, trigger: Any, first: datetime | None,
             retry_s: float | None = None) -> None:
        self.health[name] = JobHealth(name, retry_s=retry_s)
        kwargs: dict[str, Any] = {"id": name, "name": name, "replace_existing": True}
        if first is not None:
            kwargs["next_run_time"] = first
        self.scheduler.add_job(self._guarded(name, body), trigger, **kwargs)

    def _retry_later(self, name: str, run: JobBody) -> None:
        """After a failed run of a job with a retry delay: its next run that much later. A
        recurring job's next run is brought forward (its trigger takes over again after the
        run); a one-shot, which APScheduler dropped when it started, is added again."""
        health = self.health[name]
        delay = health.retry_delay()
        when = datetime.now().astimezone() + timedelta(seconds=delay)
        job = self.scheduler.get_job(name)
        if job is None:
            self.scheduler.add_job(run, self._at(delay), id=name, name=name,
                                   replace_existing=True)
        elif job.next_run_time is None or job.next_run_time > when:
            job.modify(next_run_time=when)
        log.info("job %s: trying again in %.0f s", name, delay)

    def _guarded(self, name: str, body: JobBody) -> JobBody:
        async def run() -> None:
            health = self.health[name]
            health.running = True
            try:
                while True:  # asked again while running (`run_now`): once more, same instance
                    health.rerun = False
                    if not await self._run_once(health, body):
                        return
                    if health.retry_s is not None and health.failed_in_a_row \
                            and self.scheduler.running:
                        self._retry_later(name, run)
                        return
                    if not health.rerun:
                        return
            finally:
                health.running = False

        run.__name__ = f"job_{name}"
        return run

    @staticmethod
    async def _run_once(health: JobHealth, body: JobBody) -> bool:
        """One run of a job body with its health kept; False when shutdown interrupted it."""
        name = health.name
        health.runs += 1
        health.last_run = time.time()
        try:
            await body()
        except asyncio.CancelledError:
            # The daemon is stopping mid-run (a platform that does not answer): one line,
            # not APScheduler's traceback of the cancellation.
            log.info("job %s interrupted by shutdown", name)
            return False
        except Exception as exc:  # noqa: BLE001 - a job failure must never kill the daemon
            health.failures += 1
            health.failed_in_a_row += 1
            health.last_error = str(exc)
            if health.failing_since is None:
                health.failing_since = time.time()
                log.warning("job %s failing: %s", name, exc)
            return True
        if health.failing_since is not None:
            log.info("job %s recovered after %.0f s", name, time.time() - health.failing_since)
        health.failing_since = None
        health.failed_in_a_row = 0
        health.last_error = None
        health.last_success = time.time()
        return True

    def first_run(self, name: str) -> bool:
        """The run of `name` in progress is its first since the daemon started (a body asks:
        runs are counted as each one begins). The start-up chain hangs on it: the first
        refresh brings the delta forward, the first delta a missed nightly rebuild."""
        return self.health[name].runs == 1

    def run_now(self, name: str) -> None:
        """Bring a job's next run forward to now (e.g. upload when a full batch waits). While
        it runs, once more after it ends: asking APScheduler for a second instance would only
        log "maximum number of running instances reached" (hundreds in a burst of scans)."""
        if not self.scheduler.running:
            return
        health = self.health.get(name)
        if health is not None and health.running:
            health.rerun = True
            return
        job = self.scheduler.get_job(name)
        if job is not None:
            job.modify(next_run_time=datetime.now().astimezone())

    def follow_clock(self) -> bool:
        """Re-plan every job if the wall clock stepped since the last call (True then): a
        daily job at its next time of day from now, every other job (and a pending retry) at
        once. Without this a step back of an hour holds every job for an hour; a step forward
        only makes them late (they run at once, coalesced)."""
        wall, mono = time.time(), time.monotonic()
        last_wall, last_mono = self._clocks
        self._clocks = (wall, mono)
        step = (wall - last_wall) - (mono - last_mono)
        if abs(step) <= CLOCK_STEP_S or not self.scheduler.running:
            return False
        log.warning("the wall clock stepped %+.0f s: re-planning the jobs", step)
        now = datetime.now().astimezone()
        for job in self.scheduler.get_jobs():
            health = self.health.get(job.id)
            retrying = health is not None and health.failed_in_a_row > 0
            # A daily job keeps its time of day; every other job (an interval trigger would
            # take its start date, an hour ahead after a step back) and a retry run now.
            daily = isinstance(job.trigger, CronTrigger) and not retrying
            job.modify(next_run_time=job.trigger.get_next_fire_time(None, now) if daily
                       else now)
        return True

    def start(self) -> None:
        self._clocks = (time.time(), time.monotonic())
        self.scheduler.start()

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def get_status(self) -> dict[str, Any]:
        out = {}
        for name, health in self.health.items():
            job = self.scheduler.get_job(name) if self.scheduler.running else None
            nxt = utc_iso(job.next_run_time) if job and job.next_run_time else None
            out[name] = {**health.as_dict(), "next_run": nxt}
        return out
