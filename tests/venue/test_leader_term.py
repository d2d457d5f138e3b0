"""The leader's work across a lease dropped and taken back under the same device name.

A real `VenueRole` (its real Election and LeaderFence) on a real nats-server, against the
sandbox. One fence renewal is refused: the refusal is injected at the KV boundary (the lease
bucket's `update` answered with a server error, which the lease does not understand and so
drops its grant on: agent.venue.lease), only for the first renewal the sync task's own request
asks for. Nothing real makes one KV update of a healthy one-node bus fail on demand. (A
renewal nobody answers holds the grant instead: tests/venue/test_lease_renewal.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.js.errors import ServerError

from agent.sandbox.harness import Sandbox, start_sandbox
from agent.venue.leader import VenueRole
from agent.venue.node import NodeProcess
from tests.platform.sync.conftest import make_site

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with start_sandbox(tickets=200, async_delay_s=0.02, rpm=1000) as sb:
        yield sb


class SyncRenewalFailsOnce:
    """The lease bucket, whose `update` is refused once when the leader's sync task renews."""

    def __init__(self, kv: Any):
        self.kv = kv
        self.failed = False

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        task = asyncio.current_task()
        if not self.failed and task is not None and task.get_name() == "venue sync":
            self.failed = True
            raise ServerError(code=500, description="injected refusal")
        return int(await self.kv.update(key, value, last=last))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kv, name)


def _reads(sb: Sandbox) -> int:
    """Requests of the leader's sync passes (everything but uploads) the platform received."""
    per = sb.received()["perEndpoint"]
    return sum(n for key, n in per.items() if key.startswith("GET "))


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def test_a_failed_fence_renewal_does_not_end_the_leaders_sync_for_its_term(
        tmp_path: Path, venue_node: NodeProcess, sandbox: Sandbox) -> None:
    site = make_site(tmp_path / "leader", sandbox, rpm=1000, extra=(
        f'\n[sync]\ndelta_interval_s = 1\n\n[venue]\nname = "termtest"\n'
        f'servers = ["{venue_node.url}"]\ndevice = "solo"\nlease_ttl_s = 4\n'))
    site.config.store_dir.mkdir(parents=True, exist_ok=True)

    async def scenario() -> dict[str, Any]:
        role = VenueRole(site.config, sandbox.token)
        stop = asyncio.Event()
        runner = asyncio.create_task(role.run(stop))
        try:
            async def syncing() -> bool:
                return role.lead.uploader is not None \
                    and await asyncio.to_thread(_reads, sandbox) > 2
            await _until(syncing, 30, "leading and syncing")
            assert role.election is not None
            lease = role.election.lease
            first_term = lease.term
            wrapper = SyncRenewalFailsOnce(lease.kv)
            lease.kv = wrapper

            async def taken_back() -> bool:
                return wrapper.failed and lease.valid() and lease.term > first_term
            await _until(taken_back, 30, "the fence renewal failed and the lease taken back")
            # taken back under its own name: the election never saw it not leading
            assert role.election.leading and role.election.terms_won == 2
            # the leader's sync passes go on in the new term
            async def reads() -> int:
                return int(await asyncio.to_thread(_reads, sandbox))
            before = await reads()

            async def syncing_again() -> bool:
                return await reads() >= before + 3
            await _until(syncing_again, 20, "sync passes in the new term")
            task = role.lead.sync_task
            return {"task_alive": task is not None and not task.done(),
                    "lead_term": role.lead.term, "term": lease.term}
        finally:
            stop.set()
            await asyncio.wait_for(runner, 30)

    out = asyncio.run(scenario())
    assert out["task_alive"] and out["lead_term"] == out["term"]
