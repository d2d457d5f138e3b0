"""The token never leaves the token file: a whole daemon life — sync, scans, uploads, the token
revoked (401s), a SIGKILL, a restart — and then every output is searched for it: the daemon's
stdout and stderr (every log line), /status, /metrics, /healthz, `gate-agent status --json`,
`gate-agent queue --json`, and every file the daemon wrote (cache, journal, WAL/SHM,
status.addr). The search is shown to work by finding the token in the token file itself."""

from __future__ import annotations

import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import demo_data
from agent.runtime.devrun import DaemonProcess
from agent.sandbox.harness import start_sandbox
from tests.conftest import PROJECT_ROOT, run_cli
from tests.rigs import PtyDevice
from tests.runtime.daemon.conftest import Site, wait_synced

pytestmark = pytest.mark.e2e
C = demo_data.CODES


class CapturingDaemon(DaemonProcess):
    """DaemonProcess with stdout kept in a file too (the harness discards it)."""

    def __init__(self, *args, stdout_path: Path, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kw)
        self.stdout_path = stdout_path

    def start(self) -> CapturingDaemon:
        import threading
        (self.store_dir / "status.addr").unlink(missing_ok=True)
        out = open(self.stdout_path, "ab")  # noqa: SIM115 - the child owns it until it exits
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(self.config_path),
             "--log-format", "json"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, text=True,
            env=self.env, cwd=self.cwd)
        out.close()
        self._thread = threading.Thread(target=self._pump, daemon=True, name="daemon log")
        self._thread.start()
        return self


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps(demo_data.sandbox_seed(datetime.now(UTC))))
    sandbox = start_sandbox(seed_file=seed, rpm=600)
    token = sandbox.add_token("hostile-" + secrets.token_hex(16))  # unmistakable in a grep
    fd = os.open(tmp_path / "token", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, token.encode())
    os.close(fd)
    scanner = PtyDevice(tmp_path)
    s = Site(tmp_path, sandbox, scanner, tmp_path / "config.toml", token)
    s.write_config()
    yield s
    scanner.unplug()
    sandbox.stop()


def _wait(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def _outputs(daemon: DaemonProcess, site: Site) -> dict[str, str]:
    out = {path: daemon.get(path).text for path in ("/status", "/metrics", "/healthz")}
    for args in (("status", "--json"), ("queue", "--json"), ("queue", "--json", "--all")):
        done = run_cli(*args, "--config", str(site.config), timeout=30)
        out[" ".join(args)] = done.stdout + done.stderr
    return out


def test_the_token_appears_in_no_output_of_a_whole_daemon_life(site: Site) -> None:
    token = site.token
    stdout = site.root / "daemon.stdout"
    seen: dict[str, str] = {}

    def daemon() -> CapturingDaemon:
        return CapturingDaemon(site.config, site.store, cwd=PROJECT_ROOT, stdout_path=stdout)

    first = daemon().start()
    try:
        first.wait_ready()
        wait_synced(first)
        site.scanner.write(C["valid"].encode() + b"\r\n" + C["unknown"].encode() + b"\n")
        first.wait_decisions(2)
        _wait(lambda: first.status()["journal"]["pending"] == 0)
        seen.update({f"1 {k}": v for k, v in _outputs(first, site).items()})
        assert stat.S_IMODE((site.store / "status.addr").stat().st_mode) == 0o600
        # the platform stops accepting the token: uploads fail with 401
        site.sandbox.revoke_token(token)
        site.scanner.write(C["valid2"].encode() + b"\n")
        first.wait_decisions(3)
        _wait(lambda: (first.status().get("upload") or {}).get("state") == "auth_failed")
        report = first.status()
        assert "auth_failed" in [r["code"] for r in report["reasons"]]
        assert report["journal"]["pending"] == 1
        seen.update({f"2 {k}": v for k, v in _outputs(first, site).items()})
    finally:
        first.signal(signal.SIGKILL)  # a crash: no clean shutdown, WAL files left behind
        first.kill()
    assert first.proc is not None and first.proc.returncode == -signal.SIGKILL
    files = {p.name: p.read_bytes() for p in site.store.iterdir() if p.is_file()}
    assert {"journal.db", "cache.db", "status.addr"} <= set(files)
    assert any(name.endswith("-wal") for name in files), "SIGKILL should leave a WAL behind"
    second = daemon().start()  # restart after the crash, the token still revoked
    try:
        second.wait_ready()
        _wait(lambda: any(r.get("level") in ("warning", "error")
                          and ("401" in r.get("msg", "") or "token" in r.get("msg", ""))
                          for r in second.records), timeout=20)
        seen.update({f"3 {k}": v for k, v in _outputs(second, site).items()})
    finally:
        assert second.stop() == 0
    files.update({f"after {p.name}": p.read_bytes() for p in site.store.iterdir()
                  if p.is_file()})
    logs = "".join(first.raw_lines) + "".join(second.raw_lines) + stdout.read_text()
    assert "401" in logs or "refused" in logs  # the auth failure was logged...
    needle = token.encode()
    assert needle in (site.root / "token").read_bytes()  # ...and the search works
    assert token not in logs
    for name, text in seen.items():
        assert token not in text, name
    for name, data in files.items():
        assert needle not in data, name
    assert len(seen) == 18 and len(logs) > 1000
