"""Issue 11 item 8: after SIGHUP every setting is in force everywhere, or the reload is refused
naming the key that needs a restart — never half. `Daemon.reload` is what the SIGHUP handler
calls; it runs here in-process on the demo site's real files (lanes without readers)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace

import pytest

from agent import demo_data
from agent.config import load_config, parse_config
from agent.runtime.bindings import effective_lanes
from agent.runtime.daemon import Daemon
from agent.runtime.reload import plan_reload
from tests.conftest import PROJECT_ROOT, DemoSite

C = demo_data.CODES


@pytest.fixture
def daemon(site: DemoSite) -> Iterator[Daemon]:
    d = Daemon(site.config)
    d.open_stores()
    d.start_lanes(effective_lanes(site.config))
    yield d
    for runner in d.lanes.values():
        runner.stop()
    d.close_stores()


def rewrite(site: DemoSite, old: str, new: str) -> None:
    text = site.config_path.read_text()
    assert old in text
    site.config_path.write_text(text.replace(old, new))


def test_unchanged_lanes_take_the_fresh_event_list_and_fail_closed(daemon: Daemon,
                                                                   site: DemoSite) -> None:
    entry = daemon.lanes["north-in"]
    assert entry.gate.check(C["valid"], entry.lane, site.now).admit
    rewrite(site, f"ids = [{demo_data.EVENT_ID}]", f"ids = [{demo_data.OTHER_EVENT_ID}]")
    rewrite(site, "[store]\n", "[store]\nfail_closed = false\n")
    daemon.reload()
    for name, runner in daemon.lanes.items():
        assert runner.gate.config.event_ids == [demo_data.OTHER_EVENT_ID], name
        assert runner.gate.config.store["fail_closed"] is False, name
    assert daemon.lanes["north-in"] is entry  # not restarted: its own section is unchanged
    refused = entry.gate.check(C["valid"], entry.lane, site.now)
    assert (refused.admit, refused.detail) == (False, "wrongEvent")


def test_a_key_read_only_at_start_refuses_the_whole_reload(
        daemon: Daemon, site: DemoSite, caplog: pytest.LogCaptureFixture) -> None:
    before = daemon.config
    runners = dict(daemon.lanes)
    rewrite(site, f"ids = [{demo_data.EVENT_ID}]", f"ids = [{demo_data.OTHER_EVENT_ID}]")
    rewrite(site, 'name = "north-out"\n', 'name = "north-out"\ngrace_minutes = 5\n')
    rewrite(site, "[store]\n", "[sync]\nupload_interval_s = 3\n\n[store]\n")
    with caplog.at_level(logging.ERROR):
        daemon.reload()
    assert "sync.upload_interval_s" in caplog.text and "restart" in caplog.text
    assert daemon.config is before  # nothing of the fresh file is in force anywhere
    assert daemon.lanes == runners
    assert all(r.gate.config is before for r in daemon.lanes.values())
    assert daemon.lanes["north-out"].lane.grace_minutes == 0


def test_plan_names_every_change() -> None:
    old = parse_config({"lanes": [{"name": "a"}, {"name": "b"}]}, "c.toml")
    fresh = parse_config({"events": {"ids": [1]}, "store": {"fail_closed": False},
                          "api": {"base_url": "https://example.invalid/v1"},
                          "lanes": [{"name": "a"}, {"name": "c"}]}, "c.toml")
    plan = plan_reload(old, fresh, {lane.name: lane for lane in old.lanes}, fresh.lanes)
    assert plan.needs_restart == ("api.base_url",)
    assert set(plan.changed) == {"api.base_url", "events.ids", "store.fail_closed", "lanes.b",
                                 "lanes.c"}
    assert plan.stop_lanes == ("b",) and [lane.name for lane in plan.start_lanes] == ["c"]
    assert plan.refused and "api.base_url" in plan.refused
    same = plan_reload(old, old, {lane.name: lane for lane in old.lanes}, old.lanes)
    assert same.refused is None and same.changed == () and not same.start_lanes
    moved = replace(old.lanes[0], grace_minutes=3)
    assert plan_reload(old, old, {"a": moved, "b": old.lanes[1]}, old.lanes).stop_lanes == ("a",)


def test_the_example_config_reloads_onto_itself() -> None:
    """No key of a running daemon's own file counts as changed."""
    config = load_config(PROJECT_ROOT / "config.example.toml")
    again = load_config(PROJECT_ROOT / "config.example.toml")
    assert plan_reload(config, again, {lane.name: lane for lane in config.lanes},
                       again.lanes).changed == ()
