"""A gate under fault injection: the real daemon (subprocess) restarted on one store directory,
two pty scanners on two single-access lanes with sim relays logging to files, and the platform
sandbox in this process (so a test can watch what it has recorded without a request).

Helpers read what really happened from the outside — decision log lines of every daemon run,
the relay logs, the journal file and the sandbox's received uploads — so the assertions check
the gate's behaviour, not its own bookkeeping. Figures from each test are collected in
`FIGURES` and printed in the terminal summary (RELIABILITY.md quotes them).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import demo_data
from agent.runtime.devrun import DaemonProcess, Record
from agent.sandbox.harness import Sandbox, start_sandbox
from tests.conftest import PROJECT_ROOT
from tests.rigs import PtyDevice

LANES = ("entry", "floor")
SHORTER_HOLD = Path(__file__).parent / "shorter_hold"


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def feed(scanner: PtyDevice, codes: list[str], timeout: float = 5.0) -> int:
    """Type codes into a pty scanner, waiting while its buffer is full; returns codes written.

    A pty with nobody reading the slave (daemon dead) fills up: the rest is given up after
    `timeout`, like a scanner whose host is down — those scans were never decided.
    """
    written = 0
    deadline = time.monotonic() + timeout
    for code in codes:
        data = code.encode() + b"\r\n"
        while data:
            try:
                assert scanner.master is not None
                data = data[os.write(scanner.master, data):]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return written
                time.sleep(0.002)
        written += 1
    return written


@dataclass
class FaultSite:
    root: Path
    sandbox: Sandbox
    scanners: dict[str, PtyDevice]
    config: Path
    rpm: int
    runs: list[DaemonProcess] = field(default_factory=list)

    @property
    def store(self) -> Path:
        return self.root / "state"

    def write_config(self, *, upload_interval_s: float = 0.5, batch: int = 100,
                     delta_interval_s: float = 1.0, timeout_s: float = 15.0,
                     extra: str = "") -> None:
        """The gate's rate budget is the sandbox's (`rpm`), as a technician would set it."""
        lanes = ""
        for name in LANES:
            zone = f"zone_id = {demo_data.FLOOR_ZONE}\n" if name == "floor" else ""
            lanes += f"""
[[lanes]]
name = "{name}"
gate_id = {demo_data.GATE_NORTH}
direction = "in"
max_entries = 1
debounce_ms = 0
{zone}readers = ["serial://{self.scanners[name].path}"]
relay = "sim:{name}?log={self.root / 'relays.jsonl'}"
"""
        self.config.write_text(f"""
[api]
base_url = "{self.sandbox.url}"
company_id = {self.sandbox.company_id}
token_file = "{self.root / 'token'}"
device_name = "fault-gate"
timeout_s = {timeout_s}
requests_per_minute = {self.rpm}
budget_share = 1.0

[store]
dir = "{self.store}"

[events]
ids = [{demo_data.EVENT_ID}]

[sync]
upload_interval_s = {upload_interval_s}
upload_batch_size = {batch}
delta_interval_s = {delta_interval_s}
{extra}
[status]
listen = "127.0.0.1:0"
{lanes}""", encoding="utf-8")

    def write_token(self, token: str) -> None:
        path = self.root / "token"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, token.encode())
        os.close(fd)
        os.replace(tmp, path)

    def daemon(self, first_hold_s: float | None = None) -> DaemonProcess:
        """`first_hold_s`: the daemon's first hold after an unconfirmed upload answer, in place
        of upload.HOLD_S's 10 s (tests/faults/shorter_hold/sitecustomize.py says why)."""
        env = None
        if first_hold_s is not None:
            path = [str(SHORTER_HOLD), *filter(None, [os.environ.get("PYTHONPATH")])]
            env = {"PYTHONPATH": os.pathsep.join(path),
                   "GATE_AGENT_TEST_FIRST_HOLD_S": str(first_hold_s)}
        run = DaemonProcess(self.config, self.store, env=env, cwd=PROJECT_ROOT)
        self.runs.append(run)
        return run.start()

    # -- what happened, read from the outside ---------------------------------------------

    def decisions(self) -> list[Record]:
        """Decision log lines of every daemon run so far (only real scans, with a uuid)."""
        return [d for run in self.runs for d in run.decisions() if d.get("uuid")]

    def relay_pulses(self) -> list[dict[str, Any]]:
        path = self.root / "relays.jsonl"
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        out = []
        for n, line in enumerate(lines):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                assert n == len(lines) - 1, f"relay log line {n} is damaged: {line!r}"
        return out

    def journal_rows(self) -> list[dict[str, Any]]:
        conn = sqlite3.connect(self.store / "journal.db")
        try:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM scans ORDER BY seq")]
        finally:
            conn.close()

    def uploads(self) -> list[dict[str, Any]]:
        """Every ticket row the platform received (duplicates included, marked `skipped`)."""
        state = self.sandbox.state
        assert state is not None
        with state.lock:
            return [dict(u) for u in state.received.uploads]

    def upload_requests(self) -> int:
        state = self.sandbox.state
        assert state is not None
        with state.lock:
            return state.received.per_endpoint["POST /entry/tickets"]


def make_site(root: Path, *, extra_tickets: int, **sandbox_args: Any) -> FaultSite:
    seed = root / "seed.json"
    seed.write_text(json.dumps(demo_data.sandbox_seed(datetime.now(UTC), extra_tickets)))
    sandbox = start_sandbox(seed_file=seed, **sandbox_args)
    scanners = {}
    for name in LANES:
        (root / name).mkdir()
        scanners[name] = PtyDevice(root / name)
    site = FaultSite(root, sandbox, scanners, root / "config.toml",
                     int(sandbox_args.get("rpm", 60)))
    site.write_token(sandbox.token)
    site.write_config()
    return site


@pytest.fixture
def site_factory(tmp_path: Path) -> Iterator[Callable[..., FaultSite]]:
    made: list[FaultSite] = []

    def factory(**kw: Any) -> FaultSite:
        site = make_site(tmp_path, **kw)
        made.append(site)
        return site

    yield factory
    for site in made:
        for run in site.runs:
            run.kill()
        for scanner in site.scanners.values():
            scanner.unplug()
        site.sandbox.stop()


def cache_items(report: dict[str, Any]) -> int | None:
    """Items of the demo event in the daemon's cache, from /status."""
    for event in report["cache"].get("events") or []:
        if event["id"] == demo_data.EVENT_ID:
            return int(event["items"])
    return None


def status_or_none(run: DaemonProcess) -> dict[str, Any] | None:
    """/status, or None while the daemon is starting, swapping or gone."""
    try:
        return run.status()
    except Exception:  # noqa: BLE001 - connection refused / timeouts are "not now"
        return None
