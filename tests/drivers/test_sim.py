"""The sim driver's out-of-process hooks: scans in through a Unix socket, pulses out to a file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from drivers import open_output, open_reader
from drivers.sim import send_scan, sim_inject, sim_relay
from tests.drivers.conftest import Recorder, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_inject_without_a_running_reader_reaches_nobody() -> None:
    assert sim_inject("nobody", "X") == 0


def test_socket_lines_become_scans_and_the_socket_is_removed_on_stop(tmp_path: Path) -> None:
    sock = tmp_path / "sim.sock"
    reader = open_reader(f"sim:ext?socket={sock}")
    rec = Recorder()
    reader.start(rec.on_scan, rec.on_state)
    try:
        assert rec.wait(lambda: reader.connected) and sock.is_socket()
        send_scan(sock, "TICKET-1")
        send_scan(sock, "TICKET-2\nTICKET-3")
        assert rec.wait(lambda: len(rec.scans) == 3)
    finally:
        reader.stop()
    assert rec.codes() == ["TICKET-1", "TICKET-2", "TICKET-3"]
    assert not sock.exists()


def test_relay_log_records_each_pulse(tmp_path: Path) -> None:
    log = tmp_path / "pulses.jsonl"
    out = open_output(f"sim:gate?log={log}")
    out.pulse(40)
    out.pulse(60)
    out.feedback(True)
    out.close()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(x["relay"], x["ms"]) for x in lines] == [("gate", 40), ("gate", 60)]
    assert lines[0]["wall"].endswith("Z")
    assert sim_relay("gate").feedback == [True]
    assert sim_relay("gate").state is False


def test_another_process_is_driven_through_socket_and_log(tmp_path: Path) -> None:
    """What an e2e test of the daemon does: inject from outside, see the relay from outside."""
    sock, log = tmp_path / "s.sock", tmp_path / "p.jsonl"
    script = textwrap.dedent(f"""
        import queue
        from drivers import open_output, open_reader
        scans = queue.Queue()
        reader = open_reader("sim:l1?socket={sock}")
        relay = open_output("sim:l1?log={log}")
        reader.start(scans.put)
        scan = scans.get(timeout=10)
        relay.pulse(25 if scan.code == "OPEN-ME" else 1)
        relay.close(); reader.stop()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        assert wait_until(sock.is_socket, timeout=10)
        started = time.monotonic()
        send_scan(sock, "OPEN-ME")
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
    finally:
        proc.kill()
    assert json.loads(log.read_text())["ms"] == 25
