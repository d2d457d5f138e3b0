"""A failing nightly full resync says that the cache was not rebuilt, since when, and why.

Before, ops saw `job_failing` ("job(s) full_resync failing: ...") when the cause was not the
platform link, and nothing about the cache at all when it was (the job's failure was folded
into `platform_unreachable`). Real parts: the platform sandbox on loopback, the scheduler's
job wrapper (`Jobs`, APScheduler running; the job brought forward with `run_now`, as
`gate-agent sync --full` asks a running daemon), the `Syncer`, the SQLite cache; the snapshot
is what `Daemon.report()` puts together from them."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.ops.metrics import Metrics
from agent.ops.status import evaluate
from agent.runtime.opening import open_cache
from agent.runtime.scheduler import Jobs
from agent.sandbox.harness import start_sandbox
from tests.platform.sync.conftest import EVENT, Site, make_site


def snapshot(site: Site, jobs: Jobs, platform: dict[str, Any]) -> dict[str, Any]:
    cache = open_cache(site.config)
    try:
        return {"cache": {"degraded": None, **cache.get_status()}, "jobs": jobs.get_status(),
                "platform": platform, "lanes": [], "journal": {}}
    finally:
        cache.close()


def reasons(snap: dict[str, Any]) -> dict[str, str]:
    _health, found = evaluate(snap, datetime.now(UTC), 1e9)
    return {r.code: r.message for r in found}


async def wait_for(check: Callable[[], bool], what: str) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_failing_nightly_resync_says_the_cache_was_not_rebuilt(tmp_path: Path) -> None:
    with start_sandbox(tickets=250, async_delay_s=0.05) as sandbox:
        site = make_site(tmp_path / "gate", sandbox)
        blocker = site.cache_path.with_name("cache.db.new")

        async def go() -> list[tuple[str, dict[str, Any]]]:
            seen = []
            async with site.client() as client:
                syncer = site.syncer(client)
                jobs = Jobs()
                jobs.add_daily("full_resync", syncer.full_resync, "04:00", retry_s=3600)
                health = jobs.health["full_resync"]
                jobs.start()
                try:
                    await syncer.full_resync()  # last night's: the cache's last_full
                    # Not the link: the build file's place is taken (a directory left there).
                    blocker.mkdir()
                    jobs.run_now("full_resync")
                    await wait_for(lambda: health.failed_in_a_row == 1, "a failed run")
                    seen.append(("disk", snapshot(site, jobs, client.get_status())))
                    # The link: every request fails (the job's failure said by the link before).
                    shutil.rmtree(blocker)
                    sandbox.set_faults(error_rate=1.0)
                    jobs.run_now("full_resync")
                    await wait_for(lambda: health.failed_in_a_row == 2, "a second failed run")
                    seen.append(("link", snapshot(site, jobs, client.get_status())))
                    sandbox.clear_faults()
                    jobs.run_now("full_resync")
                    await wait_for(lambda: health.failing_since is None, "a good run")
                    seen.append(("good", snapshot(site, jobs, client.get_status())))
                finally:
                    jobs.shutdown()
                    syncer.close()
            return seen

        (_, disk), (_, link), (_, good) = asyncio.run(go())

    rebuilt = next(e for e in disk["cache"]["events"] if e["id"] == EVENT)["last_full"]
    assert rebuilt is not None
    job = disk["jobs"]["full_resync"]
    said = reasons(disk)
    message = said["cache_not_rebuilt"]
    assert f"failed since {job['failing_since']}" in message
    assert "Is a directory" in message and "cache.db.new" in message  # the error, named
    assert f"last full rebuild at {rebuilt}" in message and "1 try in a row" in message
    assert f"next try {job['next_run']}" in message
    assert "job_failing" not in said  # one cause, one reason

    said = reasons(link)
    assert "platform_unreachable" in said and "cache_not_rebuilt" in said
    assert "2 tries in a row" in said["cache_not_rebuilt"]
    assert f"last full rebuild at {rebuilt}" in said["cache_not_rebuilt"]
    assert sandbox.token not in json.dumps(said) and sandbox.token not in json.dumps(link["jobs"])

    text = Metrics(lambda: {**link, "reasons": [{"code": c} for c in said]},
                   lambda: datetime.now(UTC)).render().decode()
    assert 'gate_reason_active{code="cache_not_rebuilt"} 1.0' in text
    line = next(x for x in text.splitlines()
                if x.startswith(f'gate_cache_rebuild_age_seconds{{event="{EVENT}"}}'))
    assert 0 <= float(line.split()[-1]) < 600

    assert "cache_not_rebuilt" not in reasons(good) and "job_failing" not in reasons(good)
