"""Fixtures: a sandbox on a real loopback socket per test, and clients wired to it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from agent.platform.client import PlatformClient
from agent.platform.governor import Governor
from agent.sandbox.harness import Sandbox, start_sandbox


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """A fresh sandbox (thread, port 0); parametrize via `@pytest.mark.sandbox(rpm=...)`."""
    marker = request.node.get_closest_marker("sandbox")
    options: dict[str, Any] = {"tickets": 250, "async_delay_s": 0.05}
    if marker is not None:
        options.update(marker.kwargs)
    with start_sandbox(**options) as sb:
        yield sb


def make_client(sb: Sandbox, *, token: str | None = None, company_id: int | None = None,
                rpm: int = 1000, timeout_s: float = 5.0, **kw: Any) -> PlatformClient:
    return PlatformClient(sb.url, token or sb.token,
                          sb.company_id if company_id is None else company_id, "en", timeout_s,
                          Governor(rpm, 1.0, 0), **kw)


def run(coro: Any) -> Any:
    return asyncio.run(coro)
