"""The node fixtures and the node config the agent renders: real servers, R3 writes."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from agent.errors import ConfigError
from agent.venue.node import (
    NodeProcess,
    free_ports,
    render_config,
    server_binary,
    specs_from_servers,
)
from tests.conftest import PROJECT_ROOT


async def _r3_roundtrip(urls: list[str]) -> int:
    """Create an R3 stream and publish to it. healthz says JetStream is on, not that a meta
    leader is elected, nor (after add_stream) that the new stream's own group has a leader:
    on a loaded machine either may take seconds, so both steps are retried up to 30 s."""
    nc = await nats.connect(servers=urls, connect_timeout=2)
    try:
        js = nc.jetstream(timeout=2)
        deadline = time.monotonic() + 30
        while True:
            try:
                await js.add_stream(StreamConfig(name="PROBE", subjects=["probe.>"],
                                                 num_replicas=3))
                ack = await js.publish("probe.x", b"1", headers={"Nats-Msg-Id": "probe-1"})
                return ack.seq
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)
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


VENUE_UNIT = PROJECT_ROOT / "systemd" / "venue-node.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (.ci/run installs systemd)")
def test_venue_node_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    unit = tmp_path / "venue-node.service"
    unit.write_text(VENUE_UNIT.read_text().replace("/usr/local/bin/nats-server",
                                                   server_binary()))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True)
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out.stdout + out.stderr
    sec = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                         capture_output=True, text=True)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", sec.stdout + sec.stderr)
    assert match and float(match.group(1)) <= 2.5, sec.stdout[-500:]


def test_node_config_runs_on_the_real_server(tmp_path: Path) -> None:
    """What `gate-agent venue node-config` prints is a config nats-server accepts."""
    port = free_ports(1)[0]
    spec = specs_from_servers([f"nats://127.0.0.1:{port}"], "hall", str(tmp_path))[0]
    node = NodeProcess(spec, tmp_path).start()
    try:
        assert node.healthy()
    finally:
        node.kill()


def test_free_ports_stay_out_of_the_ephemeral_range() -> None:
    """A node a test kills and starts again binds its ports again; in the ephemeral range any
    outgoing connection or `bind(0)` meanwhile could take one (a CI flake: the node did not
    come back). So the ports are picked below it, distinct and free."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_ports(12)
    assert len(set(ports)) == 12
    assert all(1024 <= p < low for p in ports), (low, ports)


def test_a_node_that_cannot_start_says_why(tmp_path: Path,
                                           venue_node: NodeProcess) -> None:
    """A node that exits at start names the reason from its log (here: its port is taken),
    not only a folder that may be gone by the time someone reads the failure."""
    taken = NodeProcess(replace(venue_node.spec, name="second",
                                store_dir=str(tmp_path / "second-js"),
                                monitor_port=free_ports(1)[0]), tmp_path / "second")
    with pytest.raises(RuntimeError, match=r"second exited \(rc \d+\): .*address already in use"):
        taken.start(wait_s=20)
