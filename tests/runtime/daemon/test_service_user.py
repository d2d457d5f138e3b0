"""A real install, simulated: the daemon runs as its own unprivileged user (systemd's `User=`,
with a `LoadCredential=`-style credentials directory), technicians type `sudo gate-agent ...`.

CI runs as root, so "the service user" is a numeric uid with no account (files and processes
need no passwd entry); the tests skip when not root, since only root can start a process as
another uid. The platform is the sandbox on loopback; readers are `sim:` drivers with sockets.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import demo_data
from agent.runtime.devrun import DaemonProcess
from agent.sandbox.harness import Sandbox, start_sandbox
from drivers.sim import send_scan
from tests.conftest import PROJECT_ROOT
from tests.rigs import wait_until
from tests.runtime.daemon.conftest import shorter_retries, wait_synced

SERVICE_UID = 4242  # no account needed: a uid is all the kernel checks
C = demo_data.CODES


def _runs_as_service_user(argv: list[str], env: dict[str, str]) -> bool:
    try:
        return subprocess.run(argv, user=SERVICE_UID, group=SERVICE_UID, extra_groups=[],
                              env=env, cwd="/", capture_output=True).returncode == 0
    except OSError:  # the interpreter itself may not be run by that uid
        return False


def _python_for_service_user() -> tuple[str, dict[str, str]] | None:
    """An interpreter the service uid can run, with this checkout importable. On an install
    both the unit and the technician use /opt/gate-agent's; here this venv's interpreter may
    live in root's 0700 home (pyenv), so fall back to the system's Python 3.11 with this
    venv's packages on its path (same minor version: same ABI for compiled packages)."""
    paths = os.pathsep.join([str(PROJECT_ROOT), sysconfig.get_paths()["purelib"],
                             sysconfig.get_paths()["platlib"]])
    probe = "import importlib.metadata, sqlite3, agent.runtime.daemon"
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [(sys.executable, {})] + [(f"{d}/{version}", {"PYTHONPATH": paths})
                                           for d in ("/usr/bin", "/usr/local/bin")]
    for python, env in candidates:
        if os.path.exists(python) and _runs_as_service_user([python, "-c", probe],
                                                            {**os.environ, **env}):
            return python, env
    return None


# Probed once at collection, as root only (it runs the probe as the service uid).
SERVICE_PYTHON = _python_for_service_user() if os.geteuid() == 0 else None
# The preconditions of every test that runs the daemon as the service uid (also imported by
# test_service_control): stated, never a hidden failure.
NEEDS_SERVICE_USER = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: starts the daemon as another uid, "
                       "as systemd's User= does (CI runs as root)"),
    pytest.mark.skipif(os.geteuid() == 0 and SERVICE_PYTHON is None,
                       reason="no Python interpreter the service uid may run (the venv's is in a "
                              "home directory only root may enter, and no system python3.11)"),
]
pytestmark = NEEDS_SERVICE_USER


@dataclass
class Install:
    root: Path
    sandbox: Sandbox
    config: Path
    creds: Path
    python: str
    python_env: dict[str, str]

    @property
    def store(self) -> Path:
        return self.root / "state"

    def daemon(self, *, quick_retries: bool = False) -> DaemonProcess:
        """As the unit starts it: the service uid, the token in $CREDENTIALS_DIRECTORY;
        `quick_retries`: see tests.runtime.daemon.conftest.shorter_retries()."""
        env = {"CREDENTIALS_DIRECTORY": str(self.creds), "GATE_AGENT_TOKEN": "",
               **self.python_env}
        return DaemonProcess(self.config, self.store, cwd=PROJECT_ROOT, user=SERVICE_UID,
                             python=self.python, env=shorter_retries(env) if quick_retries
                             else env)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """`sudo gate-agent ...`: as root, with the token only in root's 0600 token file."""
        return subprocess.run([self.python, "-m", "agent", *args, "--config", str(self.config)],
                              input=stdin, capture_output=True, text=True, timeout=120,
                              cwd=PROJECT_ROOT, env={**os.environ, "GATE_AGENT_TOKEN": "",
                                                     **self.python_env})

    def owners(self) -> dict[str, int]:
        return {p.name: p.stat().st_uid for p in self.store.iterdir()}


def _private_file(path: Path, text: str, uid: int = 0) -> None:
    path.write_text(text)
    os.chown(path, uid, uid)
    path.chmod(0o600)


