"""A running gate for end-to-end tests: platform sandbox (loopback), the real daemon as a
subprocess, a pty playing a USB serial scanner, sim readers/relays reachable from outside."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import demo_data
from agent.runtime.devrun import DaemonProcess
from agent.sandbox.harness import Sandbox, start_sandbox
from tests.conftest import PROJECT_ROOT
from tests.rigs import PtyDevice

SHORTER_RETRIES = Path(__file__).resolve().parent / "shorter_retries"
RETRY_S = 0.5  # a test's daemon's retries of a store or a status port (shorter_retries/)


def shorter_retries(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` for a daemon that tries a store it could not open, or a taken status port,
    again every RETRY_S instead of 5 s (shorter_retries/sitecustomize.py says why)."""
    env = dict(env or {})
    path = [str(SHORTER_RETRIES), *filter(None, [env.get("PYTHONPATH",
                                                         os.environ.get("PYTHONPATH"))])]
    return {**env, "PYTHONPATH": os.pathsep.join(path), "GATE_AGENT_TEST_RETRY_S": str(RETRY_S)}


@dataclass
class Site:
    root: Path
    sandbox: Sandbox
    scanner: PtyDevice
    config: Path
    token: str
    extra_sections: str = ""  # appended to every config written (tests/venue adds [venue])

    @property
    def store(self) -> Path:
        return self.root / "state"

    def relay_pulses(self) -> list[dict]:
        path = self.root / "relays.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def daemon(self, *, quick_retries: bool = False, **env: str) -> DaemonProcess:
        """The daemon (not started); `quick_retries`: see shorter_retries()."""
        return DaemonProcess(self.config, self.store, cwd=PROJECT_ROOT,
                             env=shorter_retries(env) if quick_retries else env or None)

    def write_config(self, *, listen: str = "127.0.0.1:0", status_token: str = "",
                     extra_lanes: str = "", entry_reader: str | None = None,
                     out_direction: str = "out") -> None:
        reader = entry_reader or f"serial://{self.scanner.path}"
        self.config.write_text(f"""
[api]
base_url = "{self.sandbox.url}"
company_id = {self.sandbox.company_id}
token_file = "{self.root / 'token'}"
device_name = "e2e-gate"
budget_share = 1.0

[store]
dir = "{self.store}"

[events]
ids = [{demo_data.EVENT_ID}]

[sync]
upload_interval_s = 0.5
delta_interval_s = 2.0
full_resync_retry_s = 1.0

[status]
listen = "{listen}"
token = "{status_token}"

[[lanes]]
name = "entry"
gate_id = {demo_data.GATE_NORTH}
direction = "in"
readers = ["{reader}"]
relay = "sim:entry?log={self.root / 'relays.jsonl'}"
debounce_ms = 300

[[lanes]]
name = "exit"
direction = "{out_direction}"
readers = ["sim:exit?socket={self.root / 'exit.sock'}"]
{extra_lanes}
{self.extra_sections}
""", encoding="utf-8")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps(demo_data.sandbox_seed(datetime.now(UTC))))
    sandbox = start_sandbox(seed_file=seed, rpm=600)
    token_file = tmp_path / "token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, sandbox.token.encode())
    os.close(fd)
    scanner = PtyDevice(tmp_path)
    s = Site(tmp_path, sandbox, scanner, tmp_path / "config.toml", sandbox.token)
    s.write_config()
    yield s
    scanner.unplug()
    sandbox.stop()


def wait_synced(daemon: DaemonProcess, timeout: float = 20.0) -> dict:
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = daemon.status()
        if any(e["items"] and e["last_sync"] for e in report["cache"].get("events") or []):
            return report
        time.sleep(0.1)
    raise TimeoutError("no sync")
