"""Scheduler wiring and job bodies, and the sync/upload/login commands as real processes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from agent.config import load_config
from agent.errors import ConfigError
from agent.runtime.opening import open_journal, opened_gate
from agent.runtime.scheduler import Jobs
from tests.conftest import run_cli
from tests.platform.sync.conftest import EVENT, backlog, fill_journal, make_site, noon


def test_jobs_are_wired_once_with_coalesce_and_log_failure_and_recovery_once(caplog):
    caplog.set_level(logging.INFO, logger="agent.runtime.scheduler")

    async def go():
        jobs = Jobs()
        calls = 0
        recovered = asyncio.Event()

        async def flaky() -> None:
            nonlocal calls
            calls += 1
            if calls <= 3:
                raise RuntimeError("platform unreachable")
            if calls == 5:
                recovered.set()

        jobs.add_interval("delta", flaky, seconds=0.02, first_in=0.01)
        jobs.add_daily("full_resync", flaky, "04:00")
        jobs.start()
        try:
            job = jobs.scheduler.get_job("delta")
            wiring = (job.coalesce, job.max_instances, job.misfire_grace_time)
            await asyncio.wait_for(recovered.wait(), 10)
            return wiring, jobs.get_status()
        finally:
            jobs.shutdown()

    wiring, status = asyncio.run(go())
    assert wiring == (True, 1, None)  # a late run still runs (once): no misfire grace
    delta = status["delta"]
    assert delta["failures"] == 3 and delta["runs"] == 5 and delta["failing_since"] is None
    assert delta["last_error"] is None and delta["last_success"] is not None
    assert status["full_resync"]["next_run"] is not None
    mine = [r for r in caplog.records if r.name == "agent.runtime.scheduler"]
    assert [r.levelname for r in mine] == ["WARNING", "INFO"]
    assert "job delta failing: platform unreachable" in mine[0].getMessage()
    assert "job delta recovered" in mine[1].getMessage()



def test_a_one_shot_job_is_tried_again_with_growing_waits_until_it_succeeds():
    """The rebuild of a damaged cache at start: a failed try is not the last one."""
    async def go():
        jobs = Jobs()
        tries: list[float] = []
        done = asyncio.Event()

        async def rebuild() -> None:
            tries.append(asyncio.get_running_loop().time())
            if len(tries) <= 3:
                raise RuntimeError("platform unreachable")
            done.set()

        jobs.add_once("initial_resync", rebuild, first_in=0.01, retry_s=0.2)
        jobs.start()
        try:
            await asyncio.wait_for(done.wait(), 10)
            await asyncio.sleep(0.5)  # and nothing more after its success
            return tries, jobs.get_status()["initial_resync"], jobs.scheduler.get_job(
                "initial_resync")
        finally:
            jobs.shutdown()

    tries, status, job = asyncio.run(go())
    assert len(tries) == 4 and job is None
    waits = [b - a for a, b in zip(tries, tries[1:], strict=False)]
    assert 0.18 <= waits[0] < waits[1] < waits[2], waits  # 0.2, 0.4, 0.8 s
    assert waits[2] >= 0.75
    assert status["failures"] == 3 and status["last_error"] is None
    assert status["failing_since"] is None and status["next_run"] is None


def test_a_failed_daily_job_runs_again_soon_then_keeps_its_daily_time():
    async def go():
        jobs = Jobs()
        tries = 0
        done = asyncio.Event()

        async def full() -> None:
            nonlocal tries
            tries += 1
            if tries == 1:
                raise RuntimeError("platform unreachable")
            done.set()

        jobs.add_daily("full_resync", full, "04:00", retry_s=0.2)
        jobs.start()
        try:
            before = jobs.get_status()["full_resync"]["next_run"]
            jobs.run_now("full_resync")  # as `gate-agent sync --full` asks a running daemon
            await asyncio.sleep(0.1)
            after_failure = jobs.get_status()["full_resync"]
            await asyncio.wait_for(done.wait(), 10)
            await asyncio.sleep(0.05)
            return before, after_failure, jobs.get_status()["full_resync"]
        finally:
            jobs.shutdown()

    before, after_failure, after = asyncio.run(go())
    soon = datetime.now(UTC) + timedelta(seconds=5)
    assert after_failure["last_error"] == "platform unreachable"
    assert _utc(after_failure["next_run"]) < soon  # not the next 04:00
    assert after["last_error"] is None and after["next_run"] == before  # the next 04:00



def test_a_retry_found_an_hour_late_still_runs():
    """A wall-clock step forward (NTP at boot on a gate without a real-time clock) finds the
    rebuild's retry an hour late; with a misfire grace APScheduler deleted it unrun."""
    async def go():
        jobs = Jobs()
        ran = asyncio.Event()

        async def rebuild() -> None:
            ran.set()

        jobs.add_once("initial_resync", rebuild, first_in=0.01, retry_s=30)
        jobs.scheduler.get_job("initial_resync").modify(
            next_run_time=datetime.now().astimezone() - timedelta(hours=1))
        jobs.start()
        try:
            await asyncio.wait_for(ran.wait(), 10)
        finally:
            jobs.shutdown()

    asyncio.run(go())


