"""Issue 17 on the command line (real subprocesses): testing and pairing a passage input, and
`gate-agent release` without a daemon (one pulse, journaled with who asked)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from drivers.inputs import send_input
from tests.rigs import wait_until

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[store]\ndir = "{tmp_path / "state"}"\n\n[[lanes]]\nname = "entry"\n'
                    f'relay = "sim:rel?log={tmp_path / "pulses.jsonl"}"\n')
    return path


def test_devices_test_an_input_waits_for_a_pulse(tmp_path: Path) -> None:
    sock = tmp_path / "pass.sock"
    url = f"sim:pass?socket={sock}"

    def pulse() -> None:
        wait_until(sock.exists, 20, "the input's socket")
        send_input(sock, "pulse")

    threading.Thread(target=pulse, daemon=True).start()
    res = run("devices", "test", url, "--role", "input", "--timeout", "20")
    assert res.returncode == 0, res.stderr
    assert "pulse seen" in res.stdout
    res = run("devices", "test", "sim:quiet", "--role", "input", "--timeout", "0.3")
    assert res.returncode == 1 and "no pulse on sim:quiet" in res.stderr


def test_pairing_a_passage_input_and_a_light(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    for url, role in (("sim:pin", "passage_in"), ("sim:green", "light_green")):
        res = run("devices", "pair", "entry", url, "--role", role, "--config", str(config))
        assert res.returncode == 0, res.stderr
    shown = json.loads(run("devices", "show", "--json", "--config", str(config)).stdout)
    (lane,) = shown["lanes"]
    assert lane["passage_in"] == {"url": "sim:pin", "source": "paired"}
    assert lane["light_green"] == {"url": "sim:green", "source": "paired"}
    assert lane["relay"]["source"] == "config"


def test_pairing_the_emergency_input_for_every_lane(tmp_path: Path) -> None:
    """Gap 2 of issue 17: the fire panel's contact paired like the other inputs, kept beside
    the lanes' pairings in devices.json, shown, and unpaired back to [device]'s."""
    config = write_config(tmp_path)
    config.write_text(config.read_text() + '\n[device]\nemergency_input = "sim:panel"\n')
    res = run("devices", "pair", "sim:fire", "--role", "emergency", "--config", str(config))
    assert res.returncode == 0, res.stderr
    assert "as the emergency input for every lane" in res.stdout
    res = run("devices", "pair", "entry", "sim:pin", "--role", "passage_in",
              "--config", str(config))
    assert res.returncode == 0, res.stderr  # a lane's pairing keeps the device's
    res = run("devices", "pair", "entry", "sim:fire2", "--role", "emergency",
              "--config", str(config))
    assert res.returncode == 2 and "pair it without a lane" in res.stderr
    shown = json.loads(run("devices", "show", "--json", "--config", str(config)).stdout)
    assert shown["device"] == {"emergency_input": {"url": "sim:fire", "source": "paired"}}
    assert shown["lanes"][0]["passage_in"] == {"url": "sim:pin", "source": "paired"}
    table = run("devices", "show", "--config", str(config)).stdout
    assert "emergency_input" in table and "sim:fire" in table
    assert run("devices", "unpair", "sim:fire", "--config", str(config)).returncode == 0
    shown = json.loads(run("devices", "show", "--json", "--config", str(config)).stdout)
    assert shown["device"] == {"emergency_input": {"url": "sim:panel", "source": "config"}}
    assert shown["lanes"][0]["passage_in"]["url"] == "sim:pin"
    res = run("devices", "test", "sim:quiet", "--role", "emergency", "--timeout", "0.3")
    assert res.returncode == 1 and "no pulse on sim:quiet" in res.stderr


def test_release_without_a_daemon_is_one_pulse_journaled_with_who(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    res = run("release", "entry", "--by", "J. Smith", "--json", "--config", str(config))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["action"] == "manual_pulse"
    pulses = [json.loads(x) for x in (tmp_path / "pulses.jsonl").read_text().splitlines()]
    assert [p["relay"] for p in pulses] == ["rel"]
    db = sqlite3.connect(tmp_path / "state" / "journal.db")
    try:
        assert db.execute("SELECT lane, kind, by FROM lane_events").fetchall() == \
            [("entry", "manual_pulse", "J. Smith")]
    finally:
        db.close()
    held = run("release", "entry", "--hold", "--config", str(config))
    assert held.returncode == 2 and "needs the running daemon" in held.stderr
    listed = run("release", "--events", "--json", "--config", str(config))
    assert [e["by"] for e in json.loads(listed.stdout)] == ["J. Smith"]
