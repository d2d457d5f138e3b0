"""The systemd unit passes systemd's own checks, and the notify protocol reaches a real socket."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.runtime.notify import Notifier, watchdog_interval
from tests.conftest import PROJECT_ROOT

UNIT = PROJECT_ROOT / "systemd" / "gate-agent.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed "
                                   "(.ci/run installs the systemd package)")


def _installed_unit(tmp_path: Path) -> Path:
    """The unit as installed: ExecStart pointing at this environment's gate-agent script."""
    script = Path(sys.executable).with_name("gate-agent")
    assert script.exists(), "gate-agent console script missing: pip install -e ."
    unit = tmp_path / "gate-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/gate-agent/bin/gate-agent", str(script)))
    return unit


@needs_analyze
def test_unit_verifies_without_any_warning(tmp_path: Path) -> None:
    unit = _installed_unit(tmp_path)
    out = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out.stdout + out.stderr


@needs_analyze
def test_unit_security_exposure_is_low(tmp_path: Path) -> None:
    unit = _installed_unit(tmp_path)
    out = subprocess.run([ANALYZE, "security", "--offline=yes", str(unit)],
                         capture_output=True, text=True)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout + out.stderr)
    assert match, out.stdout + out.stderr
    score = float(match.group(1))
    print(f"systemd-analyze security exposure: {score}")
    assert score <= 2.5


def test_unit_has_the_required_settings() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "Restart=always", "WatchdogSec=", "LoadCredential=gate-agent-token",
                 "ProtectSystem=strict", "NoNewPrivileges=yes", "ProtectHome=yes",
                 "PrivateTmp=yes", "RestrictAddressFamilies=", "SystemCallFilter=@system-service",
                 "CapabilityBoundingSet=\n", "UMask=0077", "StateDirectory=gate-agent",
                 "ConfigurationDirectory=gate-agent", "User=gate-agent"):
        assert line in text, line
    assert "PrivateDevices" not in text  # it would hide the readers


def _listener(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    return sock, path


def test_notify_datagrams_reach_the_socket(tmp_path: Path) -> None:
    sock, path = _listener(tmp_path)
    with sock:
        notifier = Notifier(path)
        assert notifier.ready("pass: 2 lane(s)")
        assert sock.recv(4096) == b"READY=1\nSTATUS=pass: 2 lane(s)"
        assert notifier.watchdog() and sock.recv(4096) == b"WATCHDOG=1"
        assert notifier.stopping() and sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_notify_abstract_socket_and_no_socket() -> None:
    name = f"gate-agent-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    with sock:
        assert Notifier("@" + name).status("hello")
        assert sock.recv(100) == b"STATUS=hello"
    assert not Notifier("").ready("x")  # outside systemd: a no-op
    assert not Notifier("/nonexistent/socket").ready("x")  # a failure is not fatal


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval() is None  # meant for another process


def test_daemon_speaks_notify_protocol_end_to_end(tmp_path: Path) -> None:
    """The real daemon under a stand-in for systemd: READY=1 with a STATUS line after start-up,
    WATCHDOG=1 while its lanes run (WATCHDOG_USEC set), STOPPING=1 on SIGTERM."""
    from agent import demo_data
    from agent.runtime.devrun import DaemonProcess

    sock, path = _listener(tmp_path)
    store = tmp_path / "state"
    config = tmp_path / "config.toml"
    config.write_text(demo_data.demo_config(store).replace(
        'base_url = "http://127.0.0.1:9/v1"', 'base_url = "http://127.0.0.1:9/v1"\n'
        f'token_file = "{tmp_path / "no-token"}"') + '\n[status]\nlisten = "127.0.0.1:0"\n')
    daemon = DaemonProcess(config, store, env={"NOTIFY_SOCKET": path,
                                               "WATCHDOG_USEC": "2000000"}).start()
    received: list[bytes] = []
    try:
        daemon.wait_ready()
        while not any(b"WATCHDOG=1" in m for m in received):
            received.append(sock.recv(4096))
        assert daemon.stop() == 0
        while not any(b"STOPPING=1" in m for m in received):
            received.append(sock.recv(4096))
    finally:
        daemon.kill()
        sock.close()
    ready = next(m for m in received if m.startswith(b"READY=1"))
    assert b"\nSTATUS=" in ready and b"lane(s)" in ready
    order = [m.split(b"\n")[0] for m in received]
    assert order.index(b"READY=1") < order.index(b"WATCHDOG=1") < order.index(b"STOPPING=1")