def test_a_wall_clock_step_back_replans_the_jobs():
    """The scheduler plans on the wall clock; after a step back of an hour every job's next
    run is an hour away. The system clock cannot be stepped in a test: the jobs are put in the
    state such a step leaves them in, and the watchdog's clock pair is aged by the same hour."""
    async def go():
        jobs = Jobs()
        counts = {"delta": 0, "full_resync": 0, "retrying": 0}
        delta_ran = asyncio.Event()

        async def delta() -> None:
            counts["delta"] += 1
            delta_ran.set()

        async def full() -> None:
            counts["full_resync"] += 1

        async def failing() -> None:
            counts["retrying"] += 1
            raise RuntimeError("platform unreachable")

        jobs.add_interval("delta", delta, seconds=0.05, first_in=0.01)
        jobs.add_daily("full_resync", full, "04:00", retry_s=5)
        jobs.add_daily("nightly", failing, "04:00", retry_s=3600)
        jobs.start()
        try:
            await asyncio.wait_for(delta_ran.wait(), 10)
            jobs.run_now("nightly")
            await asyncio.sleep(0.2)  # failed once: its retry is an hour away
            assert counts["retrying"] == 1
            daily = jobs.scheduler.get_job("full_resync").next_run_time
            later = datetime.now().astimezone() + timedelta(hours=1)
            jobs.scheduler.get_job("delta").modify(next_run_time=later)
            assert jobs.follow_clock() is False  # no step: nothing re-planned
            wall, mono = jobs._clocks
            jobs._clocks = (wall + 3600, mono)  # the wall clock went back an hour since
            delta_ran.clear()
            before = counts["delta"]
            assert jobs.follow_clock() is True
            await asyncio.wait_for(delta_ran.wait(), 10)
            await asyncio.sleep(0.2)
            return before, counts, daily, jobs.scheduler.get_job("full_resync").next_run_time
        finally:
            jobs.shutdown()

    before, counts, daily, daily_after = asyncio.run(go())
    assert counts["delta"] > before  # ran again at once, not in an hour
    assert counts["retrying"] == 2  # the pending retry ran at once too
    assert counts["full_resync"] == 0 and daily_after == daily  # the daily one keeps 04:00


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_bad_full_resync_time_names_the_key():
    with pytest.raises(ConfigError, match="sync.full_resync_at"):
        Jobs().add_daily("full_resync", lambda: None, "25:99")  # type: ignore[arg-type]


def test_job_bodies_refresh_delta_upload_full_and_prune(site, sandbox):
    """What the scheduled jobs run (refresh, delta, upload, nightly full resync, prune), in the
    order a first day would see them, on one client as the daemon shares it."""
    lane = site.config.lane("main")
    journal = open_journal(site.config)

    async def go():
        async with site.client() as client:
            syncer = site.syncer(client)
            uploader = site.uploader(journal, client)
            try:
                served = await syncer.refresh_events()
                assert await syncer.delta_all() == 1140  # first pass: everything
                with opened_gate(site.config) as gate:
                    gate.scan("SF0000000", lane, noon(sandbox))
                assert await uploader.drain() == 1
                assert await syncer.delta_all() == 1  # our own scan comes back
                sandbox.change_item("SF0000001", "refunded")
                assert await syncer.full_resync() == 1140
                return served, uploader.prune(datetime.now(UTC) + timedelta(days=8))
            finally:
                syncer.close()

    try:
        served, pruned = asyncio.run(go())
        # the only sent row is also the newest: kept, so no seq is ever handed out twice
        # (tests/store/test_journal_schema.py prunes the older ones)
        assert journal.counts()["sent"] == 1
    finally:
        journal.close()
    assert served == [EVENT] and pruned == 0
    assert [u["barcode"] for u in sandbox.received()["uploads"]] == ["SF0000000"]
    with opened_gate(site.config) as gate:
        assert gate.check("SF0000001", lane, noon(sandbox)).detail == "refunded"
        assert gate.check("SF0000000", lane, noon(sandbox)).status == "alreadyIn"


def test_cli_sync_fills_the_cache_and_summarises(site):
    done = run_cli("sync", "--json", "--config", str(site.config_path))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["requests"] == 4 and summary["applied"] == 1140
    assert summary["events"][0]["id"] == EVENT and summary["events"][0]["items"] == 1140
    again = run_cli("sync", "--config", str(site.config_path))
    assert again.returncode == 0, again.stderr
    assert "Sandbox Festival" in again.stdout and "1140" in again.stdout


