"""A daemon older than the command (gate-agent upgraded, the daemon not restarted): it does
not know the op the command asks for. The command must say so plainly, naming the restart,
exit 2 (`DaemonOutdated`), and must not work on the store itself: that daemon still holds it.

Two daemons on real UNIX sockets in a thread of the test, the commands real `gate-agent`
subprocesses: one speaks as every daemon before `unknown_op` did (its answer's words verbatim,
the only thing a command can go by), the other is this version's `ControlServer` without the
ops (its `unknown_op` field). The ops are the ones the previous release's daemon lacks.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import demo_data
from agent.runtime.control import ControlServer
from tests.commands.test_cli_silent_daemon import (  # noqa: F401 - fixtures
    CLI_DEADLINE_S,
    _closed,
    _journal_rows,
    short_dir,
    silent_site,
)
from tests.conftest import DemoSite, run_cli

C = demo_data.CODES
PID = 4321
# What every daemon before `unknown_op` answered an op it did not have (agent/runtime/control.py
# at 9f5dfd9, the previous release), to the byte.
LEGACY = '{{"ok": false, "error": "this daemon does not know {op!r} (an older version? ' \
         'restart it after an upgrade)", "exit_code": 2}}\n'


class LegacyDaemon:
    """The previous release's control socket: answers `ping`, and any op it lacks (all others
    here) in its own words."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.asked: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn, conn.makefile("rb") as lines:
                op = json.loads(lines.readline())["op"]
                self.asked.append(op)
                answer = json.dumps({"ok": True, "result": {"pid": PID}}) + "\n" \
                    if op == "ping" else LEGACY.format(op=op)
                conn.sendall(answer.encode())

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(10)


class CurrentDaemon:
    """This version's `ControlServer` (its own loop in a thread), with `ping` only."""

    def __init__(self, path: Path):
        self.asked: list[str] = []

        async def ping(args: dict[str, Any]) -> dict[str, Any]:
            self.asked.append("ping")
            return {"pid": PID}

        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(path, {"ping": ping})
        self.loop.run_until_complete(self.server.start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(_closed(self.server), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(params=["previous release", "this version without the op"])
def older(request: pytest.FixtureRequest, short_dir: Path  # noqa: F811
          ) -> Iterator[LegacyDaemon | CurrentDaemon]:
    path = short_dir / "control.sock"
    daemon = LegacyDaemon(path) if request.param == "previous release" else CurrentDaemon(path)
    yield daemon
    daemon.close()


def _says_restart(out: Any, op: str) -> None:
    assert out.returncode == 2, (op, out.stdout, out.stderr)
    said = " ".join(out.stderr.split())
    assert said.startswith(f"gate-agent: error: the running gate-agent daemon (PID {PID}) is "
                           f"older than this command: it does not know {op!r}, so nothing was "
                           "done."), said
    assert "restart it (`systemctl restart gate-agent`; queued scans are kept), then run this " \
           "command again" in said, said
    assert "Traceback" not in out.stderr


def test_commands_newer_than_the_daemon_say_it_must_be_restarted(
        silent_site: DemoSite, short_dir: Path,  # noqa: F811
        older: LegacyDaemon | CurrentDaemon) -> None:
    config = silent_site.config_path
    config.write_text(config.read_text() + '\n[venue]\nname = "hall"\n'
                      'servers = ["nats://127.0.0.1:9"]\n')
    tags = short_dir / "tag.sock"
    paired = run_cli("pair-tag", C["valid"], "--reader", f"sim:tag?socket={tags}",
                     "--config", str(config), timeout=CLI_DEADLINE_S)
    _says_restart(paired, "pair_tag_ticket")
    assert "present the tag" not in paired.stdout and "NOT PAIRED" not in paired.stdout
    queue = run_cli("pair-tag", "--reader", f"sim:tag?socket={tags}", "--config", str(config),
                    stdin=f"{C['valid']}\n{C['valid2']}\n", timeout=CLI_DEADLINE_S)
    _says_restart(queue, "pair_tag_ticket")  # the queue ends at its first attendee
    assert "pairing station closed" not in queue.stdout
    shown = run_cli("devices", "show", "--config", str(config), timeout=CLI_DEADLINE_S)
    _says_restart(shown, "devices_show")
    conflicts = run_cli("venue", "conflicts", "--config", str(config), timeout=CLI_DEADLINE_S)
    _says_restart(conflicts, "venue_conflicts")
    assert "ping" in older.asked  # each command found the daemon on its socket first
    if isinstance(older, LegacyDaemon):
        assert [op for op in older.asked if op != "ping"] == \
            ["pair_tag_ticket", "pair_tag_ticket", "devices_show", "venue_conflicts"]
    assert _journal_rows(silent_site) == []  # nothing done beside the daemon
