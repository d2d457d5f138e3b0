"""A pairing station's world: the platform sandbox (demo event) and a gate provisioned with the
same event by `import`, its config pointing at the sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import demo_data
from agent.config import Config, load_config
from agent.sandbox.harness import Sandbox, start_sandbox
from agent.store.cache import TicketCache
from tests.conftest import PROJECT_ROOT, DemoSite, make_site
from tests.procs import reap

DEMO_BASE_URL = 'base_url = "http://127.0.0.1:9/v1"'
TAG_A, TAG_B = "0x04AAAAAAAAAA01", "0x04BBBBBBBBBB02"  # two wristbands the tests pair


@dataclass
class Station:
    site: DemoSite
    sandbox: Sandbox
    runs: list[PairTagProcess] = field(default_factory=list)

    @property
    def config(self) -> Config:
        return load_config(self.site.config_path)

    @property
    def root(self) -> Path:
        return self.site.root

    def platform_tag(self, barcode: str, event_id: int = demo_data.EVENT_ID) -> str | None:
        return platform_tag(self.sandbox, barcode, event_id)

    def pair_requests(self) -> int:
        return int(self.sandbox.received()["perEndpoint"].get("POST /tickets/pair", 0))

    def local(self) -> TicketCache:
        return TicketCache(self.site.config.store_dir / "cache.db")

    def cli(self, *args: str) -> PairTagProcess:
        run = PairTagProcess(
            [sys.executable, "-m", "agent", "pair-tag", "--config", str(self.site.config_path),
             *args], {**os.environ, "GATE_AGENT_TOKEN": self.sandbox.token})
        self.runs.append(run)
        return run


def platform_tag(sandbox: Sandbox, barcode: str, event_id: int = demo_data.EVENT_ID
                 ) -> str | None:
    """The tag the sandbox has on a ticket (its own state, not an API answer)."""
    state = sandbox.state
    assert state is not None
    with state.lock:
        found = state.store.find(barcode, event_id)
        assert found is not None, barcode
        variable = state.store.item(event_id, found.index).get("variable")
    return variable.get("nfcId") if isinstance(variable, dict) else None


class PairTagProcess:
    """`gate-agent pair-tag ...` as a real subprocess; stdout lines are collected by a thread
    so a test can wait for a prompt before it presents a tag. `popen`: as another uid.

    Waits are conditions (a line, or the process ending) with generous deadlines: a loaded
    machine may take many seconds to start Python and the command, and a deadline only costs
    time when something is really wrong. `close()` (the `station` fixture calls it, however
    the test ended) kills a run still going and closes its pipes."""

    def __init__(self, argv: list[str], env: dict[str, str], **popen: Any):
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env, cwd=PROJECT_ROOT, **popen)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_line(self, text: str, count: int = 1, timeout: float = 120.0) -> str:
        """The `count`-th stdout line containing `text`; fails with the output so far."""
        def hits() -> list[str]:
            return [x for x in self.lines if text in x]
        with self._cond:
            if not self._cond.wait_for(lambda: len(hits()) >= count or
                                       self.proc.poll() is not None, timeout):
                raise AssertionError(f"no line {text!r} within {timeout} s: {self.lines}")
            if len(hits()) < count:
                self._cond.wait_for(lambda: len(hits()) >= count, 1.0)
            found = hits()
            assert len(found) >= count, f"exited {self.proc.returncode}: {self.lines}"
            return found[count - 1]

    def type(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 120.0) -> tuple[int, str, str]:
        """Exit code, all stdout, stderr (killed and closed if it does not exit in time)."""
        try:
            self.proc.wait(timeout)
            self._thread.join(timeout)
            assert self.proc.stderr is not None
            err = self.proc.stderr.read()
        finally:
            self.close()
        return self.proc.returncode, "\n".join(self.lines), err

    def close(self) -> None:
        """Kill the command if it still runs, let the stdout thread end, close the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._thread.join(10)
        reap(self.proc)


@pytest.fixture
def station(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Station]:
    now = datetime.now(UTC).replace(microsecond=0)
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps(demo_data.sandbox_seed(now)))
    sandbox = start_sandbox(seed_file=seed, rpm=600)
    site = make_site(tmp_path, now)
    text = site.config_path.read_text()
    assert DEMO_BASE_URL in text
    site.config_path.write_text(text.replace(DEMO_BASE_URL, f'base_url = "{sandbox.url}"'))
    monkeypatch.setenv("GATE_AGENT_TOKEN", sandbox.token)
    station = Station(site, sandbox)
    yield station
    for run in station.runs:
        run.close()
    sandbox.stop()


def tag_of(cache: TicketCache, barcode: str, event_id: int = demo_data.EVENT_ID) -> Any:
    hits = [h for h in cache.find_barcode(barcode) if h.event_id == event_id]
    assert len(hits) == 1
    return hits[0].item.nfc_id