@pytest.fixture
def install() -> Iterator[Install]:
    # pytest's tmp_path lives under a 0700 root directory the service uid cannot enter.
    root = Path(tempfile.mkdtemp(prefix="ga-svc-", dir="/tmp"))
    root.chmod(0o755)
    seed = root / "seed.json"
    seed.write_text(json.dumps(demo_data.sandbox_seed(datetime.now(UTC))))
    sandbox = start_sandbox(seed_file=seed, rpm=600)
    store = root / "state"
    store.mkdir(mode=0o700)  # systemd's StateDirectory=: owned by the service user
    os.chown(store, SERVICE_UID, SERVICE_UID)
    devices = root / "dev"  # where the sim readers' sockets and the relay log live
    devices.mkdir()
    os.chown(devices, SERVICE_UID, SERVICE_UID)
    creds = root / "credentials"  # what LoadCredential= gives the service: its own copy
    creds.mkdir()
    os.chown(creds, SERVICE_UID, SERVICE_UID)
    _private_file(creds / "gate-agent-token", sandbox.token, SERVICE_UID)
    _private_file(root / "token", sandbox.token)  # /etc/gate-agent/token: root's, 0600
    config = root / "config.toml"
    config.write_text(f"""
[api]
base_url = "{sandbox.url}"
company_id = {sandbox.company_id}
token_file = "{root / 'token'}"

[store]
dir = "{store}"

[events]
ids = [{demo_data.EVENT_ID}]

[sync]
upload_interval_s = 0.5

[status]
listen = "127.0.0.1:0"

[[lanes]]
name = "entry"
gate_id = {demo_data.GATE_NORTH}
relay = "sim:entry?log={devices / 'relays.jsonl'}"
debounce_ms = 0
""")
    assert SERVICE_PYTHON is not None
    yield Install(root, sandbox, config, creds, *SERVICE_PYTHON)
    sandbox.stop()
    shutil.rmtree(root, ignore_errors=True)


def _reader(install: Install, name: str = "entry") -> str:
    return f"sim:{name}?socket={install.root / 'dev' / (name + '.sock')}"


def _healthy_start(daemon: DaemonProcess) -> dict:
    daemon.wait_ready()
    report = daemon.status()
    codes = {r["code"] for r in report["reasons"]}
    assert not codes & {"journal_unavailable", "cache_rebuilding", "lane_stalled"}, \
        report["reasons"]
    return report


