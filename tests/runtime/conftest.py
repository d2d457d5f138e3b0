"""Fixtures shared by the lane tests of tests/runtime."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from agent import demo_data
from agent.sandbox.harness import Sandbox, start_sandbox
from tests.conftest import DemoSite
from tests.runtime.lanerig import LaneRig


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """The platform sandbox (a real HTTP server on loopback) seeded with the demo tickets,
    one per test module, for what a lane's scans upload as."""
    seed = tmp_path_factory.mktemp("seed") / "seed.json"
    seed.write_text(json.dumps(demo_data.sandbox_seed(datetime.now(UTC))))
    with start_sandbox(seed_file=seed, rpm=6000, async_delay_s=0.01) as sb:
        yield sb


@pytest.fixture
def rig(site: DemoSite, request: pytest.FixtureRequest) -> Iterator[LaneRig]:
    """tests/runtime/lanerig.py's lane, with the settings of the test's `lane(...)` marker."""
    marker = request.node.get_closest_marker("lane")
    r = LaneRig(site, request.node.name[:20], **(marker.kwargs if marker else {}))
    yield r
    r.close()
