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
SYSUSERS = PROJECT_ROOT / "systemd" / "gate-agent.sysusers"
UDEV_RULE = PROJECT_ROOT / "systemd" / "60-gate-agent-gpio.rules"
DEVICE_GROUPS = {"dialout", "plugdev", "input", "gpio"}  # serial, libusb, evdev, gpiochip
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
                 "SetCredential=gate-agent-token:",
                 "ProtectSystem=strict", "NoNewPrivileges=yes", "ProtectHome=yes",
                 "PrivateTmp=yes", "RestrictAddressFamilies=", "SystemCallFilter=@system-service",
                 "CapabilityBoundingSet=\n", "UMask=0077", "StateDirectory=gate-agent",
                 "ConfigurationDirectory=gate-agent", "User=gate-agent"):
        assert line in text, line
    assert "PrivateDevices" not in text  # it would hide the readers


def _unit_lines(key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines()
            if line.startswith(f"{key}=")]


def test_every_loaded_credential_has_a_default() -> None:
    """systemd fails the start at step CREDENTIALS when a LoadCredential= file is missing (an
    offline gate has no token); a SetCredential= of the same ID is the default instead."""
    loaded = {value.split(":", 1)[0] for value in _unit_lines("LoadCredential")}
    defaults = {value.split(":", 1)[0] for value in _unit_lines("SetCredential")}
    assert loaded == {"gate-agent-token"} and loaded <= defaults


def test_unit_names_no_group_a_system_may_lack() -> None:
    """A SupplementaryGroups= group that does not exist fails the start (status=216/GROUP);
    the memberships come from the sysusers file instead."""
    assert _unit_lines("SupplementaryGroups") == []


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_sysusers_makes_the_user_and_every_device_group_on_a_stock_debian(tmp_path: Path) -> None:
    """On Debian 12's groups (dialout and plugdev from base-passwd, no gpio, no input without
    udev) the sysusers file creates what is missing and makes gate-agent a member of each
    device group; the udev rule gives the GPIO chips to one of them."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:\nplugdev:x:46:\n")
    basic = [str(p) for p in (Path("/usr/lib/sysusers.d/basic.conf"),) if p.exists()]
    out = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", *basic, str(SYSUSERS)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ignoring" not in out.stderr, out.stderr  # no conflict
    users = {line.split(":")[0]: line.split(":") for line in (etc / "passwd").read_text().splitlines()}
    assert users["gate-agent"][5:] == ["/var/lib/gate-agent", "/usr/sbin/nologin"]
    members = {f[0]: (int(f[2]), f[3].split(",")) for f in
               (line.split(":") for line in (etc / "group").read_text().splitlines())}
    for group in DEVICE_GROUPS:
        assert "gate-agent" in members[group][1], group
    assert members["dialout"][0] == 20 and members["plugdev"][0] == 46  # left as they were
    rule = UDEV_RULE.read_text()
    assert re.search(r'^SUBSYSTEM=="gpio", KERNEL=="gpiochip\*", GROUP="gpio", MODE="0660"$',
                     rule, re.M), rule


@needs_analyze
def test_unit_filter_takes_chown_out_of_privileged_and_back(tmp_path: Path) -> None:
    """`[control] group` needs chown; the unit's filter allows it again after `~@privileged`
    (systemd-analyze's own reading of the unit agrees)."""
    from tests.runtime.daemon.unit_emulation import unit_syscalls

    allowed = unit_syscalls(UNIT.read_text())
    assert {"chown", "fchown", "fchownat"} <= allowed
    assert not {"mount", "setrlimit", "reboot", "init_module"} & allowed
    out = subprocess.run([ANALYZE, "security", "--offline=yes", str(_installed_unit(tmp_path))],
                         capture_output=True, text=True)
    assert "@privileged is included (e.g. chown is allowed)" in out.stdout, out.stdout


def test_daemon_with_the_units_default_credential_runs_offline(tmp_path: Path) -> None:
    """No /etc/gate-agent/token: systemd hands over the unit's SetCredential= default; the gate
    starts and says `no_token` (it is not a broken start)."""
    from agent import demo_data
    from agent.runtime.devrun import DaemonProcess

    default = _unit_lines("SetCredential")[0].split(":", 1)[1]
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "gate-agent-token").write_bytes(default.encode().decode("unicode_escape").encode())
    store = tmp_path / "state"
    config = tmp_path / "config.toml"
    config.write_text(demo_data.demo_config(store).replace(
        'base_url = "http://127.0.0.1:9/v1"', 'base_url = "http://127.0.0.1:9/v1"\n'
        f'token_file = "{tmp_path / "no-token"}"') + '\n[status]\nlisten = "127.0.0.1:0"\n')
    daemon = DaemonProcess(config, store, env={"CREDENTIALS_DIRECTORY": str(creds),
                                               "GATE_AGENT_TOKEN": ""}).start()
    try:
        daemon.wait_ready()
        codes = {r["code"] for r in daemon.status()["reasons"]}
        assert "no_token" in codes, codes
    finally:
        assert daemon.stop() == 0


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
