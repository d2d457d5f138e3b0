"""The node fixtures and the node config the agent renders: real servers, R3 writes."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.api import StreamConfig

from agent.errors import ConfigError
from agent.venue.node import NodeProcess, render_config, specs_from_servers


async def _r3_roundtrip(urls: list[str]) -> int:
    nc = await nats.connect(servers=urls, connect_timeout=2)
    try:
        js = nc.jetstream(timeout=2)
        for _ in range(20):  # healthz says JetStream is on, not that a meta leader is elected
            try:
                await js.add_stream(StreamConfig(name="PROBE", subjects=["probe.>"],
                                                 num_replicas=3))
                break
            except (TimeoutError, nats.js.errors.Error):
                await asyncio.sleep(0.25)
        ack = await js.publish("probe.x", b"1")
        return ack.seq
    finally:
        await nc.close()


def test_three_node_cluster_takes_r3_writes(venue_cluster: list[NodeProcess]) -> None:
    assert all(n.healthy() for n in venue_cluster)
    assert asyncio.run(_r3_roundtrip([n.url for n in venue_cluster])) == 1


def test_killed_node_is_gone_by_pid(venue_node: NodeProcess) -> None:
    assert venue_node.healthy()
    venue_node.kill()
    assert not venue_node.running and not venue_node.healthy()


def test_node_config_from_servers_list() -> None:
    specs = specs_from_servers(["nats://10.0.0.1:4222", "nats://10.0.0.2:4222",
                                "nats://10.0.0.3:4222"], "hall", "/var/lib/nats")
    text = render_config(specs[1])
    assert 'listen: "10.0.0.2:4222"' in text
    assert 'store_dir: "/var/lib/nats/hall-2"' in text
    assert '"nats-route://10.0.0.1:6222", "nats-route://10.0.0.2:6222"' in text
    single = render_config(specs_from_servers(["nats://127.0.0.1:4222"], "v", "/s")[0])
    assert "cluster" not in single
    with pytest.raises(ConfigError, match="venue.servers"):
        specs_from_servers(["nats://nohost"], "v", "/s")
