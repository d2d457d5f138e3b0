"""The commands' side of the control socket, and the choice between "ask the daemon" and "do
it myself".

`acting_on_store(config)` is how every store-changing command starts: with a daemon running on
the store it yields a `ControlClient` (the daemon does the work as itself); without one it yields
None while the command holds the store's shared lock and acts as the store's owner (see
`agent.runtime.storeaccess`), so files it creates belong to the service's user either way.
"""

from __future__ import annotations

import json
import shlex
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.errors import ControlError
from agent.runtime.control import socket_path
from agent.runtime.storeaccess import as_store_owner, command_lock, daemon_pid


def _retry_hint() -> str:
    argv = ["gate-agent", *sys.argv[1:]] if sys.argv and sys.argv[0] else ["gate-agent"]
    return "sudo " + shlex.join(argv)


class ControlClient:
    """One request per connection, one JSON answer (see `agent.runtime.control`)."""

    def __init__(self, path: Path, pid: int | None):
        self.path = path
        self.pid = pid

    def call(self, op: str, on_progress: Callable[[dict[str, Any]], None] | None = None,
             **args: Any) -> Any:
        """The daemon's result; ControlError carrying the daemon's message and exit code.
        `on_progress`: called with each progress line the daemon sends before its answer."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                sock.connect(str(self.path))
            except OSError as exc:
                raise ControlError(
                    f"a gate-agent daemon (PID {self.pid or 'unknown'}) runs on this store but "
                    f"its control socket {self.path} cannot be used ({exc.strerror}). Run as "
                    f"root or as a member of the socket's group ([control] group): "
                    f"`{_retry_hint()}`; if the daemon is just starting, try again in a few "
                    "seconds", exit_code=2) from None
            request: dict[str, Any] = {"op": op, "args": args}
            if on_progress is not None:
                request["stream"] = True
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as stream:
                line = stream.readline()
                while on_progress is not None and line and "progress" in json.loads(line):
                    on_progress(json.loads(line)["progress"])
                    line = stream.readline()
        finally:
            sock.close()
        if not line:
            raise ControlError(f"the daemon (PID {self.pid or 'unknown'}) closed the control "
                               f"socket without answering {op!r}; see its log "
                               "(`journalctl -u gate-agent`)")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise ControlError(str(answer.get("error")), int(answer.get("exit_code") or 1))
        return answer.get("result")


@contextmanager
def acting_on_store(config: Config) -> Iterator[ControlClient | None]:
    """A client for the running daemon, or None: act directly (lock held, as the owner)."""
    with as_store_owner(config.store_dir), command_lock(config.store_dir) as pid:
        if pid is None:
            yield None
            return
    yield ControlClient(socket_path(config), pid)


def running_daemon(config: Config) -> ControlClient | None:
    """A client when a daemon runs on the store (read-only commands: status, queue)."""
    pid = daemon_pid(config.store_dir)
    return None if pid is None else ControlClient(socket_path(config), pid)
