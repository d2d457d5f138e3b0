"""The install as README's "Installing on a turnstile" makes it, under the unit's sandbox
(emulated: tests/runtime/daemon/unit_emulation.py): what the service cannot read or write is a
clear error naming the user, the key and the command or unit setting that fixes it, never a
traceback; the unit's own filter lets `[control] group` work.

Runs as root (CI does): the daemon is started as the service uid like systemd's `User=`, and
read-only places are made in a private mount namespace (`unshare --mount`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.access import user_name
from tests.conftest import PROJECT_ROOT
from tests.runtime.daemon import unit_emulation
from tests.runtime.daemon.test_service_control import (  # noqa: F401 - fixture
    _with_control,
    technicians,
)
from tests.runtime.daemon.test_service_user import (  # noqa: F401 - fixture
    NEEDS_SERVICE_USER,
    SERVICE_PYTHON,
    SERVICE_UID,
    Install,
    install,
)

F = TypeVar("F", bound=Callable[..., Any])
UNIT = PROJECT_ROOT / "systemd" / "gate-agent.service"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mount namespaces, "
                                "files of other users (CI runs as root)")
needs_unshare = pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare(1)")


def _marks(marks: list[pytest.MarkDecorator]) -> Callable[[F], F]:
    def apply(test: F) -> F:
        for mark in marks:
            test = mark(test)
        return test
    return apply


as_service_user = _marks(NEEDS_SERVICE_USER)


@pytest.fixture
def root_dir() -> Iterator[Path]:
    """Under /tmp, enterable by the service uid (pytest's tmp_path is in a 0700 directory)."""
    root = Path(tempfile.mkdtemp(prefix="ga-install-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _offline_config(path: Path, store: Path, extra: str = "") -> Path:
    path.write_text(f'[api]\noffline = true\n\n[store]\ndir = "{store}"\n\n'
                    f'[status]\nlisten = "127.0.0.1:0"\n{extra}\n'
                    '[[lanes]]\nname = "entry"\n')
    return path


def _run(argv: list[str], user: int | None = None, env: dict[str, str] | None = None,
         python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    as_user = {"user": user, "group": user, "extra_groups": []} if user is not None else {}
    return subprocess.run([python, "-m", "agent", *argv] if argv[0] == "run" else argv,
                          capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT,
                          env={**os.environ, **(env or {})}, **as_user)


def _refused(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    return out.stderr


@as_service_user
def test_a_config_the_service_user_cannot_read_names_the_user_and_the_fix(root_dir: Path) -> None:
    """README step 5 once made /etc/gate-agent root:root: the service looped on "cannot read:
    Permission denied". The error names the service user and the commands; typed, they work."""
    assert SERVICE_PYTHON is not None
    python, python_env = SERVICE_PYTHON
    etc = root_dir / "etc-gate-agent"
    etc.mkdir(mode=0o750)
    config = _offline_config(etc / "config.toml", root_dir / "state")
    config.chmod(0o640)
    argv = ["run", "--config", str(config)]
    message = _refused(_run(argv, SERVICE_UID, python_env, python))
    assert f"uid {SERVICE_UID}" in message and f"{etc} is root:root, mode 750" in message, message
    fix = re.search(r"\(as root\): `([^`]+)`", message)
    assert fix and fix.group(1).startswith(f"chgrp {SERVICE_UID} {etc} {config}"), message
    subprocess.run(["sh", "-c", fix.group(1)], check=True)
    read = subprocess.run([python, "-c", "import sys; from agent.config import load_config; "
                           "load_config(sys.argv[1])", str(config)], user=SERVICE_UID,
                          group=SERVICE_UID, extra_groups=[], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, env={**os.environ, **python_env}, timeout=60)
    assert read.returncode == 0, read.stderr


@as_service_user
def test_a_store_the_service_user_cannot_write_names_store_dir_and_the_chown(
        root_dir: Path) -> None:
    assert SERVICE_PYTHON is not None
    python, python_env = SERVICE_PYTHON
    store = root_dir / "state"
    store.mkdir(mode=0o700)  # made by root, not by systemd's StateDirectory=
    config = _offline_config(root_dir / "config.toml", store)
    message = _refused(_run(["run", "--config", str(config)], SERVICE_UID, python_env, python))
    assert "store.dir" in message and str(store) in message, message
    assert f"chown -R {SERVICE_UID}:{SERVICE_UID} {store}" in message, message


@needs_root
@needs_unshare
@pytest.mark.parametrize("store_exists", [True, False], ids=["store-read-only", "parent-read-only"])
def test_a_store_dir_on_a_read_only_file_system_names_read_write_paths(
        root_dir: Path, store_exists: bool) -> None:
    """Under ProtectSystem=strict a non-default store.dir is read-only (errno 30): a config
    error naming store.dir and ReadWritePaths=, not an exit 70 with a traceback."""
    outside = root_dir / "srv"
    outside.mkdir()
    store = outside / "gate-state"
    if store_exists:
        store.mkdir()
    config = _offline_config(root_dir / "config.toml", store)
    argv = unit_emulation.read_only(outside, [sys.executable, "-m", "agent", "run",
                                              "--config", str(config)])
    message = _refused(_run(argv))
    assert "store.dir" in message and "Read-only file system" not in message, message
    assert f"ReadWritePaths={store}" in message and f"install -d -o root -g root -m700 {store}" \
        in message, message


@needs_root
@needs_unshare
def test_a_control_socket_on_a_read_only_file_system_names_read_write_paths(
        root_dir: Path) -> None:
    outside = root_dir / "srv"
    outside.mkdir()
    sock = outside / "control.sock"
    config = _offline_config(root_dir / "config.toml", root_dir / "state",
                             f'\n[control]\nsocket = "{sock}"\n')
    argv = unit_emulation.read_only(outside, [sys.executable, "-m", "agent", "run",
                                              "--config", str(config)])
    message = _refused(_run(argv))
    assert "control.socket" in message and f"ReadWritePaths={outside}" in message, message
    assert not sock.exists()


@needs_root
def test_a_bad_full_resync_time_is_refused_before_anything_starts(root_dir: Path) -> None:
    """`sync.full_resync_at = "25:99"` used to be found by the scheduler, after the control
    socket was up (left behind, stale) and without the file's name."""
    config = _offline_config(root_dir / "config.toml", root_dir / "state",
                             '\n[sync]\nfull_resync_at = "25:99"\n')
    message = _refused(_run(["run", "--config", str(config)]))
    assert f"{config}: sync.full_resync_at: must be HH:MM" in message, message
    assert not (root_dir / "state" / "control.sock").exists()


@as_service_user
def test_a_root_run_in_the_foreground_on_the_services_store_is_refused(
        install: Install) -> None:  # noqa: F811
    """`sudo gate-agent run` on the service's store: refused (exit 2) before anything is
    opened, naming the store's owner and the `sudo -u` to type. It used to run, and the
    cache.db and journal.db it created in an empty store were root's: the service then refused
    every scan (journal_unavailable) until someone ran the chown."""
    before = sorted(p.name for p in install.store.iterdir())
    ran = subprocess.run([sys.executable, "-m", "agent", "run", "-c", str(install.config)],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30,
                         env={**os.environ, "GATE_AGENT_TOKEN": ""})
    assert ran.returncode == 2, ran.stderr
    assert f"belongs to {user_name(SERVICE_UID)} (uid {SERVICE_UID})" in ran.stderr
    assert f"sudo -u {user_name(SERVICE_UID)} gate-agent run -c {install.config}" in ran.stderr
    assert sorted(p.name for p in install.store.iterdir()) == before  # nothing created
    assert not any(p.stat().st_uid == 0 for p in install.store.iterdir())


under_the_filter = _marks([
    *NEEDS_SERVICE_USER,
    pytest.mark.skipif(unit_emulation.ANALYZE is None, reason="systemd-analyze not installed"),
    pytest.mark.skipif(not unit_emulation.has_seccomp(),
                       reason="no python3-seccomp in /usr/bin/python3 (apt-get install "
                              "python3-seccomp)"),
])


@pytest.mark.parametrize("unit_allows_chown", [True, False], ids=["shipped-unit", "no-@chown"])
@under_the_filter
def test_control_group_under_the_units_system_call_filter(
        install: Install, technicians: tuple[str, int],  # noqa: F811
        unit_allows_chown: bool) -> None:
    """The unit's `~@privileged` takes @chown away; its `SystemCallFilter=@chown` gives it back,
    so the socket gets the technicians' group. Without that line the error says what refused
    (the filter, errno EPERM), not "not a member of group" (it is one)."""
    name, gid = technicians
    sock = _with_control(install, name)
    unit = UNIT.read_text()
    assert "\nSystemCallFilter=@chown\n" in unit
    if not unit_allows_chown:
        unit = unit.replace("\nSystemCallFilter=@chown\n", "\n")
    daemon = install.daemon()
    daemon.python = unit_emulation.filtered_python(install.root, unit, install.python)
    daemon.groups = [gid]
    daemon.start()
    try:
        if unit_allows_chown:
            daemon.wait_ready()
            assert sock.stat().st_gid == gid
            return
        assert daemon.proc is not None
        daemon.proc.wait(30)
    finally:
        code = daemon.stop()
    errors = " ".join(r.get("msg", "") for r in daemon.records) + "".join(daemon.raw_lines)
    assert code == 2, errors
    assert "control.group" in errors and "EPERM" in errors and "SystemCallFilter=@chown" in errors
    assert "is a member" in errors and "not a member" not in errors
