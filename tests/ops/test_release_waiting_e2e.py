"""A technician's one-person release through the real daemon (a subprocess): while it waits
for the person it let through, `/status`, `/metrics` and `gate-agent status` say so, and stop
saying so once that person has passed (it used to show nowhere: `passage.waiting` counts
admits only, so a lane waiting on a released passage looked idle)."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.inputs import send_input
from tests.conftest import run_cli
from tests.rigs import wait_until
from tests.runtime.daemon.conftest import Site, site  # noqa: F401 - fixture

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
WAITING = 'gate_passage_waiting{kind="release",lane="entry"}'


def test_a_release_waiting_for_its_person_shows_in_status_metrics_and_the_cli(
        site: Site) -> None:  # noqa: F811 - the fixture
    pin = site.root / "pin.sock"
    site.write_config()
    text = site.config.read_text().replace(
        "debounce_ms = 300\n",
        f'debounce_ms = 300\npassage_in = "sim:pin?socket={pin}"\npassage_timeout_ms = 60000\n', 1)
    site.config.write_text(text)
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        wait_until(pin.exists, 10, "passage input socket")

        def passage() -> dict[str, Any]:
            return dict(daemon.status()["lanes"][0]["passage"])

        assert passage()["releases_waiting"] == []
        assert f"{WAITING} 0.0" in daemon.get("/metrics").text
        cli = run_cli("release", "entry", "--by", "tech-1", "--config", str(site.config))
        assert cli.returncode == 0, cli.stderr
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
    finally:
        daemon.stop()
