"""`gate-agent sync` beside a running daemon: the daemon syncs, and its progress (items applied,
pages, requests per event pass) streams back over the control socket while it works, so the
command shows the same progress bar as when it syncs itself. Real daemon, real socket, the
sandbox on loopback; what is checked is the progress that arrives, not its rendering."""

from __future__ import annotations

import json
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
        # (the daemon's own next delta pass may start before the answer: listed after it)
        passes = {p["event"]: p for p in json.loads(out.stdout)["passes"] if p["mode"] == "full"}
        assert passes[demo_data.EVENT_ID]["items"] == cached[demo_data.EVENT_ID], passes
        daemon.wait_for(lambda r: "control: sync requested" in r.get("msg", ""), 5, "via daemon")
    finally:
        assert daemon.stop() == 0
