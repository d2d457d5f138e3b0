"""A ticket cache damaged while the gate runs (not at start: that is test_storage_faults).

The file is overwritten under open connections, then another connection commits (as the
refresh job does), so every open connection drops its page cache and reads the damage:
SQLite answers "database disk image is malformed". The rule: each scan is refused with
`cacheUnavailable` and that refusal is journaled (the journal works: it is not named as the
culprit); status fails with `cache_read_failed` instead of `cache_empty`; the daemon rebuilds
the cache once from the platform (the sandbox, on loopback) and the next scan is decided on
the rebuilt file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent import demo_data
from agent.core.decide import decide
from agent.ops.status import evaluate
from agent.runtime.daemon import Daemon
from agent.runtime.lane import LaneRunner, manual_scan
from agent.runtime.opening import opened_gate
from agent.sandbox.harness import Sandbox, start_sandbox
from agent.store.journal import iter_all
from tests.conftest import DemoSite
from tests.hostile.test_storage_faults import _wait
from tests.platform.sync.conftest import make_site as make_platform_site
from tests.platform.sync.conftest import noon

C = demo_data.CODES
T = TypeVar("T")


def damage_while_open(path: Path) -> None:
    """Everything after the first page overwritten; then a commit by another connection."""
    with sqlite3.connect(path) as conn:  # the WAL folded in: the items are in the main file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = path.stat().st_size
    assert size > 4 * 4096, "the cache should span several pages"
    with open(path, "r+b") as fh:
        fh.seek(4096)
        fh.write(b"\xa5" * (size - 4096))
        fh.flush()
        os.fsync(fh.fileno())
    other = sqlite3.connect(path)
    other.execute("PRAGMA application_id = 7")  # page 1 is intact: this commit works
    other.commit()
    other.close()


def _reasons(report: dict[str, Any]) -> dict[str, str]:
    return {r["code"]: r["message"] for r in report["reasons"]}


def _scan_and_wait(runner: LaneRunner, code: str, wall: datetime | None = None
                   ) -> dict[str, Any]:
    before = sum(runner.totals.values())
    scan = manual_scan(code, runner.lane.name)
    runner.submit(dataclasses.replace(scan, wall=wall) if wall is not None else scan)
    _wait(lambda: sum(runner.totals.values()) > before)
    assert runner.last_scan is not None
    return runner.last_scan


def test_a_cache_damaged_while_running_refuses_journals_and_alarms(site: DemoSite) -> None:
    daemon = Daemon(site.config)
    daemon.open_stores()
    daemon.start_lanes(site.config.lanes)
    runner = daemon.lanes["north-in"]
    try:
        assert _scan_and_wait(runner, C["valid"])["admit"] is True
        damage_while_open(daemon.cache_path)
        last = _scan_and_wait(runner, C["valid2"])  # admissible
        assert last["admit"] is False and last["statusDetail"] == "cacheUnavailable"
        assert runner.gate.cache_error and "malformed" in runner.gate.cache_error
        assert runner.gate.journal_error is None and runner.gate.unrecorded == 0
        assert daemon.journal is not None
        rows = [r for r in iter_all(daemon.journal) if r["code"] == C["valid2"]]
        assert len(rows) == 1 and not rows[0]["admit"]
        assert rows[0]["status_detail"] == "cacheUnavailable"
        assert rows[0]["upload_state"] == "local"  # no event known: never uploaded
        assert "cache unreadable" in rows[0]["reason"]
        report = daemon.report()
        reasons = _reasons(report)
        assert report["health"] == "fail"
        assert "cache_empty" not in reasons and "journal_unavailable" not in reasons
        said = reasons["cache_read_failed"]
        assert "north-in" in said and "malformed" in said and "cacheUnavailable" in said
        assert "restart the service" in said  # no loop, no jobs here: nothing rebuilds it
        lane = next(lane for lane in report["lanes"] if lane["name"] == "north-in")
        assert "malformed" in lane["cache_error"]
        # what the loop would run: this demo gate has no platform link, so nothing to schedule
        assert daemon.syncer is None
        daemon._rebuild_failed_cache(runner.gate.cache_error)
        assert "initial_resync" not in daemon.jobs.get_status()
        said = _reasons(daemon.report())["cache_read_failed"]
        assert "restart the service" in said and "sync --full" in said
    finally:
        for r in daemon.lanes.values():
            r.stop()
        daemon.close_stores()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with start_sandbox(tickets=200, async_delay_s=0.02, rpm=1000) as sb:
        yield sb


def run_with_platform(daemon: Daemon, body: Callable[[Daemon], Awaitable[T]]) -> T:
    """`body` on a loop of its own, the daemon's stores and platform link open (its lanes and
    jobs are the body's to start); lanes, jobs, link and stores closed after, whatever
    happened."""
    async def within() -> T:
        daemon._loop = asyncio.get_running_loop()
        daemon.open_stores()
        daemon.setup_platform()
        try:
            return await body(daemon)
        finally:
            daemon.jobs.shutdown()
            for r in daemon.lanes.values():
                r.stop()
            if daemon.client is not None:
                await daemon.client.aclose()

    try:
        return asyncio.run(within())
    finally:
        daemon.close_stores()


@pytest.mark.e2e
def test_the_daemon_rebuilds_a_cache_damaged_while_running(tmp_path: Path,
                                                           sandbox: Sandbox) -> None:
    site = make_platform_site(tmp_path / "gate-a", sandbox, rpm=1000)
    at = noon(sandbox)

    async def go(daemon: Daemon) -> tuple[dict[str, Any], ...]:
        await daemon._full_job()  # the first fill
        daemon.start_lanes(site.config.lanes)
        daemon.schedule(False)
        runner = daemon.lanes["main"]
        with runner.lock:  # three tickets the seed left admissible on this lane
            codes = [code for code in (f"SF{n:07d}" for n in range(1, 60))
                     if runner.gate.check(code, runner.lane, at).admit][:3]
        first = await asyncio.to_thread(_scan_and_wait, runner, codes[0], at)
        damage_while_open(daemon.cache_path)
        refused = await asyncio.to_thread(_scan_and_wait, runner, codes[1], at)
        status = daemon.report()
        deadline = time.monotonic() + 30
        while daemon.cache_degraded or runner.gate.cache_error:
            assert time.monotonic() < deadline, f"not rebuilt: {daemon.report()['reasons']}"
            await asyncio.sleep(0.05)
        again = await asyncio.to_thread(_scan_and_wait, runner, codes[2], at)
        return first, refused, status, again, daemon.report()

    first, refused, status, again, after = run_with_platform(Daemon(site.config), go)
    assert first["admit"] is True
    assert refused["admit"] is False and refused["statusDetail"] == "cacheUnavailable"
    said = _reasons(status)["cache_read_failed"]
    assert "rebuilding" in said and "cache_empty" not in _reasons(status)
    assert again["admit"] is True and again["status"] == "valid", again  # on the new file
    assert not {"cache_read_failed", "cache_rebuilding"} & set(_reasons(after))
    assert after["jobs"]["initial_resync"]["last_error"] is None


def test_the_engine_never_admits_when_the_cache_could_not_be_read(site: DemoSite) -> None:
    """Even with a candidate that would be admitted (facts a caller mixed up), no admit."""
    lane = site.config.lane("north-in")
    with opened_gate(site.config) as gate:
        facts = gate.facts(C["valid"], lane)
    assert facts.candidates and decide(facts, lane, site.now).admit is True
    decision = decide(dataclasses.replace(facts, cache_error="disk image is malformed"), lane,
                      site.now)
    assert (decision.admit, decision.status, decision.detail, decision.record) == \
        (False, "denied", "cacheUnavailable", True)
    assert "call staff" in decision.message


def test_status_says_a_failed_read_instead_of_an_empty_cache() -> None:
    now = datetime.now(UTC)
    snap = {"cache": {"read_failed": "ticket cache x cannot be read (malformed)",
                      "degraded": "the cache failed while running (ticket cache x cannot be "
                                  "read (malformed)); rebuilding"},
            "journal": {}, "lanes": [], "jobs": {}}
    health, reasons = evaluate(snap, now, 3600)
    codes = [r.code for r in reasons]
    assert health == "fail" and codes == ["cache_read_failed"], codes
    assert "rebuilding" in reasons[0].message and "status's own read" in reasons[0].message
    assert reasons[0].message.count("malformed") == 1
    snap["cache"] = {"events": [{"id": 1, "items": 5, "last_sync": None}]}
    snap["lanes"] = [{"name": "a", "cache_error": "ticket cache x cannot be read (io)"}]
    codes = [r.code for r in evaluate(snap, now, 3600)[1]]
    assert "cache_read_failed" in codes