def test_cli_as_root_beside_a_service_user_daemon_breaks_nothing(install: Install) -> None:
    files = demo_data.write_demo_files(install.root / "import", datetime.now(UTC))
    for path in files:  # only root may read them, as in root's home
        path.chmod(0o600)
    # Before the first start (no daemon): the commands act as the store's owner.
    paired = install.cli("devices", "pair", "entry", _reader(install), "--no-validate")
    assert paired.returncode == 0, paired.stderr
    imported = install.cli("import", *map(str, files))
    assert imported.returncode == 0, imported.stderr
    scanned = install.cli("scan", C["valid"], "--json")
    assert scanned.returncode == 0, scanned.stderr + scanned.stdout
    # a full one: the imported events then have a full listing on record, so the daemon does
    # not rebuild at start (agent.runtime.daemonjobs.run_missed_rebuild), and its file is
    # renamed in by root, as the service's
    synced = install.cli("sync", "--full", "--json")
    assert synced.returncode == 0, synced.stderr
    owners = install.owners()
    assert set(owners.values()) == {SERVICE_UID}, owners

    daemon = install.daemon().start()
    try:
        _healthy_start(daemon)
        # The pre-start scan is uploaded by the daemon (it could open the journal).
        wait_until(lambda: any(u["barcode"] == C["valid"] for u in
                               install.sandbox.received()["uploads"]), 15, "the CLI's scan")
        # While it runs, the same commands go through it.
        again = install.cli("scan", C["valid2"], "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["uuid"]
        daemon.wait_for(lambda r: "control: scan requested by uid 0" in r.get("msg", ""),
                        5, "the daemon doing the scan")
        more = install.cli("devices", "pair", "entry", _reader(install, "side"), "--no-validate")
        assert more.returncode == 0 and "uses it now" in more.stdout, more.stderr
        send_scan(install.root / "dev" / "side.sock", C["floor"])  # the new reader works now
        wait_until(lambda: any(d.get("code") == C["floor"]
                               for d in daemon.decisions()), 10, "a scan on the paired reader")
        full = install.cli("sync", "--full", "--json")
        assert full.returncode == 0, full.stderr
        queue = install.cli("queue", "--json", "--all")
        assert queue.returncode == 0 and json.loads(queue.stdout)["counts"]["sent"] >= 1
        assert set(install.owners().values()) == {SERVICE_UID}, install.owners()
    finally:
        assert daemon.stop() == 0
    # A restart opens everything; nothing was moved aside.
    daemon = install.daemon().start()
    try:
        report = _healthy_start(daemon)
        assert any(e["items"] for e in report["cache"]["events"])
    finally:
        assert daemon.stop() == 0
    assert not [p.name for p in install.store.iterdir() if "corrupt" in p.name]
    assert set(install.owners().values()) == {SERVICE_UID}, install.owners()


def test_second_daemon_is_refused_before_touching_a_device(install: Install) -> None:
    install.config.write_text(install.config.read_text().replace(
        'debounce_ms = 0', f'debounce_ms = 0\nreaders = ["{_reader(install)}"]'))
    first = install.daemon().start()
    try:
        _healthy_start(first)
        sock = install.root / "dev" / "entry.sock"
        inode = sock.stat().st_ino
        second = subprocess.run(
            [install.python, "-m", "agent", "run", "--config", str(install.config)],
            capture_output=True, text=True, timeout=30, cwd=PROJECT_ROOT,
            env={**os.environ, "CREDENTIALS_DIRECTORY": str(install.creds),
                 **install.python_env},
            user=SERVICE_UID, group=SERVICE_UID, extra_groups=[])
        assert second.returncode == 2, second.stderr
        assert f"PID {first.proc.pid}" in second.stderr, second.stderr
        assert sock.stat().st_ino == inode  # its reader socket was not replaced
        send_scan(sock, C["valid"])
        wait_until(lambda: first.decisions(), 10, "the first daemon still deciding")
        assert first.status()["lanes"][0]["readers_connected"] == 1
        # The commands see the running daemon and go through it: a full resync is its own.
        full = install.cli("sync", "--full", "--json")
        assert full.returncode == 0, full.stderr
        first.wait_for(lambda r: "control: sync requested" in r.get("msg", ""), 5,
                       "the sync done by the daemon")
        first.wait_for(lambda r: "swapped in" in r.get("msg", ""), 5, "the daemon's own swap")
    finally:
        assert first.stop() == 0


def test_a_new_token_is_used_at_once_whatever_loadcredential_copied(install: Install) -> None:
    daemon = install.daemon().start()
    try:
        _healthy_start(daemon)
        wait_synced(daemon)
        install.sandbox.revoke_token(install.sandbox.token)
        assert install.cli("scan", C["valid"]).returncode == 0
        wait_until(lambda: any(r["code"] == "auth_failed" for r in daemon.status()["reasons"]),
                   15, "auth_failed after the revocation")
        login = install.sandbox.info()["login"]
        done = install.cli("login", "--email", login["email"], stdin=login["password"] + "\n")
        assert done.returncode == 0 and "uses the new token" in done.stdout, done.stderr
        wait_until(lambda: any(u["barcode"] == C["valid"] for u in
                               install.sandbox.received()["uploads"]), 15, "upload, new token")
        # `systemctl reload`: the credentials directory still holds the revoked token.
        daemon.signal(signal.SIGHUP)
        daemon.wait_for(lambda r: "token kept" in r.get("msg", ""), 5, "the reload")
        assert install.cli("scan", C["valid2"]).returncode == 0
        wait_until(lambda: any(u["barcode"] == C["valid2"] for u in
                               install.sandbox.received()["uploads"]), 15, "upload after reload")
        assert not any(r["code"] == "auth_failed" for r in daemon.status()["reasons"])
    finally:
        assert daemon.stop() == 0


def test_files_left_root_owned_are_named_not_moved_aside(install: Install) -> None:
    """What an older `sudo gate-agent ...` left behind: root-owned 0600 files. The service
    keeps them as they are, starts, and says which file and which `chown` fixes it."""
    files = demo_data.write_demo_files(install.root / "import", datetime.now(UTC))
    os.chown(install.store, 0, 0)  # as the commands did into a store they found root's...
    subprocess.run([install.python, "-m", "agent", "import", "--config", str(install.config),
                    *map(str, files)], check=True, capture_output=True, cwd=PROJECT_ROOT,
                   env={**os.environ, **install.python_env})
    subprocess.run([install.python, "-m", "agent", "devices", "pair", "entry", _reader(install),
                    "--no-validate", "--config", str(install.config)], check=True,
                   capture_output=True, cwd=PROJECT_ROOT, env={**os.environ, **install.python_env})
    os.chown(install.store, SERVICE_UID, SERVICE_UID)  # ...that systemd handed back: files not
    assert {"cache.db", "devices.json"} <= {n for n, uid in install.owners().items() if uid == 0}
    daemon = install.daemon().start()
    try:
        daemon.wait_ready()
        report = daemon.status()
        reasons = {r["code"]: r["message"] for r in report["reasons"]}
        metrics = daemon.get("/metrics").text
    finally:
        assert daemon.stop() == 0
    assert "chown" in reasons["pairings_unreadable"]
    # the cache: its own reason naming the file, its owner and the fix; not a "rebuild"
    cache_db = str(install.store / "cache.db")
    assert cache_db in reasons["cache_unreadable"] and "uid 0" in reasons["cache_unreadable"]
    assert "chown" in reasons["cache_unreadable"]
    assert "cache_rebuilding" not in reasons and "cache_empty" not in reasons
    assert report["health"] == "fail" and report["cache"]["unreadable"]
    assert "gate_cache_unreadable 1.0" in metrics
    assert not [p.name for p in install.store.iterdir() if "corrupt" in p.name]
