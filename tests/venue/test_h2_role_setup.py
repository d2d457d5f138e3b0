"""The venue role's session set-up while JetStream cannot answer it (no quorum), said at once.

Every device's role (agent.venue.leader) makes the venue's catalog and upload streams and its
buckets at session start. On a new venue without a meta leader each create was tried again
for `streams.CREATE_RETRY_S` (30 s) saying nothing; then the session ended and the next one
did the same, and nothing in status or its reasons said why this gate followed no catalog,
handed no scan over and never took part in the election. Now each failed try is in the role's
status (`session_step`, `setup_error`, `setup_since`: the same record as the bus session's,
agent.venue.setup) and in the venue_degraded reason, and the session goes on by itself once the
quorum is back. A real three-node nats-server cluster, nodes killed by PID and started again.
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


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with start_sandbox(tickets=20, async_delay_s=0.02, rpm=1000) as sb:
        yield sb


def test_a_role_set_up_without_quorum_says_why_at_once_and_runs_once_it_is_back(
        tmp_path: Path, venue_cluster: list[NodeProcess], sandbox: Sandbox) -> None:
    urls = ", ".join(f'"{node.url}"' for node in venue_cluster)
    site = make_site(tmp_path / "gate", sandbox, rpm=1000, extra=(
        f'\n[venue]\nname = "quorumless"\nservers = [{urls}]\ndevice = "solo"\n'))
    site.config.store_dir.mkdir(parents=True, exist_ok=True)
    for node in venue_cluster[:2]:
        node.kill()

    async def scenario() -> None:
        role = VenueRole(site.config, sandbox.token)
        stop = asyncio.Event()
        runner = asyncio.create_task(role.run(stop))
        try:
            waited = await until(lambda: role.get_status()["setup_error"] is not None, 20,
                                  "the role's set-up error in status", role)
            assert waited < streams.CREATE_RETRY_S
            status = role.get_status()
            assert status["session_step"] == "making sure the catalog stream exists", status
            assert "(while making sure the catalog stream exists)" in status["setup_error"]
            assert status["setup_since"] is not None
            said = degraded(role)
            assert said is not None and "venue role's session" in said, status
            assert "making sure the catalog stream exists" in said
            for node in venue_cluster[:2]:
                node.start(wait=False)
            await asyncio.to_thread(lambda: [node.wait_healthy() for node in venue_cluster[:2]])
            await until(lambda: role.get_status()["session_step"] == "running", 120,
                         "the role's session set up by itself", role)
            status = role.get_status()
            assert (status["setup_error"], status["setup_since"]) == (None, None), status
            assert degraded(role) is None
        finally:
            stop.set()
            await asyncio.wait_for(runner, 60)

    asyncio.run(scenario())
