"""`gate-agent --help`, `--version` and a command's `--help` start without loading the heavy
modules (agent/commands/__init__.py: every command module is imported to build the parser,
so each imports rich, httpx, asyncio, the stores, the runtime and nats only inside the commands
that use them). On a Raspberry Pi those took a third of a second before any word was printed,
and the suite runs the CLI as a subprocess some hundred times.

What a start loaded is read from the real process (its `sys.modules` as it exits), not timed:
timing belongs to bench/, where the floor is measured in the same run.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT_ROOT, DemoSite, make_site

# Each costs tens of milliseconds to load (nats and sqlite_utils about a hundred), and none is
# needed to print help or the version.
HEAVY = ("asyncio", "httpx", "nats", "rich", "sqlite3", "sqlite_utils", "drivers",
         "agent.runtime.gate", "agent.runtime.control", "agent.runtime.work",
         "agent.store", "agent.platform", "agent.venue", "agent.ops", "agent.sandbox")

# `python -m agent ARGS`, and the modules loaded when it exits (help and errors exit too).
_CHILD = """import atexit, json, runpy, sys
atexit.register(lambda: sys.__stderr__.write("\\nMODULES " + json.dumps(sorted(sys.modules))))
sys.argv = ["gate-agent", *json.loads(sys.argv[1])]
runpy.run_module("agent", run_name="__main__", alter_sys=True)
"""


def _loaded(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True,
                         text=True, cwd=PROJECT_ROOT, timeout=60)
    head, _, modules = out.stderr.rpartition("\nMODULES ")
    assert modules, out.stderr[-2000:]
    return subprocess.CompletedProcess(out.args, out.returncode, out.stdout, head), \
        set(json.loads(modules))


def _heavy(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == h or n.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize("args", [
    ("--help",), ("--version",), ("status", "--help"), ("scan", "--help"),
    ("sync", "--help"), ("devices", "list", "--help"), ("venue", "status", "--help"),
    ("pair-tag", "--help"), ("release", "--help"), ("sandbox", "--help"),
])
def test_help_and_version_load_no_heavy_module(args: tuple[str, ...]) -> None:
    out, names = _loaded(*args)
    assert out.returncode == 0, out.stderr[-2000:]
    assert {"agent.commands.platform", "agent.commands.venue"} <= names  # the whole parser
    if args == ("--version",):
        assert out.stdout.startswith("gate-agent 0.")
    else:
        assert out.stdout.startswith("usage: gate-agent")
    assert _heavy(names) == []


def test_a_config_mistake_is_said_before_the_store_or_the_platform_is_loaded() -> None:
    """`gate-agent -c missing.toml queue`: the one line naming the file, from a light start."""
    out, names = _loaded("-c", "/nonexistent/gate-agent.toml", "queue")
    assert out.returncode == 2
    assert "/nonexistent/gate-agent.toml" in out.stderr
    assert [n for n in _heavy(names) if n.startswith(("agent.store", "agent.platform", "nats",
                                                      "httpx", "sqlite"))] == []


def test_a_command_that_works_loads_what_it_needs(site: DemoSite) -> None:
    """The list is the child's own: `check` without a daemon opens the gate here, so the
    store and the decision are seen loaded (the tests above would pass on an empty list)."""
    out, names = _loaded("-c", str(site.config_path), "check", "NU-VALID-0001", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["admit"] is True
    assert {"agent.store.cache", "agent.runtime.gate", "rich.console"} <= names


def test_queue_opens_the_journal_without_loading_the_gate_or_the_bus(site: DemoSite) -> None:
    """agent.runtime.opening imports the gate (and with it the venue bus, nats) only for
    `opened_gate`: `queue`, `import` and `release --events` open a store alone."""
    out, names = _loaded("-c", str(site.config_path), "queue", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["counts"]["pending"] == 0
    assert "agent.store.journal" in names
    assert [n for n in names if n == "nats" or n.startswith(("nats.", "agent.runtime.gate",
                                                             "agent.venue"))] == []
    # agent.runtime.work's queue listing needs neither the platform client nor asyncio
    assert "agent.runtime.work" in names
    assert _heavy_of(names, "httpx", "asyncio", "agent.platform.client") == []


def _heavy_of(names: set[str], *heavy: str) -> list[str]:
    return sorted(n for n in names if any(n == h or n.startswith(h + ".") for h in heavy))


class _AnsweringSocket:
    """A control socket that answers `ping` and `queue` as a daemon would (a thread of this
    test: the command's real connect, request and read), recording the ops asked."""

    def __init__(self, path: Path):
        self.ops: list[str] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        answers: dict[str, Any] = {"ping": {"pid": 4321},
                                   "queue": {"counts": {"pending": 7}, "rows": []}}
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                op = json.loads(conn.makefile("rb").readline())["op"]
                self.ops.append(op)
                conn.sendall(json.dumps({"ok": True, "result": answers[op]}).encode() + b"\n")

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def answered_site(tmp_path: Path) -> Iterator[tuple[DemoSite, _AnsweringSocket]]:
    short = Path(tempfile.mkdtemp(prefix="ga-ctl-", dir="/tmp"))  # within a socket's 107 bytes
    site = make_site(tmp_path, datetime.now(UTC).replace(microsecond=0),
                     f'[control]\nsocket = "{short / "control.sock"}"\n')
    daemon = _AnsweringSocket(short / "control.sock")
    yield site, daemon
    daemon.close()
    shutil.rmtree(short, ignore_errors=True)


def test_a_command_the_daemon_answers_loads_neither_asyncio_nor_the_stores(
        answered_site: tuple[DemoSite, _AnsweringSocket]) -> None:
    """The client side of the control socket (agent.runtime.controlclient, which reads
    agent.runtime.control's op list) runs without the daemon's asyncio: most technicians'
    commands go through it."""
    site, daemon = answered_site
    out, names = _loaded("-c", str(site.config_path), "queue", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["counts"]["pending"] == 7  # the daemon's answer, not the store's
    assert daemon.ops == ["ping", "queue"]
    assert {"agent.runtime.controlclient", "agent.runtime.control"} <= names
    assert _heavy_of(names, "asyncio", "httpx", "agent.runtime.work", "agent.store",
                     "agent.platform", "sqlite3") == []
