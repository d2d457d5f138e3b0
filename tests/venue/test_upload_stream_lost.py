"""The venue's upload stream (`VENUE_<name>_UPLOAD`, the work queue of scans for the leader)
deleted under a running leader (`nats stream rm`): real `VenueRole`s (a leader, a member that
may not lead) on a real nats-server, uploading to the sandbox.

Before agent.venue.uplink `adopt_upload_stream`: the scans handed over and still waiting on
the stream were gone (marked sent in their gate's journal: nobody had them any more), the
members' hand-over failed for good (no stream answers `venueup.>`, and nothing made it again
within a session) and the leader's consumer with it; only a warning a round said so."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.ops.status import evaluate
from agent.sandbox.harness import start_sandbox
from agent.store.journal import Journal
from agent.venue import uplink
from agent.venue.election import connect
from agent.venue.leader import VenueRole
from agent.venue.node import NodeProcess
from tests.platform.sync.conftest import backlog, fill_journal, make_site, uploaded_uuids

pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.usefixtures("quick_stream_watch")]
VENUE = "lostq"
SCANS = 30


def _extra(node: NodeProcess, device: str, leads: bool) -> str:
    return (f'\n[sync]\nupload_batch_size = 5\nupload_interval_s = 1\n\n[venue]\n'
            f'name = "{VENUE}"\nservers = ["{node.url}"]\ndevice = "{device}"\n'
            f'lease_ttl_s = 4\nleader = {"true" if leads else "false"}\n')


def _pending(path: Path) -> int:
    journal = Journal(path)
    try:
        return int(journal.counts()["pending"])
    finally:
        journal.close()


def test_scans_on_an_upload_stream_deleted_under_the_leader_are_handed_over_again(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    with start_sandbox(tickets=50, async_delay_s=0.02, rpm=1000) as sandbox:
        lead = make_site(tmp_path / "lead", sandbox, name="lead", rpm=1000,
                         extra=_extra(venue_node, "lead", True))
        member = make_site(tmp_path / "member", sandbox, name="member", rpm=1000,
                           extra=_extra(venue_node, "member", False))
        for site in (lead, member):
            site.config.store_dir.mkdir(parents=True, exist_ok=True)
        journal_path = member.config.store_dir / "journal.db"
        journal = Journal(journal_path)
        rows = backlog(SCANS, datetime.now(UTC).replace(microsecond=0))
        fill_journal(journal, rows)
        journal.close()
        want = {r.uuid for r in rows}

        async def scenario() -> tuple[list[str], dict[str, Any]]:
            nc, js = await connect({"servers": [venue_node.url]}, 5.0)
            roles = [VenueRole(lead.config, sandbox.token), VenueRole(member.config,
                                                                        sandbox.token)]
            stop = asyncio.Event()
            runners = [asyncio.create_task(role.run(stop)) for role in roles]
            seen: list[str] = []  # status reason codes of either role while it recovers

            async def until(check: Any, timeout: float, what: str) -> None:
                deadline = asyncio.get_running_loop().time() + timeout
                while not await check():
                    for role in roles:
                        _health, reasons = evaluate(
                            {"venue": {"connected": True, "leader": role.get_status()}},
                            datetime.now(UTC), 3600)
                        seen.extend(r.code for r in reasons)
                    assert asyncio.get_running_loop().time() < deadline, what
                    await asyncio.sleep(0.1)

            try:
                sandbox.set_faults(error_rate=1.0)  # the leader cannot upload: scans wait
                async def waiting_on_the_bus() -> bool:
                    return roles[0].lead.uploader is not None and \
                        await asyncio.to_thread(_pending, journal_path) == 0
                await until(waiting_on_the_bus, 30, "the member's scans handed to the bus")
                await js.delete_stream(uplink.stream_name(VENUE))  # `nats stream rm`
                await asyncio.sleep(1.0)
                sandbox.clear_faults()

                async def all_uploaded() -> bool:
                    got = await asyncio.to_thread(uploaded_uuids, sandbox)
                    return want <= set(got)
                await until(all_uploaded, 60, "every scan at the platform")
                status = roles[1].get_status()
                return seen, status
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*runners), 30)
                await nc.close()

        seen, status = asyncio.run(scenario())
        applied = Counter(uploaded_uuids(sandbox))
        # nothing lost, nothing applied twice: rows the platform had already (the batch the
        # leader had fetched before the loss, sent once the platform answered again) come
        # back with the gate's copies and are skipped by the platform as `duplicate uuid`
        assert set(applied) == want and max(applied.values()) == 1
        assert "venue_upload_stream_lost" in seen
        assert status.get("upload_stream_lost") is None  # cleared once handed over again
