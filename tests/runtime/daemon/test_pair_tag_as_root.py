"""`sudo gate-agent pair-tag` with no daemon running, on a real install's store (the service
user's, 0700): the session pairs and admits on the store as its owner, so every file it makes
there (cache, journal, their -wal/-shm) is the service's, 0600, and the daemon started after it
opens them all; yet its readers stay root's: a scanner whose cable is pulled and plugged back
mid-session (a device node only root may open, as a pty is) is reopened with root's rights,
not the service user's. CI runs as root (see test_service_user.py).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent import demo_data
from agent.runtime.devrun import DaemonProcess
from drivers.sim import send_scan
from tests.rigs import PtyDevice, wait_until
from tests.runtime.daemon.conftest import wait_synced
from tests.runtime.daemon.test_service_user import (  # noqa: F401 - fixture
    NEEDS_SERVICE_USER,
    SERVICE_UID,
    Install,
    install,
)
from tests.runtime.pairing.conftest import TAG_A, TAG_B, PairTagProcess, platform_tag

pytestmark = [pytest.mark.e2e, *NEEDS_SERVICE_USER]

C = demo_data.CODES


def _holds(pid: int, device: str) -> bool:
    """Whether process `pid` has `device` open (the scanner's pts, after a replug)."""
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            if os.readlink(fd) == device:
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def _store_files(site: Install) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_uid, stat.S_IMODE(p.stat().st_mode))
            for p in site.store.iterdir()}


def _all_the_services(site: Install, made: frozenset[str] = frozenset({"cache.db", "journal.db"})
                      ) -> None:
    """Every file in store.dir the service user's and private (daemon.lock: 0644 on purpose);
    `made`, at least, there."""
    files = _store_files(site)
    assert made <= set(files), files
    assert {uid for uid, _ in files.values()} == {SERVICE_UID}, files
    assert {name for name, (_, mode) in files.items() if mode != 0o600} <= {"daemon.lock"}, \
        files


@contextmanager
def _the_service_on_it(site: Install) -> Iterator[DaemonProcess]:
    """The service started on what root's session left: it syncs, and finds every store file
    its own (none of the reasons a root-owned file gives)."""
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        wait_synced(daemon)
        reasons = {r["code"] for r in daemon.status()["reasons"]}
        assert not reasons & {"journal_unavailable", "cache_unreadable", "cache_rebuilding"}, \
            reasons
        yield daemon
    finally:
        assert daemon.stop() == 0


def test_root_pair_tag_without_a_daemon_leaves_the_store_to_the_service_and_its_readers_root(
        install: Install) -> None:  # noqa: F811
    synced = install.cli("sync", "--json")  # as root: the cache made as the store's owner
    assert synced.returncode == 0, synced.stderr
    station = install.root / "station"  # root's devices: only root may open them
    station.mkdir(mode=0o700)
    tags = station / "tag.sock"
    scanner = PtyDevice(station)  # a pts is root's and 0620: the service user cannot open it
    pts = Path(os.readlink(scanner.link)).stat()
    assert pts.st_uid == 0 and not pts.st_mode & 0o006, oct(pts.st_mode)
    run = PairTagProcess(
        [install.python, "-m", "agent", "pair-tag", "--config", str(install.config),
         "--reader", f"sim:tag?socket={tags}", "--scanner", f"serial://{scanner.path}",
         "--admit"],
        {**os.environ, "GATE_AGENT_TOKEN": "", **install.python_env})
    try:
        run.wait_line("next attendee")
        wait_until(lambda: _holds(run.proc.pid, os.readlink(scanner.link)), 60,
                   "the scanner opened")
        scanner.write(C["valid"].encode() + b"\r\n")
        run.wait_line("present the tag")
        send_scan(tags, TAG_A)
        assert f"ADMIT in  {TAG_A}  valid" in run.wait_line("ADMIT")
        _all_the_services(install)  # while the session still runs, too
        # the scanner's cable pulled and plugged back: reopened as root, mid-session
        scanner.unplug()
        scanner.replug()
        wait_until(lambda: _holds(run.proc.pid, os.readlink(scanner.link)), 60,
                   "the scanner reopened after its replug")
        scanner.write(C["valid2"].encode() + b"\r\n")
        run.wait_line("present the tag", count=2)
        send_scan(tags, TAG_B)
        assert f"ADMIT in  {TAG_B}  valid" in run.wait_line("ADMIT", count=2)
        run.wait_line("next attendee", count=3)
        run.proc.send_signal(signal.SIGINT)
        code, out, err = run.finish()
    finally:
        run.close()
        scanner.unplug()
    assert code == 0, (out, err)
    assert "pairing station closed: 2 paired, 0 not" in out
    assert "cannot open" not in err and "Traceback" not in err, err
    assert platform_tag(install.sandbox, C["valid"]) == TAG_A
    assert platform_tag(install.sandbox, C["valid2"]) == TAG_B
    _all_the_services(install)
    # the service starts on what the session left and decides on it: both admits are its own
    with _the_service_on_it(install):
        for tag in (TAG_A, TAG_B):
            again = install.cli("check", tag, "--json")
            assert again.returncode == 1, (again.stdout, again.stderr)
            assert json.loads(again.stdout)["status"] == "alreadyIn"
    _all_the_services(install)


