"""The venue page tells a gate whose bus link is up but whose session is not set up from a
connected one, with the set-up step and its error; before, both read "connected" (and so did
the gate's own page).

A real venue with a session held back for real: one nats-server with JetStream, the venue's
stream made beforehand with `max_consumers = 1`; gate-a starts first and its subscription takes
that one consumer, so gate-b's set-up step "subscribing to the stream" is refused while its
link, its heartbeats and everything else of JetStream work (claims follow the offline policy
meanwhile). Two real `gate-agent run` daemons; the page in a real headless Chromium
(Playwright), as tests/ops/test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from agent.demo_venue import start_gates, stop_venue
from agent.ops.heartbeat import RateWindow, bus_text, compact
from agent.runtime.devrun import DaemonProcess
from agent.venue import messages
from agent.venue.bus import DUPLICATE_WINDOW_S
from agent.venue.node import start_venue
from tests.ops.test_dashboard_browser import CHROMIUM, browser  # noqa: F401 (the fixture)
from tests.venue.rig import wait_until

VENUE = "fair"
HEARTBEAT = "heartbeat_s = 0.5\nheartbeat_ttl_s = 3"

pytestmark = [
    pytest.mark.e2e, pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium "
                       "(Debian: apt-get install chromium; .ci/run installs it)"),
]


async def one_consumer_stream(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(StreamConfig(
            name=messages.stream_name(VENUE), subjects=[messages.stream_subjects(VENUE)],
            storage=StorageType.FILE, num_replicas=1, duplicate_window=DUPLICATE_WINDOW_S,
            max_consumers=1))
    finally:
        await nc.close()


def test_heartbeat_carries_the_session_beside_the_link() -> None:
    venue = {"connected": True, "ready": False, "session_step": "subscribing to the stream",
             "setup_error": "BadRequestError: maximum consumers limit reached", "lag": 0}
    bus = compact({"venue": venue}, datetime.now(UTC), RateWindow())["bus"]
    assert (bus["connected"], bus["ready"], bus["session_step"]) == (
        True, False, "subscribing to the stream")
    assert bus["setup_error"] == venue["setup_error"]
    assert bus_text(bus) == ("link up, session NOT READY (BadRequestError: maximum consumers "
                             "limit reached)")  # `gate-agent venue status`'s bus column
    assert bus_text({**bus, "setup_error": None}) == \
        "link up, session NOT READY (subscribing to the stream)"
    assert bus_text({**bus, "ready": True}) == "connected"
    assert bus_text({"connected": True}) == "connected"  # an older heartbeat: its link
    assert bus_text({"connected": False, "ready": False}) == "not connected"


@pytest.fixture(scope="module")
def venue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, DaemonProcess]]:
    root = tmp_path_factory.mktemp("notready")
    nodes = start_venue(root / "nats", 1, VENUE)
    daemons: dict[str, DaemonProcess] = {}
    try:
        asyncio.run(one_consumer_stream(nodes[0].url))
        daemons.update(start_gates(root, {"gate-a": [nodes[0].url]}, VENUE, HEARTBEAT))
        daemons["gate-a"].wait_ready()
        wait_until(lambda: daemons["gate-a"].status()["venue"]["ready"], 20, "gate-a set up")
        daemons.update(start_gates(root, {"gate-b": [nodes[0].url]}, VENUE, HEARTBEAT))
        daemons["gate-b"].wait_ready()
        wait_until(lambda: daemons["gate-b"].status()["venue"]["setup_error"], 20,
                   "gate-b's set-up refused")
        yield daemons
    finally:
        stop_venue(daemons, nodes)


def bus_line(page: Any, device: str) -> str:
    selector = f'article[data-device="{device}"] [data-testid="bus"]'
    page.wait_for_selector(selector, timeout=15_000)
    return str(page.locator(selector).inner_text())


def test_venue_page_shows_link_up_session_not_ready(
        venue: dict[str, DaemonProcess], browser: Any) -> None:  # noqa: F811
    b = venue["gate-b"].status()["venue"]
    assert b["connected"] and not b["ready"] and b["session_step"] == "subscribing to the stream"

    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    try:
        page.goto(venue["gate-a"].status_url + "/venue")
        page.wait_for_function(  # gate-b's heartbeats flow: its link and KV work
            "document.querySelector('article[data-device=\"gate-b\"]')?.dataset.state "
            "=== 'online'", timeout=15_000)
        line = bus_line(page, "gate-b")
        assert line.startswith("link up, session NOT READY"), line
        assert "maximum consumers" in line, line
        assert bus_line(page, "gate-a").startswith("connected, lag"), bus_line(page, "gate-a")
        assert "bus connected" in page.locator("#whoami").inner_text()

        page.goto(venue["gate-b"].status_url + "/venue")  # the page of the gate itself
        page.wait_for_function("document.getElementById('whoami').textContent.length > 0",
                               timeout=15_000)
        whoami = page.locator("#whoami").inner_text()
        assert "bus link up, session NOT READY" in whoami, whoami
        assert "subscribing to the stream" in whoami or "maximum consumers" in whoami, whoami

        page.goto(venue["gate-b"].status_url + "/")  # the gate's own page says it too
        tile = page.locator('[data-testid="bus"]')
        tile.wait_for(timeout=15_000)
        assert tile.inner_text().startswith("link up, session NOT READY"), tile.inner_text()
        assert problems == []
    finally:
        page.close()
