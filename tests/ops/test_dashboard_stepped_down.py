"""The gate page of a venue gate that stepped down as leader, in a real headless browser: its
platform link is no longer measured (only the leader sends the platform requests), so its last
error and clock skew are history, and the page says since when ("not measured since
HH:MM:SS"), as `gate-agent status` does, where it used to show them as the link's state now.

Real components throughout: one nats-server, the platform sandbox on loopback, two real
`gate-agent run` daemons. The "blind" one's `api.base_url` names a closed port (its
connections refused, as behind a cut cable) and it leads alone; the "seeing" one reaches the
platform, so the blind leader hands it the lease (agent.venue.stepdown).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import demo_data
from agent.demo_venue import gate_config, stop_venue
from agent.runtime.devrun import DaemonProcess
from agent.sandbox.harness import start_sandbox
from agent.venue.node import free_ports, start_venue
from tests.ops.test_dashboard_browser import (  # noqa: F401 - fixture
    ARTIFACTS,
    CHROMIUM,
    browser,
)
from tests.rigs import wait_until

pytestmark = [
    pytest.mark.e2e, pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium "
                       "(Debian: apt-get install chromium; .ci/run installs it)"),
]

VENUE = "sd"
STEPDOWN = "leader_stepdown_after_s = 3\nplatform_probe_s = 1\nheartbeat_s = 0.5\n" \
           "heartbeat_ttl_s = 3"


def _gate(root: Path, name: str, node_url: str, base_url: str, company_id: int) -> Path:
    """A venue gate with the platform's token (so it may lead) and its own `base_url`."""
    path = gate_config(root, name, [node_url], VENUE, STEPDOWN)
    text = path.read_text()
    assert 'base_url = "http://127.0.0.1:9/v1"' in text
    path.write_text(text.replace('base_url = "http://127.0.0.1:9/v1"',
                                 f'base_url = "{base_url}"\ncompany_id = {company_id}')
                    .replace(str(root / "no-token"), str(root / "token")))
    return path


def _leads(daemon: DaemonProcess) -> bool:
    leader = (daemon.status().get("venue") or {}).get("leader") or {}
    return bool(leader.get("this_device_leads"))


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[dict[str, DaemonProcess]]:
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps(demo_data.sandbox_seed(datetime.now(UTC))))
    nodes = start_venue(tmp_path / "nats", 1, VENUE)
    daemons: dict[str, DaemonProcess] = {}
    try:
        with start_sandbox(seed_file=seed, rpm=600) as sandbox:
            (tmp_path / "token").write_text(sandbox.token)
            (tmp_path / "token").chmod(0o600)
            (dead,) = free_ports(1)
            for name, url in (("blind", f"http://127.0.0.1:{dead}/v1"),
                              ("seeing", sandbox.url)):
                config = _gate(tmp_path, name, nodes[0].url, url, sandbox.company_id)
                daemons[name] = DaemonProcess(config, tmp_path / name)
            blind, seeing = daemons["blind"], daemons["seeing"]
            blind.start().wait_ready()  # alone: it leads, though it cannot reach the platform
            wait_until(lambda: _leads(blind), 30, "the blind gate leading")
            seeing.start().wait_ready()
            wait_until(lambda: _leads(seeing), 60, "the gate that reaches the platform leading")
            yield daemons
    finally:
        stop_venue(daemons, nodes)


def _page(browser: Any, url: str) -> tuple[Any, list[str]]:  # noqa: F811
    """The gate page in a browser whose clock reads UTC (the status's times are UTC), so the
    HH:MM:SS shown can be told from the status."""
    page = browser.new_page(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.goto(url)
    return page, problems


def _text(page: Any, testid: str, wanted: str) -> str:
    """The element's text once it contains `wanted` (the page polls /status every 2 s)."""
    page.wait_for_function(
        "([id, s]) => { const e = document.querySelector(`[data-testid=${id}]`);"
        " return e !== null && e.textContent.includes(s); }", arg=[testid, wanted],
        timeout=30_000)
    return str(page.locator(f'[data-testid="{testid}"]').inner_text())


def test_a_gate_that_stepped_down_shows_its_link_as_not_measured_since(
        gates: dict[str, DaemonProcess], browser: Any) -> None:  # noqa: F811
    blind, seeing = gates["blind"], gates["seeing"]
    platform = wait_until(lambda: (lambda p: p if p.get("not_measured_since") else None)(
        blind.status()["platform"]), 30, "the blind gate's link marked not measured")
    assert platform["last_error"], platform  # what its client saw last, while it led
    since = str(platform["not_measured_since"])
    hhmmss = datetime.fromisoformat(since.replace("Z", "+00:00")).strftime("%H:%M:%S")
    page, problems = _page(browser, blind.status_url + "/")
    link = _text(page, "platform-link", "not measured since")
    assert link == f"last error: {platform['last_error']} (not measured since {hhmmss})", link
    skew = _text(page, "clock-skew", "not measured since")
    assert skew.endswith(f"(not measured since {hhmmss})"), skew
    assert page.locator('[data-testid="platform-link"]').get_attribute("title") == \
        f"not measured since {since}: this gate no longer leads the venue"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-gate-stepped-down.png"), full_page=True)
    # the leader measures its link: shown as it is now, with no such note
    leading, more = _page(browser, seeing.status_url + "/")
    now = _text(leading, "platform-link", "")
    assert "not measured" not in now and "not measured" not in \
        _text(leading, "clock-skew", ""), now
    assert problems == [] and more == []