def _pair_tag_as_root(site: Install, monkeypatch: pytest.MonkeyPatch
                      ) -> subprocess.CompletedProcess[str]:
    """`sudo gate-agent pair-tag` with no daemon, on a machine whose service user is the
    test's uid (GATE_AGENT_SERVICE_USER: the unit's User=, here a bare uid); no tag comes."""
    monkeypatch.setenv("GATE_AGENT_SERVICE_USER", str(SERVICE_UID))
    return site.cli("pair-tag", C["valid"], "--reader",
                    f"sim:tag?socket={site.root / 'dev' / 'tag.sock'}", "--timeout", "0.5")


def test_root_pair_tag_on_a_store_dir_not_made_yet_makes_it_the_services(
        install: Install, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """store.dir missing (before the service's first start): root's pair-tag used to make it,
    and the cache and journal in it, root's — the service then could not even enter it. Now
    it is made as systemd's StateDirectory= would (the service's, 0700) and worked in as its
    owner, and the service starts on what the session left."""
    install.store.rmdir()
    done = _pair_tag_as_root(install, monkeypatch)
    assert "Traceback" not in done.stderr, done.stderr
    info = install.store.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (
        SERVICE_UID, SERVICE_UID, 0o700)
    _all_the_services(install)
    with _the_service_on_it(install):
        pass  # it started, synced and found every store file its own


def test_root_pair_tag_on_a_store_dir_of_roots_is_refused_naming_the_fix(
        install: Install, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """store.dir exists but is root's: refused before anything is made there (exit 2), with
    the directory, the service's user and the chown; the directory is not taken from root."""
    os.chown(install.store, 0, 0)
    done = _pair_tag_as_root(install, monkeypatch)
    assert done.returncode == 2, (done.stdout, done.stderr)
    said = done.stderr
    assert f"store.dir {install.store} belongs to root" in said, said
    assert f"uid {SERVICE_UID}" in said and \
        f"chown -R {SERVICE_UID}:{SERVICE_UID} {install.store}" in said, said
    assert list(install.store.iterdir()) == [] and install.store.stat().st_uid == 0


@pytest.mark.parametrize(("command", "made"), [
    (("sync",), {"cache.db"}),
    (("scan", C["valid"], "--lane", "entry"), {"cache.db", "journal.db"})])
def test_every_root_store_command_on_a_store_dir_not_made_yet_makes_it_the_services(
        install: Install, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        command: tuple[str, ...], made: set[str]) -> None:
    """Not only pair-tag: `sudo gate-agent sync` (or scan, import, ...) with no daemon, before
    the service's first start, made store.dir and the cache and journal in it root's. Every
    command that changes the store starts through `acting_on_store`, which now makes store.dir
    the service's first; the service then starts on what the command left."""
    monkeypatch.setenv("GATE_AGENT_SERVICE_USER", str(SERVICE_UID))
    install.store.rmdir()
    done = install.cli(*command)
    assert "Traceback" not in done.stderr, done.stderr
    info = install.store.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (
        SERVICE_UID, SERVICE_UID, 0o700), (done.stdout, done.stderr)
    _all_the_services(install, frozenset(made))
    with _the_service_on_it(install):
        pass
