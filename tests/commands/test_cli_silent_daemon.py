"""A daemon that takes the control connection and never answers (its loop stuck: the kernel
still queues connections on a listening socket) must not leave the technician's command
waiting for ever, and must not make it work on the store itself: the silent daemon still
holds the store open, and two writers is what the store's lock exists to prevent.

The silent daemon here is a real UNIX socket server in a thread of the test (a real component:
the kernel's socket, its backlog, the command's real connect and reads); the commands are real
`gate-agent` subprocesses. No daemon holds the store's lock, so a command that fell back to
the store would succeed and leave a scan in the journal: that is what is looked for.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import demo_data
from agent.errors import DaemonSilent
from agent.runtime.control import ControlServer
from agent.runtime.controlclient import ControlClient
from agent.store.journal import Journal, iter_all
from tests.conftest import DemoSite, make_site, run_cli

C = demo_data.CODES
TIMEOUT_S = 0.5  # the least [control] answer_timeout_s allows: the waits below are its multiples
CLI_DEADLINE_S = 60  # the subprocess's own bound: a command that hangs fails the test


class SilentDaemon:
    """A control socket that accepts (`mode="silent"`), only listens (`"backlog"`: nobody
    calls accept), or answers pings and nothing else (`"pings"`)."""

    def __init__(self, path: Path, mode: str):
        self.path, self.mode = path, mode
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.held: list[socket.socket] = []
        self.requests: list[dict[str, Any]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        if mode != "backlog":
            self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(conn)  # kept open, never answered
            if self.mode == "pings":
                line = conn.makefile("rb").readline()
                request = json.loads(line)
                self.requests.append(request)
                if request["op"] == "ping":
                    conn.sendall(b'{"ok": true, "result": {"pid": 4321}}\n')

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        if self.thread.is_alive():
            self.thread.join(5)
        for conn in self.held:
            conn.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A socket path within the 107 bytes a UNIX socket allows (pytest's tmp_path may not be)."""
    path = Path(tempfile.mkdtemp(prefix="ga-ctl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def silent_site(tmp_path: Path, short_dir: Path) -> DemoSite:
    from datetime import UTC, datetime
    return make_site(tmp_path, datetime.now(UTC).replace(microsecond=0),
                     f'[control]\nsocket = "{short_dir / "control.sock"}"\n'
                     f"answer_timeout_s = {TIMEOUT_S}\n")


def _journal_rows(site: DemoSite) -> list[dict[str, Any]]:
    journal = Journal(site.config.store_dir / "journal.db")
    try:
        return list(iter_all(journal))
    finally:
        journal.close()


@pytest.mark.parametrize("mode", ["silent", "backlog", "pings"])
def test_a_silent_daemon_stops_the_command_and_the_store_is_not_touched(
        silent_site: DemoSite, short_dir: Path, mode: str) -> None:
    daemon = SilentDaemon(short_dir / "control.sock", mode)
    try:
        before = _journal_rows(silent_site)
        for args in (("scan", C["valid"]), ("check", C["valid"]), ("queue",), ("status",)):
            out = run_cli(*args, "--config", str(silent_site.config_path),
                          timeout=CLI_DEADLINE_S)
            assert out.returncode == 1, (args, out.stdout, out.stderr)
            said = f"the daemon at {short_dir / 'control.sock'} accepted but did not answer " \
                   f"within {TIMEOUT_S:g} s"
            assert said in out.stderr, (args, out.stderr)
            assert "does not work on it directly" in out.stderr
            assert "Traceback" not in out.stderr and out.stdout == "", (args, out.stdout)
            # past the probe, a request that changes something may or may not have been done
            unknown = f"whether it did {args[0]!r} is unknown" in out.stderr
            assert unknown == (mode == "pings" and args[0] == "scan"), (args, out.stderr)
        assert _journal_rows(silent_site) == before == []  # no scan made beside the daemon
        if mode == "pings":
            assert [r["op"] for r in daemon.requests if r["op"] != "ping"] == \
                ["scan", "check", "queue", "status"]
            assert all(r["alive_s"] == pytest.approx(TIMEOUT_S / 3) for r in daemon.requests)
    finally:
        daemon.close()


def test_pair_tag_and_venue_conflicts_stop_too(silent_site: DemoSite, short_dir: Path) -> None:
    """The two commands this round moved to the socket: the same bound, no fallback."""
    config = silent_site.config_path
    config.write_text(config.read_text() + '\n[venue]\nname = "hall"\n'
                      'servers = ["nats://127.0.0.1:9"]\n')
    daemon = SilentDaemon(short_dir / "control.sock", "silent")
    try:
        conflicts = run_cli("venue", "conflicts", "--config", str(config),
                            timeout=CLI_DEADLINE_S)
        paired = run_cli("pair-tag", C["valid"], "--reader",
                         f"sim:tag?socket={short_dir / 'tag.sock'}", "--config", str(config),
                         timeout=CLI_DEADLINE_S)
    finally:
        daemon.close()
    for out in (conflicts, paired):
        assert out.returncode == 1, (out.stdout, out.stderr)
        assert f"accepted but did not answer within {TIMEOUT_S:g} s" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    assert "present the tag" not in paired.stdout  # the cache was not opened for the ticket
    assert _journal_rows(silent_site) == []


def test_a_daemon_working_longer_than_the_bound_still_answers(short_dir: Path) -> None:
    """The bound is on silence, not on work: while a handler works (a `sync --full` takes
    minutes), the daemon's keepalive lines keep the command waiting for its answer."""
    path = short_dir / "control.sock"
    worked = threading.Event()

    async def slow(args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(TIMEOUT_S * 4)
        worked.set()
        return {"done": args["n"]}

    loop = asyncio.new_event_loop()
    server = ControlServer(path, {"slow": slow})
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        client = ControlClient(path, None, TIMEOUT_S)
        assert client.call("slow", n=7) == {"done": 7}
        assert worked.is_set()
    finally:
        asyncio.run_coroutine_threadsafe(_closed(server), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _closed(server: ControlServer) -> None:
    """The server closed, and a connection still being served (a client that gave up) ended."""
    await server.close()
    serving = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in serving:
        task.cancel()
    await asyncio.gather(*serving, return_exceptions=True)


def test_the_client_alone_names_the_socket_and_the_bound(short_dir: Path) -> None:
    daemon = SilentDaemon(short_dir / "control.sock", "silent")
    try:
        with pytest.raises(DaemonSilent) as raised:
            ControlClient(daemon.path, 99, TIMEOUT_S).call("sync", full=True)
    finally:
        daemon.close()
    assert raised.value.exit_code == 1
    assert str(raised.value).startswith(f"the daemon at {daemon.path} accepted but did not "
                                        f"answer within {TIMEOUT_S:g} s (whether it did 'sync' "
                                        "is unknown")
