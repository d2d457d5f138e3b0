"""`gate-agent devices ...` run as a real subprocess (`python -m agent`), as a technician would."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drivers.relay import lcus_command
from drivers.sim import send_scan
from tests.drivers.conftest import PtyDevice, wait_until
from tests.procs import communicate_while

ROOT = Path(__file__).resolve().parents[2]
# A generous deadline, not a budget: a command that makes no headway for this long is hung. The
# scan tests' commands exit as soon as they read their scan, so it costs nothing when they pass.
STALL_S = 120


@pytest.fixture
def config(tmp_path: Path) -> Path:
    store = tmp_path / "state"
    path = tmp_path / "config.toml"
    path.write_text(f'[store]\ndir = "{store}"\n\n[[lanes]]\nname = "lane1"\n\n'
                    '[[lanes]]\nname = "lane2"\nreaders = ["sim:lane2"]\n')
    return path


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "devices", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_list_without_hardware_says_none_found_with_hints() -> None:
    res = run("list")
    assert res.returncode == 0, res.stderr
    for name in ("serial", "nfc", "hid", "gpio", "inputs"):
        assert f"{name}: none found" in res.stdout


def test_list_json_has_every_category() -> None:
    res = run("list", "--json")
    data = json.loads(res.stdout)
    assert set(data) == {"serial", "nfc", "hid", "gpio", "inputs"}
    assert all(isinstance(c["devices"], list) and c["hint"] for c in data.values())


def test_test_reader_prints_one_scan(tmp_path: Path) -> None:
    sock = tmp_path / "scan.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "devices", "test", f"sim:t?socket={sock}",
         "--timeout", str(STALL_S)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # as long as the command takes to start on a loaded machine; it exiting first fails
        assert wait_until(lambda: sock.is_socket() or proc.poll() is not None,
                          timeout=STALL_S), "no reader socket"
        assert proc.poll() is None, proc.communicate()
        send_scan(sock, "TICKET-42")
        out, err = communicate_while(proc, lambda: None, stall_s=STALL_S,
                                     what="devices test after a scan")
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "code: TICKET-42" in out and "kind: barcode" in out
    assert "raw:  54 49 43 4b 45 54 2d 34 32" in out


def test_test_reader_over_a_serial_port(pty_device: PtyDevice) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "devices", "test", f"serial://{pty_device.path}",
         "--timeout", str(STALL_S)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # keep scanning until the reader has the port open and exits with what it read (the
        # command's own --timeout ends it if it never reads one)
        while proc.poll() is None:
            with contextlib.suppress(BlockingIOError):  # a full queue while the port is shut
                pty_device.write(b"SER-1\r")
            time.sleep(0.2)
        out, err = proc.communicate()  # it has exited: this only drains its pipes
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "code: SER-1" in out


def test_test_reader_timeout_exits_1() -> None:
    res = run("test", "sim:quiet", "--timeout", "0.3")
    assert res.returncode == 1
    assert "no scan from sim:quiet within 0.3 s" in res.stderr


def test_test_missing_device_exits_2_naming_url_and_cause(tmp_path: Path) -> None:
    url = f"serial://{tmp_path}/ttyACM3"
    res = run("test", url)
    assert res.returncode == 2
    assert url in res.stderr and "No such file or directory" in res.stderr
    assert "Traceback" not in res.stderr


def test_test_relay_pulses_once(pty_device: PtyDevice) -> None:
    res = run("test", f"serialrelay://{pty_device.path}?channel=1", "--ms", "50")
    assert res.returncode == 0, res.stderr
    assert "pulsed 50 ms" in res.stdout
    sent = pty_device.read_available(1.0)
    cmds = [sent[i : i + 4] for i in range(0, len(sent), 4)]
    off, on = lcus_command(1, False), lcus_command(1, True)
    # off at open, on, then off (end of pulse and/or close): never left on
    assert cmds[:2] == [off, on] and cmds[2:] and set(cmds[2:]) == {off}, sent.hex()


def test_pair_show_unpair_round_trip(config: Path, tmp_path: Path) -> None:
    res = run("pair", "lane1", "sim:lane1", "--config", str(config))
    assert res.returncode == 0, res.stderr
    res = run("pair", "lane1", "sim:lane1?log=/dev/null", "--role", "relay", "--config", str(config))
    assert res.returncode == 0, res.stderr
    stored = json.loads((tmp_path / "state" / "devices.json").read_text())
    assert stored["lanes"]["lane1"] == {"readers": ["sim:lane1"], "relay": "sim:lane1?log=/dev/null"}

    shown = json.loads(run("show", "--json", "--config", str(config)).stdout)["lanes"]
    assert shown[0] == {"lane": "lane1", "readers": [{"url": "sim:lane1", "source": "paired"}],
                        "relay": {"url": "sim:lane1?log=/dev/null", "source": "paired"},
                        "relay_out": None}
    assert shown[1]["readers"] == [{"url": "sim:lane2", "source": "config"}]
    human = run("show", "--config", str(config)).stdout
    assert "lane1" in human and "paired" in human and "config" in human

    assert run("unpair", "lane1", "sim:lane1", "--config", str(config)).returncode == 0
    res = run("unpair", "lane1", "sim:lane1", "--config", str(config))
    assert res.returncode == 2 and "not paired" in res.stderr  # an input mistake, as --help says
    res = run("unpair", "sim:nothere", "--config", str(config))
    assert res.returncode == 2 and "not the paired emergency input" in res.stderr


def test_pair_unknown_lane_names_the_lanes(config: Path) -> None:
    res = run("pair", "lane9", "sim:x", "--config", str(config))
    assert res.returncode == 2
    assert "lane9" in res.stderr and "lane1, lane2" in res.stderr


def test_pair_validates_the_device_first(config: Path, tmp_path: Path) -> None:
    url = f"serial://{tmp_path}/ttyACM5"
    res = run("pair", "lane1", url, "--config", str(config))
    assert res.returncode == 2 and "--no-validate" in res.stderr
    assert not (tmp_path / "state" / "devices.json").exists()
    res = run("pair", "lane1", url, "--no-validate", "--config", str(config))
    assert res.returncode == 0, res.stderr
    res = run("pair", "lane1", "gpio:/dev/gpiochip0:17", "--no-validate", "--config", str(config))
    assert "as relay" in res.stdout  # role inferred from the scheme
