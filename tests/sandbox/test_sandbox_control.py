"""The sandbox as a tool: control API guard, async-result expiry, subprocess harness, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from agent.cli import main
from agent.sandbox.app import build_app
from agent.sandbox.harness import make_state, start_sandbox_process
from tests.procs import reap


def test_control_api_needs_loopback_or_the_control_token():
    state = make_state(tickets=10)

    async def go(client_host: str, headers: dict[str, str]) -> int:
        transport = httpx.ASGITransport(app=build_app(state), client=(client_host, 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as c:
            return (await c.get("/_sandbox/received", headers=headers)).status_code

    assert asyncio.run(go("192.0.2.7", {})) == 403
    assert asyncio.run(go("192.0.2.7", {"X-Sandbox-Control": "guess"})) == 403
    assert asyncio.run(go("192.0.2.7", {"X-Sandbox-Control": state.control_token})) == 200
    assert asyncio.run(go("127.0.0.1", {})) == 200


def test_async_results_are_kept_two_hours_then_gone(sandbox):
    auth = {"Authorization": f"Bearer {sandbox.token}"}
    first = httpx.get(f"{sandbox.url}/config?async=true", headers=auth)
    assert first.status_code == 202
    key = first.json()["asyncUuid"]
    sandbox.set_faults(async_delay_s=0)
    sandbox.advance_clock(3600)
    ready = httpx.get(f"{sandbox.url}/config?asyncUuid={key}", headers=auth)
    assert ready.status_code == 200 and ready.json()["companyId"] == "1"
    sandbox.advance_clock(3700)
    gone = httpx.get(f"{sandbox.url}/config?asyncUuid={key}", headers=auth)
    assert gone.status_code == 404


@pytest.mark.e2e
def test_subprocess_harness_serves_and_stops():
    sb = start_sandbox_process(tickets=30, rpm=5)
    try:
        auth = {"Authorization": f"Bearer {sb.token}"}
        answer = httpx.get(f"{sb.url}/activated-events", headers=auth, timeout=10)
        assert answer.status_code == 200
        assert answer.headers["X-Remaining-Requests"] == "4"
        sb.change_item("SF0000005", "refunded")
        assert sb.received()["perEndpoint"] == {"GET /activated-events": 1}
    finally:
        sb.stop()


def test_cli_export_writes_the_platform_shaped_files(tmp_path, capsys):
    assert main(["sandbox", "--tickets", "12", "--export", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tickets-1001.json" in out
    body = json.loads((tmp_path / "tickets-1001.json").read_text())
    assert len(body["content"]) == 12


@pytest.mark.e2e
def test_cli_sandbox_prints_url_and_token():
    proc = subprocess.Popen([sys.executable, "-m", "agent", "sandbox", "--port", "0",
                             "--tickets", "5", "--token", "cli-token-1234"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        token_line = proc.stdout.readline()
        assert "cli-token-1234" in token_line
        for _ in range(50):
            try:
                answer = httpx.get(f"{url}/", headers={"Authorization": "Bearer cli-token-1234"})
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert answer.json()["user"]["id"] == 8
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_the_subprocess_sandbox_accepts_connections_once_it_printed_its_url(tmp_path):
    """The URL line is printed before the server runs: a client that connects at once (the
    sandbox process still busy, here stopped with SIGSTOP) is queued by the kernel, not
    refused, and answered once the server runs."""
    proc = subprocess.Popen([sys.executable, "-m", "agent.sandbox.harness", "--tickets", "5"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGSTOP)  # nothing in it runs from here
        try:
            port = int(info["url"].rsplit(":", 1)[1].split("/")[0])
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        answer = httpx.get(f"{info['url']}/activated-events", timeout=30,
                           headers={"Authorization": f"Bearer {info['token']}"})
        assert answer.status_code == 200
    finally:
        reap(proc)


def test_an_unlisted_item_is_in_no_listing_until_listed_again(sandbox):
    """`list_item(barcode, False)`, as the platform stops listing a ticket (its order
    cancelled): gone from full and delta listings, the full listing's total one less; listed
    again, it is a change the next delta names."""
    auth = {"Authorization": f"Bearer {sandbox.token}"}

    def listing(**params: str) -> dict:
        answer = httpx.get(f"{sandbox.url}/entry/tickets", headers=auth, timeout=10,
                           params={"eventId": "1001", "limit": "100", **params})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def barcodes(body: dict) -> list[str]:
        return [item["const"]["barcode"] for item in body["content"]]

    before = listing()
    assert "SF0000005" in barcodes(before)
    sandbox.change_item("SF0000006", "refunded")  # a change, listed in deltas
    since = before["listEndTime"]
    assert sandbox.list_item("SF0000005", False)["listed"] is False
    after = listing()
    assert "SF0000005" not in barcodes(after) and after["total"] == before["total"] - 1
    assert barcodes(listing(startTime=since)) == ["SF0000006"]
    assert sandbox.list_item("SF0000005", True)["listed"] is True
    assert barcodes(listing(startTime=since)) == ["SF0000005", "SF0000006"]
    assert listing()["total"] == before["total"]