def test_cli_sync_offline_says_so_in_one_line(tmp_path, sandbox):
    site = make_site(tmp_path / "g", sandbox)
    text = site.config_path.read_text().replace(sandbox.url, "http://127.0.0.1:9/v1")
    site.config_path.write_text(text)
    done = run_cli("sync", "--config", str(site.config_path))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gate-agent: error: GET /activated-events")
    assert "Offline?" in lines[0] and "no ticket cache yet" in lines[0]


def test_cli_upload_drains_and_explains_a_refused_token(site, sandbox):
    journal = open_journal(site.config)
    fill_journal(journal, backlog(12, noon(sandbox)))
    journal.close()
    done = run_cli("upload", "--drain", "--json", "--config", str(site.config_path))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sent"] == 12
    journal = open_journal(site.config)
    fill_journal(journal, backlog(3, noon(sandbox)))
    journal.close()
    sandbox.revoke_token(sandbox.token)
    paused = run_cli("upload", "--config", str(site.config_path))
    assert paused.returncode == 1
    assert "sent 0" in paused.stdout and "3 pending" in paused.stdout
    assert "uploads are paused" in paused.stderr and "gate-agent login" in paused.stderr
    assert "Traceback" not in paused.stderr


def test_cli_login_reads_the_password_from_stdin_and_stores_the_token_0600(tmp_path, sandbox):
    site = make_site(tmp_path / "g", sandbox)
    token_file = tmp_path / "g" / "token"
    token_file.unlink()
    done = run_cli("login", "--email", "gate@example.com", "--device-name", "lane-7",
                   "--config", str(site.config_path), stdin="sandbox-password\n")
    assert done.returncode == 0, done.stderr
    token = token_file.read_text().strip()
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert token and token not in done.stdout + done.stderr
    assert "sandbox-password" not in done.stdout + done.stderr
    assert str(token_file) in done.stdout
    who = httpx.get(f"{sandbox.url}/", headers={"Authorization": f"Bearer {token}"})
    assert who.status_code == 200
    assert load_config(site.config_path).api["token_file"] == str(token_file)
    wrong = run_cli("login", "--email", "gate@example.com", "--config",
                    str(site.config_path), stdin="nope\n")
    assert wrong.returncode == 1
    assert "credentials are incorrect" in wrong.stderr and len(wrong.stderr.splitlines()) == 1
    assert token_file.read_text().strip() == token  # a failed login keeps the old token


def test_cli_429_says_when_instead_of_claiming_to_wait(site, sandbox):
    """The command exits on a 429 (only the daemon waits for the window): its message must
    say when the platform accepts requests again, not "waiting 60 s"."""
    sandbox.set_faults(storm=True)
    try:
        done = run_cli("sync", "--config", str(site.config_path))
    finally:
        sandbox.clear_faults()
    assert done.returncode == 1, done.stderr
    assert "accepts requests again in" in done.stderr and "waiting" not in done.stderr, \
        done.stderr


def test_run_now_during_a_run_reruns_once_without_a_warning_flood(caplog):
    """A burst of scans asks for an upload per decision; while the upload runs, those asks
    must become one more run, not hundreds of APScheduler "maximum number of running
    instances reached" warnings."""
    async def go() -> list[int]:
        jobs, runs, release = Jobs(), [], asyncio.Event()

        async def body() -> None:
            runs.append(1)
            if len(runs) == 1:
                await release.wait()

        jobs.add_interval("upload", body, 3600, first_in=0.01)
        jobs.start()
        while not runs:
            await asyncio.sleep(0.01)
        for _ in range(300):
            jobs.run_now("upload")
            await asyncio.sleep(0)
        release.set()
        for _ in range(300):
            if len(runs) == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        jobs.shutdown()
        return runs

    with caplog.at_level(logging.WARNING):
        runs = asyncio.run(go())
    assert len(runs) == 2
    assert not [r for r in caplog.records if "running instances" in r.getMessage()]


def test_a_job_cut_by_shutdown_logs_one_line_not_a_traceback(caplog):
    async def go() -> None:
        jobs, started = Jobs(), asyncio.Event()

        async def body() -> None:
            started.set()
            await asyncio.sleep(3600)  # a platform that never answers

        jobs.add_interval("upload", body, 3600, first_in=0.01)
        jobs.start()
        await started.wait()
        jobs.shutdown()  # asyncio.run then cancels the job's task, as at a daemon's stop

    with caplog.at_level(logging.INFO):
        asyncio.run(go())
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    assert any("interrupted by shutdown" in r.getMessage() for r in caplog.records)
