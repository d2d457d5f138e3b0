"""A technician's one-person release through the real daemon (a subprocess): while it waits
for the person it let through, `/status`, `/metrics`, `gate-agent status` and the gate page
say so, and stop saying so once that person has passed (it used to show nowhere:
`passage.waiting` counts admits only, so a lane waiting on a released passage looked idle)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.runtime.devrun import DaemonProcess
from drivers.inputs import send_input
from tests.conftest import run_cli
from tests.rigs import wait_until
from tests.runtime.daemon.conftest import Site, site  # noqa: F401 - fixture

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
WAITING = 'gate_passage_waiting{kind="release",lane="entry"}'
CHROMIUM = Path("/usr/bin/chromium")


@contextmanager
def gate_with_passage_input(where: Site) -> Iterator[tuple[DaemonProcess, Path]]:
    """The daemon with a passage input on its entry lane (a minute to pass)."""
    pin = where.root / "pin.sock"
    where.write_config()
    text = where.config.read_text().replace(
        "debounce_ms = 300\n",
        f'debounce_ms = 300\npassage_in = "sim:pin?socket={pin}"\npassage_timeout_ms = 60000\n', 1)
    where.config.write_text(text)
    daemon = where.daemon().start()
    try:
        daemon.wait_ready()
        wait_until(pin.exists, 10, "passage input socket")
        yield daemon, pin
    finally:
        daemon.stop()


def release(where: Site) -> None:
    cli = run_cli("release", "entry", "--by", "tech-1", "--config", str(where.config))
    assert cli.returncode == 0, cli.stderr


def test_a_release_waiting_for_its_person_shows_in_status_metrics_and_the_cli(
        site: Site) -> None:  # noqa: F811 - the fixture
    with gate_with_passage_input(site) as (daemon, pin):
        def passage() -> dict[str, Any]:
            return dict(daemon.status()["lanes"][0]["passage"])

        assert passage()["releases_waiting"] == []
        assert f"{WAITING} 0.0" in daemon.get("/metrics").text
        release(site)
        (waiting,) = passage()["releases_waiting"]
        assert (waiting["by"], waiting["directions"]) == ("tech-1", ["in"])
        assert 0 < waiting["ends_in_s"] <= 60
        assert passage()["waiting"] == 0  # no admit waits: only the release
        assert f"{WAITING} 1.0" in daemon.get("/metrics").text
        shown = run_cli("status", "--config", str(site.config))
        assert "release by tech-1 waiting (in, " in shown.stdout, shown.stdout + shown.stderr
        send_input(pin, "pulse")  # the released person walks through
        wait_until(lambda: passage()["totals"]["free"] == 1, 10, "the released passage")
        assert passage()["releases_waiting"] == []
        assert f"{WAITING} 0.0" in daemon.get("/metrics").text


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium "
                    "(Debian: apt-get install chromium; .ci/run installs it)")
def test_the_gate_page_shows_the_release_waiting(site: Site) -> None:  # noqa: F811
    from playwright.sync_api import sync_playwright

    with gate_with_passage_input(site) as (daemon, pin), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(daemon.status_url + "/")
            shown = page.locator('article[data-lane="entry"] [data-testid="lane-passage"]')
            shown.wait_for(timeout=15_000)
            assert shown.inner_text() == "0 admit(s) waiting"
            release(site)
            page.wait_for_function("() => document.querySelector('article[data-lane=\"entry\"] "
                                   "[data-testid=\"lane-passage\"]').textContent"
                                   ".includes('release by tech-1 waiting (in, ')",
                                   timeout=15_000)
            send_input(pin, "pulse")
            page.wait_for_function("() => document.querySelector('article[data-lane=\"entry\"] "
                                   "[data-testid=\"lane-passage\"]').textContent"
                                   " === '0 admit(s) waiting'", timeout=15_000)
            assert page.locator('article[data-lane="entry"] [data-testid="lane-relay"]'
                                ).inner_text() == "ok"
            # a relay as status judges it: `ok` false is a fault even without error text
            assert page.evaluate("relayText({url: 'r', ok: false, last_error: ''}, {})") == \
                "FAULT: not open"
            assert page.evaluate("relayText({url: 'r', ok: true, held: true}, {})") == \
                "held open"
            assert page.evaluate("relayText({url: 'r', ok: false, last_error: 'e'}, "
                                 "{r: 'board reset'})") == "NOT HELD OPEN: board reset"
            assert problems == []
        finally:
            browser.close()
