"""The dashboard in a real headless browser (Playwright driving the distribution's Chromium) over
a running venue: one real nats-server, two real `gate-agent run` daemons with `sim:` readers.

The venue page served by gate-a loads with no console error, shows both gates online, shows a
scan at gate-b raise gate-b's count and the venue's, and shows gate-b offline within its
heartbeat TTL after gate-b is killed (SIGKILL: no clean goodbye). It fits a phone's width.
Screenshots go to tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import demo_data
from agent.demo_venue import start_gates, stop_venue
from agent.runtime.devrun import DaemonProcess
from agent.venue.node import start_venue
from drivers.sim import send_scan
from tests.venue.rig import wait_until

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TTL_S = 3.0
HEARTBEAT = f"heartbeat_s = 0.5\nheartbeat_ttl_s = {TTL_S}"

pytestmark = [
    pytest.mark.e2e, pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium "
                       "(Debian: apt-get install chromium; .ci/run installs it)"),
]


@pytest.fixture(scope="module")
def venue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, DaemonProcess]]]:
    root = tmp_path_factory.mktemp("dash")
    nodes = start_venue(root / "nats", 1, "fair")
    daemons: dict[str, DaemonProcess] = {}
    try:
        daemons = start_gates(root, {"gate-a": [nodes[0].url], "gate-b": [nodes[0].url]},
                              "fair", HEARTBEAT)
        for daemon in daemons.values():
            daemon.wait_ready()
        wait_until(lambda: all(d.status()["venue"]["ready"] for d in daemons.values()),
                   20, "gates on the bus")
        yield root, daemons
    finally:
        stop_venue(daemons, nodes)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser: Any, url: str, phone: bool = False) -> tuple[Any, list[str]]:
    viewport = {"width": 390, "height": 844} if phone else {"width": 1280, "height": 900}
    page = browser.new_page(viewport=viewport)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto(url)
    return page, problems


def card(page: Any, device: str) -> Any:
    return page.locator(f'article[data-device="{device}"]')


def test_venue_page_follows_the_venue(venue: tuple[Path, dict[str, DaemonProcess]],
                                      browser: Any) -> None:
    root, daemons = venue
    ARTIFACTS.mkdir(exist_ok=True)
    page, problems = open_page(browser, daemons["gate-a"].status_url + "/venue", phone=True)
    for device in ("gate-a", "gate-b"):
        card(page, device).wait_for(timeout=15_000)
        page.wait_for_function(
            f"document.querySelector('article[data-device=\"{device}\"]')"
            ".dataset.state === 'online'", timeout=15_000)
    assert page.locator("#title").inner_text() == "Venue fair"
    assert page.locator('[data-testid="leader"]').inner_text() == "no leader"  # none elected yet
    wider = page.evaluate("[...document.querySelectorAll('body *')].filter(e => "
                          "e.getBoundingClientRect().right > window.innerWidth + 1)"
                          ".map(e => `${e.tagName}.${e.className}: ${e.textContent.slice(0, 80)}`)")
    assert wider == [], "wider than a phone"
    scans = card(page, "gate-b").locator('[data-testid="scans"]')
    before = int(scans.inner_text())

    send_scan(root / "gate-b.sock", demo_data.CODES["valid"])
    assert daemons["gate-b"].wait_decisions(1)[0]["admit"]
    page.wait_for_function(
        "n => Number(document.querySelector('article[data-device=\"gate-b\"] "
        "[data-testid=scans]').textContent) > n", arg=before, timeout=15_000)
    assert int(card(page, "gate-b").locator('[data-testid="admitted"]').inner_text()) == 1
    page.wait_for_function("Number(document.querySelector('[data-testid=venue-admitted]')"
                           ".textContent) >= 1", timeout=15_000)
    page.wait_for_function("[...document.querySelectorAll('[data-testid=inside]')]"
                           ".some(td => Number(td.textContent) === 1)", timeout=15_000)
    page.screenshot(path=str(ARTIFACTS / "dashboard-venue-phone.png"), full_page=True)

    daemons["gate-b"].kill()  # SIGKILL: the heartbeat is never withdrawn, only expires
    killed = time.monotonic()
    page.wait_for_function(
        "document.querySelector('article[data-device=\"gate-b\"]').dataset.state === 'offline'",
        timeout=(TTL_S + 60) * 1000)  # a generous deadline, not a timed assertion (a loaded
    offline_after = time.monotonic() - killed  # machine is slow): how soon is printed below
    assert page.locator("article.card").first.get_attribute("data-device") == "gate-b"
    assert "gate-b" in page.locator("#alarms").inner_text()
    page.screenshot(path=str(ARTIFACTS / "dashboard-venue-offline.png"), full_page=True)
    print(f"gate-b shown offline {offline_after:.1f} s after SIGKILL (TTL {TTL_S} s); "
          f"screenshots in {ARTIFACTS}")
    assert problems == []


def test_gate_page_shows_this_gate(venue: tuple[Path, dict[str, DaemonProcess]],
                                   browser: Any) -> None:
    _root, daemons = venue
    page, problems = open_page(browser, daemons["gate-a"].status_url + "/")
    page.locator('article[data-lane="entry"]').wait_for(timeout=15_000)
    assert page.locator('[data-testid="bus"]').inner_text().startswith("connected")
    page.screenshot(path=str(ARTIFACTS / "dashboard-gate.png"), full_page=True)
    assert problems == []
