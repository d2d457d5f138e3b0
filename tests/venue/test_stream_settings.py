"""Venue streams and buckets that exist with other settings than a gate's config asks.

JetStream refuses to create a stream again with other settings (error 10058); before
agent.venue.streams, every gate retried that for ever and never joined the venue. Now a setting
the server may change is updated in place, and one it refuses is used as the server has it,
said in status. All on real nats-server processes (one node; the cluster only for replicas)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from agent import demo_data
from agent.ops.status import evaluate
from agent.sandbox.harness import Sandbox, start_sandbox
from agent.venue import catalog, messages, uplink
from agent.venue.bus import DUPLICATE_WINDOW_S
from agent.venue.election import connect, lease_bucket
from agent.venue.leader import VenueRole
from agent.venue.lease import bucket_name
from agent.venue.node import NodeProcess, stream_ready
from tests.platform.sync.conftest import make_site
from tests.venue.rig import venue_devices, wait_until

pytestmark = [pytest.mark.e2e]


async def _config(js: Any, stream: str) -> StreamConfig:
    return (await js.stream_info(stream)).config


def test_a_changed_setting_is_updated_and_a_refused_one_is_used_as_it_is(
        shared_venue_node: NodeProcess) -> None:
    async def scenario() -> None:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            # venue.lease_ttl_s changed from 2 to 3: the lease bucket's TTL follows
            await lease_bucket(js, "ttl", 2.0, 1)
            drift: dict[str, str] = {}
            kv = await lease_bucket(js, "ttl", 3.0, 1, drift)
            assert (await _config(js, f"KV_{bucket_name('ttl')}")).max_age == pytest.approx(3)
            assert drift == {}
            await kv.put("probe", b"1")  # bound and usable
            # the catalog stream made with another per-subject limit: updated to 1
            await js.add_stream(StreamConfig(name=catalog.stream_name("cat"),
                                             subjects=["venuecat.cat.>"], max_msgs_per_subject=5,
                                             storage=StorageType.FILE))
            await catalog.ensure_stream(js, "cat", 1, drift)
            assert (await _config(js, catalog.stream_name("cat"))).max_msgs_per_subject == 1
            assert drift == {}
            # 3 replicas asked of one node, and a retention no stream can change: both left as
            # they are, each said once with its fix; the other settings are still updated
            await js.add_stream(StreamConfig(
                name=uplink.stream_name("up"), subjects=["venueup.up.>"],
                storage=StorageType.FILE, retention=RetentionPolicy.LIMITS, duplicate_window=60))
            await uplink.ensure_upload_stream(js, "up", 3, drift)
            have = await _config(js, uplink.stream_name("up"))
            assert have.duplicate_window == pytest.approx(600)
            assert have.num_replicas == 1 and have.retention == RetentionPolicy.LIMITS
            stream = uplink.stream_name("up")
            assert set(drift) == {f"{stream}.num_replicas", f"{stream}.retention"}
            replicas = drift[f"{stream}.num_replicas"]
            assert "venue.servers" in replicas and f"nats stream edit {stream} --replicas 3" in replicas
            assert "cannot be changed in place" in drift[f"{stream}.retention"]
            # once the config asks what the stream has, nothing is said any more
            await uplink.ensure_upload_stream(js, "up", 1, drift)
            assert set(drift) == {f"{stream}.retention"}
        finally:
            await nc.close()

    asyncio.run(scenario())


def test_gates_join_a_venue_stream_made_with_other_settings(tmp_path: Path,
                                                             venue_node: NodeProcess) -> None:
    """The venue moved from one node to three in the config before the cluster exists (the
    servers list names three, here the same node): 3 replicas are refused by the one node, the
    gates use the stream as it is and admit through it; the duplicate window is updated."""

    async def precreate() -> None:
        nc, js = await connect({"servers": [venue_node.url]}, 5.0)
        await js.add_stream(StreamConfig(name=messages.stream_name("hall"),
                                         subjects=[messages.stream_subjects("hall")],
                                         storage=StorageType.FILE, duplicate_window=30))
        await nc.close()

    asyncio.run(precreate())
    code = demo_data.bulk_barcode(1)
    with venue_devices(tmp_path, [venue_node.url] * 3, 2, tickets=5) as devices:
        now = datetime.now(UTC)
        first, second = (d.gate() for d in devices)
        assert first.scan(code, first.config.lane("north-in"), now).decision.admit
        again = second.scan(code, second.config.lane("north-in"), now)
        assert (again.decision.admit, again.decision.status) == (False, "alreadyIn")
        status = devices[0].bus.get_status()
        assert status["connected"] and status["claims_granted"] >= 1
        _health, reasons = evaluate({"venue": status}, now, 3600)
        said = {r.code: r.message for r in reasons}
        assert "--replicas 3" in said["venue_settings_differ"]
        assert "num_replicas 1" in said["venue_settings_differ"]

    async def window() -> float:
        nc, js = await connect({"servers": [venue_node.url]}, 5.0)
        try:
            return float((await _config(js, messages.stream_name("hall"))).duplicate_window)
        finally:
            await nc.close()

    assert asyncio.run(window()) == pytest.approx(DUPLICATE_WINDOW_S)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with start_sandbox(tickets=50, async_delay_s=0.02, rpm=1000) as sb:
        yield sb


@pytest.mark.slow
def test_a_new_lease_ttl_lets_the_role_lead(tmp_path: Path, venue_node: NodeProcess,
                                            sandbox: Sandbox) -> None:
    """The role's session made every bucket before its loop: one refused create (the lease
    bucket with the old `venue.lease_ttl_s`) ended it every time, and no hand-over, fallback
    or leading ever ran."""
    site = make_site(tmp_path / "leader", sandbox, rpm=1000, extra=(
        f'\n[venue]\nname = "ttlrole"\nservers = ["{venue_node.url}"]\ndevice = "solo"\n'
        f'lease_ttl_s = 4\n'))
    site.config.store_dir.mkdir(parents=True, exist_ok=True)

    async def scenario() -> float:
        nc, js = await connect({"servers": [venue_node.url]}, 5.0)
        await lease_bucket(js, "ttlrole", 9.0, 1)  # the TTL of the config before
        role = VenueRole(site.config, sandbox.token)
        stop = asyncio.Event()
        runner = asyncio.create_task(role.run(stop))
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while not (role.election is not None and role.election.lease.valid()):
                assert asyncio.get_running_loop().time() < deadline, role.last_error
                await asyncio.sleep(0.1)
            assert role.get_status()["settings_drift"] == []
            return float((await _config(js, f"KV_{bucket_name('ttlrole')}")).max_age)
        finally:
            stop.set()
            await asyncio.wait_for(runner, 30)
            await nc.close()

    assert asyncio.run(scenario()) == pytest.approx(4)


@pytest.mark.slow
def test_a_venue_moved_to_three_nodes_gets_three_replicas(
        tmp_path: Path, venue_cluster: list[NodeProcess]) -> None:
    urls = [node.url for node in venue_cluster]

    async def precreate() -> None:
        nc, js = await connect({"servers": urls}, 5.0)
        deadline = asyncio.get_running_loop().time() + 30
        while True:  # the cluster elects its meta leader first
            try:
                await js.add_stream(StreamConfig(
                    name=messages.stream_name("hall"), subjects=[messages.stream_subjects("hall")],
                    storage=StorageType.FILE, num_replicas=1,
                    duplicate_window=DUPLICATE_WINDOW_S))
                break
            except Exception:  # noqa: BLE001 - no meta leader yet
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.25)
        await nc.close()

    async def replicas() -> int:
        nc, js = await connect({"servers": urls}, 5.0)
        try:
            return int((await _config(js, messages.stream_name("hall"))).num_replicas or 0)
        finally:
            await nc.close()

    async def lower() -> dict[str, str]:
        """A gate listing one server asks 1 replica: never lowered, said instead."""
        nc, js = await connect({"servers": urls}, 5.0)
        drift: dict[str, str] = {}
        try:
            await uplink.ensure_upload_stream(js, "hall", 3)
            await uplink.ensure_upload_stream(js, "hall", 1, drift)
            return drift
        finally:
            await nc.close()

    asyncio.run(precreate())
    code = demo_data.bulk_barcode(2)
    with venue_devices(tmp_path, urls, 1, tickets=5) as devices:
        gate = devices[0].gate()
        stream = messages.stream_name("hall")
        wait_until(lambda: asyncio.run(replicas()) == 3 and stream_ready(venue_cluster, stream),
                   30, "the stream on three nodes")  # grown to 3 replicas by the gate
        assert gate.scan(code, gate.config.lane("north-in"), datetime.now(UTC)).decision.admit
        status = devices[0].bus.get_status()
        assert status["claims_granted"] == 1 and status["settings_drift"] == []
        # the update keeps the stream's identity: venue.db is not reset (stream_identity)
        assert status["stream_restarts"] == 0
    said = asyncio.run(lower())
    assert "never lowers" in said[f"{uplink.stream_name('hall')}.num_replicas"]
