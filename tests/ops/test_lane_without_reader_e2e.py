"""A lane whose only reader is lost admits nobody: status says `fail` (`no_reader`, naming the
lane), even while another lane's reader works. It said `warn` (`reader_disconnected`, "others
still work"), which no alert rule paged, while one entrance of the gate was dead.
Real daemon (a subprocess): the entry lane's reader is a serial port that does not exist, the
exit lane's a `sim:` reader that works."""

from __future__ import annotations

import pytest

from tests.runtime.daemon.conftest import Site, site, wait_synced  # noqa: F401 - fixture

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_lane_whose_only_reader_is_lost_fails_the_gate(site: Site) -> None:  # noqa: F811
    missing = site.root / "no-such-tty"
    site.write_config(entry_reader=f"serial://{missing}")
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        wait_synced(daemon)  # no other fail reason (cache_empty) left beside it
        report = daemon.status()
        readers = {lane["name"]: lane["readers_connected"] for lane in report["lanes"]}
        assert readers == {"entry": 0, "exit": 1}
        reasons = {(r["code"], r["level"]): r["message"] for r in report["reasons"]}
        said = reasons.get(("no_reader", "fail"), "")
        assert said.startswith("lane entry: no reader connected") and str(missing) in said, \
            report["reasons"]
        assert [r["code"] for r in report["reasons"] if r["level"] == "fail"] == ["no_reader"]
        assert report["health"] == "fail" and daemon.get("/healthz").status_code == 503
        metrics = daemon.get("/metrics").text
        assert 'gate_reason_active{code="no_reader"} 1.0' in metrics
        assert f'gate_reader_connected{{lane="entry",reader="serial://{missing}"}} 0.0' in metrics
        assert "gate_health 2.0" in metrics
    finally:
        assert daemon.stop() == 0
