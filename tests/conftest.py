"""Shared fixtures: a provisioned demo gate on real SQLite files in a temp directory."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import demo_data
from agent.config import Config, load_config
from agent.platform.provision import import_file
from agent.runtime.gate import Gate
from agent.runtime.opening import opened_gate
from tests.procs import Reaper

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DURATIONS = Path(__file__).with_name("durations.json")

# Figures the fault-injection tests measure (tests/faults), printed in the terminal summary
# (RELIABILITY.md quotes them). Under pytest-xdist each worker sends its own to the controller.
FIGURES: dict[str, dict[str, Any]] = {}


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["figures"] = json.dumps(FIGURES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    FIGURES.update(json.loads(getattr(node, "workeroutput", {}).get("figures", "{}")))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("fault-injection figures")
        for name, figures in sorted(FIGURES.items()):
            terminalreporter.write_line(f"{name}: {json.dumps(figures, sort_keys=True)}")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest files first (tests/durations.json, seconds per file from an earlier run;
    a file not in it first of all: new ones are often slow). xdist hands whole files out in
    this order (pyproject.toml: --dist loadfile), so the two workers end together instead of
    one running a 30 s storm alone at the end. Files stay whole and in pytest's own order
    inside (after its grouping by fixture scope: trylast), and the order is the same in
    every worker, as xdist requires."""
    known: dict[str, float] = json.loads(DURATIONS.read_text(encoding="utf-8"))
    rank = {path: i for i, path in enumerate(sorted(known, key=lambda p: -known[p]))}

    def key(item: pytest.Item) -> int:
        path = item.path.relative_to(PROJECT_ROOT).as_posix()
        return rank.get(path, -1)
    items.sort(key=key)  # stable


@pytest.fixture(autouse=True)
def reap_children(monkeypatch: pytest.MonkeyPatch) -> Iterator[Reaper]:
    """Every subprocess this test (or its function-scoped fixtures) started is killed and its
    pipes closed when the test ends, however it ended (tests/procs.py says why). Autouse and
    function-scoped: it wraps the test's own fixtures, so it runs after their clean-up, and
    module-scoped fixtures' processes (made before it) are left to their fixture."""
    reaper = Reaper()
    monkeypatch.setattr(subprocess, "Popen", reaper.popen)
    yield reaper
    reaper.reap_all()


@dataclass
class DemoSite:
    """A gate provisioned with agent.demo_data's event, as a technician would with `import`."""

    root: Path
    config_path: Path
    config: Config
    now: datetime
    files: list[Path]


def make_site(root: Path, now: datetime, extra_config: str = "") -> DemoSite:
    store = root / "state"
    config_path = root / "config.toml"
    config_path.write_text(demo_data.demo_config(store, extra_config), encoding="utf-8")
    config = load_config(config_path)
    files = demo_data.write_demo_files(root / "platform", now)
    with opened_gate(config) as gate:
        for path in files:
            import_file(gate.cache, path, now)
    return DemoSite(root, config_path, config, now, files)


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's busy timeout at 1.5 s instead of 5 (agent.store.sqlite.BUSY_TIMEOUT_S), for the
    tests that hold a store file from another process on purpose: each open or read the
    product tries meanwhile waits it out, and what they prove does not hang on its length."""
    from agent.store import sqlite

    monkeypatch.setattr(sqlite, "BUSY_TIMEOUT_S", 1.5)


@pytest.fixture
def site(tmp_path: Path) -> DemoSite:
    return make_site(tmp_path, datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def gate(site: DemoSite) -> Iterator[Gate]:
    with opened_gate(site.config) as g:
        yield g


def run_cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `gate-agent ARGS` as a real subprocess, as a technician would (on `timeout`,
    subprocess.run kills it and closes its pipes before raising TimeoutExpired)."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], input=stdin, capture_output=True, text=True,
        cwd=PROJECT_ROOT, timeout=timeout, env=env,
    )
