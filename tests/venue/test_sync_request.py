"""`gate-agent sync` on a gate in venue mode asks the venue leader for the pass (one owner of the
company's API budget) and then holds the pass from the catalog stream.

Real parts: a nats-server, the sandbox (real HTTP, 60 requests/min), the leader as a real
`VenueRole` process (role_child.py), and the member gate's `gate-agent sync` as a real CLI
subprocess whose `api.base_url` points at a closed port: any platform request of its own would
fail the command, so what reached the platform came from the leader."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.errors import GateAgentError
from agent.sandbox.harness import Sandbox, start_sandbox
from agent.store.journal import Journal
from agent.venue import passrequest
from agent.venue.node import NodeProcess
from tests.conftest import run_cli
from tests.platform.sync.conftest import (
    EVENT,
    Site,
    backlog,
    expected_ids,
    fill_journal,
    make_site,
    uploaded_uuids,
)

CHILD = Path(__file__).with_name("role_child.py")
TICKETS = 300
DEAD_PLATFORM = "http://127.0.0.1:9"  # discard port: nothing listens, a request fails at once


def _extra(node: NodeProcess, venue: str, device: str, leader: bool) -> str:
    return f"""
[sync]
delta_interval_s = 3600

[venue]
name = "{venue}"
servers = ["{node.url}"]
device = "{device}"
lease_ttl_s = 2
leader = {str(leader).lower()}
"""


def _wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _item(site: Site, item_id: int) -> dict[str, Any] | None:
    if not site.cache_path.exists():
        return None
    conn = sqlite3.connect(site.cache_path)
    try:
        row = conn.execute("SELECT raw FROM items WHERE event_id = ? AND id = ?",
                           (EVENT, item_id)).fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return orjson.loads(row[0]) if row else None


class Leader:
    def __init__(self, site: Site):
        self.site = site
        self.proc = subprocess.Popen([sys.executable, str(CHILD), str(site.config_path)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "READY"

    def leads(self) -> bool:
        try:
            status = json.loads((self.site.config.store_dir / "role-status.json").read_text())
        except (OSError, ValueError):
            return False
        return bool(status.get("this_device_leads"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with start_sandbox(tickets=TICKETS, async_delay_s=0.02, rpm=60) as sb:
        yield sb


@pytest.fixture
def venue(tmp_path: Path, sandbox: Sandbox, shared_venue_node: NodeProcess
          ) -> Iterator[tuple[Leader, Site]]:
    name = f"s{os.getpid()}x{int(time.time() * 1000) % 100000}"
    lead_site = make_site(tmp_path / "lead", sandbox, name="lead",
                          extra=_extra(shared_venue_node, name, "lead", leader=True))
    member = make_site(tmp_path / "gate", sandbox, name="gate",
                       extra=_extra(shared_venue_node, name, "gate", leader=False))
    member.config_path.write_text(member.config_path.read_text(encoding="utf-8").replace(
        sandbox.url, DEAD_PLATFORM), encoding="utf-8")
    lead_site.config.store_dir.mkdir(parents=True, exist_ok=True)
    leader = Leader(lead_site)
    try:
        _wait(leader.leads, 30, "the leader's lease")
        _wait(lambda: _item(lead_site, max(expected_ids(TICKETS))), 60, "the leader's first pass")
        yield leader, member
    finally:
        leader.stop()


def _sync(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("sync", "--json", "--config", str(site.config_path), *args, timeout=120)


@pytest.mark.e2e
@pytest.mark.slow
def test_sync_on_a_venue_gate_is_run_by_the_leader_and_reaches_the_gate_from_the_bus(
        venue: tuple[Leader, Site], sandbox: Sandbox) -> None:
    leader, member = venue
    listed = sandbox.received()["perEndpoint"].get("GET /entry/tickets", 0)
    # a change on the platform after the leader's last pass (its next delta is an hour away)
    changed = sandbox.change_item("SF0000042", "cancelled")
    first = _sync(member)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["leader"] == "lead" and result["mode"] == "delta"
    assert result["requests"] >= 1  # spent by the leader: this gate cannot reach the platform
    assert sandbox.received()["perEndpoint"].get("GET /entry/tickets", 0) > listed
    # without a daemon the command applied the catalog itself: every item, and the change
    cached = {e["id"]: e["items"] for e in result["events"]}
    assert cached[EVENT] == len(expected_ids(TICKETS))
    item = _item(member, changed["id"])
    assert item is not None and item["variable"]["status"] == "cancelled"
    assert [p["event"] for p in result["passes"]] == [EVENT]

    refused = _sync(member, "--event", "999")
    assert refused.returncode == 1
    assert "999" in refused.stderr and "not served" in refused.stderr


@pytest.mark.e2e
def test_upload_on_a_venue_gate_hands_its_scans_to_the_bus_and_the_leader_uploads_them(
        venue: tuple[Leader, Site], sandbox: Sandbox) -> None:
    _leader, member = venue
    member.config.store_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(member.config.store_dir / "journal.db")
    rows = backlog(7, datetime.now(UTC).replace(microsecond=0))
    fill_journal(journal, rows)
    journal.close()
    answer = run_cli("upload", "--drain", "--json", "--config", str(member.config_path))
    assert answer.returncode == 0, answer.stderr
    outcome = json.loads(answer.stdout)
    assert (outcome["venue"], outcome["handed"], outcome["pending"]) == (True, 7, 0)
    assert outcome["requests"] == 0  # this gate cannot reach the platform anyway
    want = {r.uuid for r in rows}
    _wait(lambda: want <= set(uploaded_uuids(sandbox)), 60, "the leader's upload")


@pytest.mark.e2e
@pytest.mark.slow
def test_sync_with_no_venue_leader_says_so_at_once_and_never_calls_the_platform(
        venue: tuple[Leader, Site], sandbox: Sandbox) -> None:
    leader, member = venue
    leader.stop()  # it releases its lease on the way out; no other device may lead
    received = sandbox.received()["perEndpoint"]
    started = time.monotonic()
    answer = _sync(member)
    assert answer.returncode == 1
    assert "no venue leader answers" in answer.stderr, answer.stderr
    assert time.monotonic() - started < 30  # "no responders", not a 10-minute wait
    assert sandbox.received()["perEndpoint"] == received


def test_sync_requests_are_read_strictly() -> None:
    ok = passrequest.decode_request(passrequest.encode_request(True, [1001], "gate"))
    assert (ok.full, ok.events, ok.device) == (True, (1001,), "gate")
    for bad, why in ((b"{", "not JSON"), (b"[]", "not a JSON object"),
                     (b'{"full": 1}', "`full`"), (b'{"full": "yes"}', "`full`"),
                     (b'{"full": false, "events": [true]}', "`events`"),
                     (b'{"full": false, "events": [0]}', "`events`"),
                     (b'{"full": false, "events": "1001"}', "`events`"),
                     (b'{"full": false, "device": 3}', "`device`")):
        with pytest.raises(passrequest.BadRequest, match=why):
            passrequest.decode_request(bad)


def test_a_leader_answer_that_cannot_be_read_is_never_taken_as_a_done_pass() -> None:
    good = {"ok": True, "leader": "lead", "mode": "delta", "applied": 3, "requests": 2,
            "catalog_seq": 40}
    assert passrequest.decode_answer(orjson.dumps(good))["catalog_seq"] == 40
    for bad in (b"nope", b"[]", orjson.dumps({**good, "ok": "yes"}),
                orjson.dumps({k: v for k, v in good.items() if k != "catalog_seq"}),
                orjson.dumps({**good, "catalog_seq": "40"}),
                orjson.dumps({"ok": False, "leader": "lead", "error": "NotLeader: gone"})):
        with pytest.raises(GateAgentError):
            passrequest.decode_answer(bad)
