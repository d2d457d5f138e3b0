"""The service-user install (tests/runtime/daemon/test_service_user.py) seen from the control
socket and SIGHUP: the socket's mode and group decide who may drive the daemon, and a reload
that finds `devices.json` unreadable keeps the lanes running as they are.

A technicians' group is created for the test (`groupadd --system`, removed afterwards): the
kernel checks the socket file's mode against real uids and groups, so the processes on both
sides run with those credentials (root only sets them up).
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import demo_data
from drivers.sim import send_scan
from tests.conftest import PROJECT_ROOT
from tests.rigs import wait_until
from tests.runtime.daemon.test_service_user import (  # noqa: F401 - fixture
    NEEDS_SERVICE_USER,
    SERVICE_UID,
    Install,
    _reader,
    install,
)

pytestmark = [pytest.mark.e2e, *NEEDS_SERVICE_USER]

TECHNICIAN_UID = 4343  # in the technicians' group
VISITOR_UID = 4344  # not in it
C = demo_data.CODES

CONNECT = ("import socket, sys\n"
           "s = socket.socket(socket.AF_UNIX)\n"
           "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(13)\n")


@pytest.fixture
def technicians() -> Iterator[tuple[str, int]]:
    name = f"gatetech{uuid.uuid4().hex[:6]}"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    try:
        import grp
        yield name, grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], capture_output=True)


def _with_control(site: Install, group: str) -> Path:
    """The socket in a RuntimeDirectory-like folder others may enter (store.dir is 0700)."""
    run_dir = site.root / "run"
    run_dir.mkdir(mode=0o755)
    os.chown(run_dir, SERVICE_UID, SERVICE_UID)
    sock = run_dir / "control.sock"
    site.config.write_text(site.config.read_text() +
                           f'\n[control]\nsocket = "{sock}"\ngroup = "{group}"\n')
    return sock


def _connects(site: Install, sock: Path, uid: int, groups: list[int]) -> int:
    return subprocess.run([site.python, "-c", CONNECT, str(sock)], user=uid, group=uid,
                          extra_groups=groups, capture_output=True, cwd="/",
                          env={**os.environ, **site.python_env}, timeout=30).returncode


def test_control_socket_is_0660_in_the_technicians_group(
        install: Install, technicians: tuple[str, int]) -> None:  # noqa: F811
    name, gid = technicians
    sock = _with_control(install, name)
    daemon = install.daemon()
    daemon.groups = [gid]  # SupplementaryGroups=<the technicians' group>
    daemon.start()
    try:
        daemon.wait_ready()
        info = sock.stat()
        assert (info.st_mode & 0o777, info.st_uid, info.st_gid) == (0o660, SERVICE_UID, gid)
        assert _connects(install, sock, TECHNICIAN_UID, [gid]) == 0
        assert _connects(install, sock, VISITOR_UID, []) == 13  # EACCES from the kernel
    finally:
        assert daemon.stop() == 0


def test_a_group_the_service_user_is_not_in_is_a_clear_config_error(
        install: Install, technicians: tuple[str, int]) -> None:  # noqa: F811
    name, _gid = technicians
    _with_control(install, name)
    daemon = install.daemon().start()  # no SupplementaryGroups: it cannot chown to the group
    assert daemon.proc is not None
    try:
        daemon.proc.wait(30)  # it exits by itself
    finally:
        code = daemon.stop()
    errors = " ".join(r.get("msg", "") for r in daemon.records) + "".join(daemon.raw_lines)
    assert code == 2, errors
    assert "control.group" in errors and f"SupplementaryGroups={name}" in errors
    assert "Traceback" not in errors


def test_sighup_with_an_unreadable_devices_json_keeps_the_running_bindings(
        install: Install) -> None:  # noqa: F811
    paired = subprocess.run(
        [install.python, "-m", "agent", "devices", "pair", "entry", _reader(install),
         "--no-validate", "--config", str(install.config)],
        capture_output=True, text=True, cwd=PROJECT_ROOT, env={**os.environ, **install.python_env})
    assert paired.returncode == 0, paired.stderr
    devices = install.store / "devices.json"
    daemon = install.daemon().start()
    try:
        daemon.wait_ready()
        assert daemon.status()["lanes"][0]["readers_connected"] == 1
        os.chown(devices, 0, 0)  # what an older `sudo gate-agent devices pair` left
        devices.chmod(0o600)
        daemon.signal(signal.SIGHUP)
        error = daemon.wait_for(lambda r: "paired devices not reloaded" in r.get("msg", ""),
                                10, "the reload's error")
        assert str(devices) in error["msg"] and "chown" in error["msg"]
        daemon.wait_for(lambda r: "configuration reloaded" in r.get("msg", ""), 10, "reload")
        report = daemon.status()
        reasons = {r["code"]: r["message"] for r in report["reasons"]}
        assert "chown" in reasons["pairings_unreadable"]
        assert report["lanes"][0]["readers_connected"] == 1  # the paired reader still runs
        send_scan(install.root / "dev" / "entry.sock", C["valid"])
        wait_until(lambda: daemon.decisions(), 10, "a scan on the paired reader")
        # fixed and reloaded again: the reason goes away
        os.chown(devices, SERVICE_UID, SERVICE_UID)
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: "pairings_unreadable" not in
                   {r["code"] for r in daemon.status()["reasons"]}, 10, "reason cleared")
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        assert daemon.stop() == 0
