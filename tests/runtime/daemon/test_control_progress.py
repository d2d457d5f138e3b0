"""`gate-agent sync` beside a running daemon: the daemon syncs, and its progress (items applied,
pages, requests per event pass) streams back over the control socket while it works, so the
command shows the same progress bar as when it syncs itself. Real daemon, real socket, the
sandbox on loopback; what is checked is the progress that arrives, not its rendering."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from agent import demo_data
from agent.config import load_config
from agent.runtime.control import socket_path
from agent.runtime.controlclient import ControlClient
from tests.conftest import run_cli
from tests.runtime.daemon.conftest import Site, wait_synced

pytestmark = pytest.mark.e2e


def test_sync_through_the_daemon_streams_its_progress(site: Site) -> None:
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        wait_synced(daemon)
        assert daemon.proc is not None
        config = load_config(str(site.config))
        client = ControlClient(socket_path(config), daemon.proc.pid,
                               config.control["answer_timeout_s"])
        updates: list[dict[str, Any]] = []
        result = client.call("sync", on_progress=updates.append, full=True, events=[])
        assert result["mode"] == "full" and result["requests"] >= 1
        full = [u for u in updates if u["phase"] == "full" and u["event_id"] == demo_data.EVENT_ID]
        assert full, updates
        cached = {e["id"]: e["items"] for e in result["events"]}
        last = full[-1]
        assert 1 <= last["requests"] <= result["requests"]  # this command's, not the daemon's
        assert last["items"] == cached[demo_data.EVENT_ID] > 0 and last["pages"] >= 1
        assert [u["items"] for u in full] == sorted(u["items"] for u in full)  # as it went
        assert {u["phase"] for u in updates} <= {"events", "zones", "tickets", "full",
                                                  "swapping", "idle"}
        # a request that asks for no progress gets the one answer line, as before
        plain = client.call("sync", full=False, events=[demo_data.EVENT_ID])
        assert plain["mode"] == "delta"
        # the command: the passes it was told about are in its summary (items applied)
        out = run_cli("sync", "--full", "--json", "--config", str(site.config))
        assert out.returncode == 0, out.stderr
        # (only this command's passes: its listing, then its catch-up delta)
        passes = {p["event"]: p for p in json.loads(out.stdout)["passes"] if p["mode"] == "full"}
        assert passes[demo_data.EVENT_ID]["items"] == cached[demo_data.EVENT_ID], passes
        daemon.wait_for(lambda r: "control: sync requested" in r.get("msg", ""), 5, "via daemon")
        _a_delta_beside_a_full_resync(site, client)
    finally:
        assert daemon.stop() == 0


def _a_delta_beside_a_full_resync(site: Site, client: ControlClient) -> None:
    """A technician's `sync` while the daemon rebuilds its cache (agent.platform.sync): answered
    while the rebuild still lists, with its own pass only, and the lanes decide on its change
    at once, not after the rebuild. The rebuild's command sees none of the delta's reports."""
    site.sandbox.set_faults(async_delay_s=3.0)  # the rebuild's listing page: 3 s
    rebuild_updates: list[dict[str, Any]] = []
    rebuilt: list[dict[str, Any]] = []
    rebuild = threading.Thread(target=lambda: rebuilt.append(client.call(
        "sync", on_progress=rebuild_updates.append, full=True, events=[])))
    rebuild.start()
    try:
        deadline = time.monotonic() + 20
        while not any(u["phase"] == "full" for u in rebuild_updates):
            assert time.monotonic() < deadline and rebuild.is_alive(), rebuild_updates
            time.sleep(0.02)
        site.sandbox.change_item(demo_data.CODES["valid2"], "refunded")
        delta_updates: list[dict[str, Any]] = []
        delta = client.call("sync", on_progress=delta_updates.append, full=False,
                            events=[demo_data.EVENT_ID])
        assert rebuild.is_alive()  # answered while the rebuild lists
        assert delta["mode"] == "delta" and delta["applied"] >= 1
        assert {u["phase"] for u in delta_updates} <= {"events", "zones", "tickets", "idle"}
        decided = client.call("check", code=demo_data.CODES["valid2"])
        assert decided["statusDetail"] == "refunded", decided
    finally:
        rebuild.join(30)
    assert rebuilt and rebuilt[0]["mode"] == "full", rebuilt
    assert {u["phase"] for u in rebuild_updates} >= {"full", "swapping"}
    assert not any(u["phase"] == "tickets" and u["started"] in {
        d["started"] for d in delta_updates} for u in rebuild_updates)
