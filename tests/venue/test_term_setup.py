"""The leader's term set-up while JetStream cannot answer it (no quorum), said at once.

A device that takes the lease sets up its term's work inside a running session
(agent.venue.leader_work): the batches bucket first, whose create was tried for
`streams.CREATE_RETRY_S` (30 s) without a word while the cluster had no quorum; it showed only
as one more `leader_errors` after half a minute, and status said the role ran. Now each failed
try is in the role's status (`term_setup`: the same record as the sessions', agent.venue.setup)
and in the venue_degraded reason, and the term is set up by itself once the quorum is back. A
real three-node nats-server cluster: two nodes killed by PID the moment this device leads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sandbox.harness import Sandbox, start_sandbox
from agent.venue import streams
from agent.venue.leader import VenueRole
from agent.venue.node import NodeProcess
from tests.platform.sync.conftest import make_site
from tests.venue.rolecheck import degraded, until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BATCHES_STEP = "making sure the batches bucket exists"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with start_sandbox(tickets=20, async_delay_s=0.02, rpm=1000) as sb:
        yield sb


def test_a_term_set_up_without_quorum_says_why_at_once_and_runs_once_it_is_back(
        tmp_path: Path, venue_cluster: list[NodeProcess], sandbox: Sandbox) -> None:
    urls = ", ".join(f'"{node.url}"' for node in venue_cluster)
    # the lease is trusted 24 s (0.8 TTL) from its grant; a JetStream request times out
    # after 7.5 s (TTL / 4): the term's first try (budget, create, stream info) ends in that
    site = make_site(tmp_path / "gate", sandbox, rpm=1000, extra=(
        f'\n[venue]\nname = "termless"\nservers = [{urls}]\ndevice = "solo"\n'
        'lease_ttl_s = 30\n'))
    site.config.store_dir.mkdir(parents=True, exist_ok=True)

    async def scenario() -> None:
        role = VenueRole(site.config, sandbox.token)
        leads = role._changed
        killed, back = asyncio.Event(), asyncio.Event()

        async def changed(leading: bool) -> None:
            if leading and not killed.is_set():
                # the quorum goes as this device takes the lease, before its term is set up
                # (killed on this loop: the role's loop cannot start the term in between);
                # the election waits here until the quorum is back, so it neither renews nor
                # steps down meanwhile: the lease stays trusted while the term's set-up fails
                for node in venue_cluster[:2]:
                    node.kill()
                killed.set()
                await back.wait()
            await leads(leading)

        role._changed = changed  # type: ignore[method-assign]
        stop = asyncio.Event()
        runner = asyncio.create_task(role.run(stop))
        try:
            await asyncio.wait_for(killed.wait(), 60)
            assert role.get_status()["session_step"] == "running"
            # each failed try is said with its step (the next try starts at the first step)
            waited = await until(
                lambda: f"(while {BATCHES_STEP})" in (
                    role.get_status()["term_setup"]["setup_error"] or ""), 25,
                "the term's set-up error in status", role)
            assert waited < streams.CREATE_RETRY_S
            status = role.get_status()
            term = status["term_setup"]
            assert term["session_step"] != "running" and term["setup_since"] is not None, term
            assert role.lead.uploader is None
            said = degraded(role)
            assert said is not None and "its leader term" in said, status
            assert BATCHES_STEP in said
            for node in venue_cluster[:2]:
                node.start(wait=False)
            await asyncio.to_thread(lambda: [node.wait_healthy() for node in venue_cluster[:2]])
            back.set()
            await until(lambda: role.lead.uploader is not None
                         and role.get_status()["term_setup"]["session_step"] == "running", 120,
                         "the term set up by itself", role)
            term = role.get_status()["term_setup"]
            assert (term["setup_error"], term["setup_since"]) == (None, None), term
            assert degraded(role) is None
        finally:
            back.set()
            stop.set()
            await asyncio.wait_for(runner, 60)

    asyncio.run(scenario())
