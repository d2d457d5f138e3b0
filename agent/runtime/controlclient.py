"""The commands' side of the control socket, and the choice between "ask the daemon" and "do
it myself".

**Is a daemon running?** The control socket is asked first: a connection proves the daemon is
up, whoever this user is. A technician in the socket's group ([control] group) may use it
while `store.dir` (0700, the service user's) is closed to them, so the store's `daemon.lock`
cannot be the first test: it is looked at only when no socket answers (a daemon still
starting, or a socket this user may not open). A command that then has to work on the store
itself, and may not, stops before doing anything with `StoreAccess`: it needs the store's
owner (`sudo`), or the running daemon.

`acting_on_store(config)` is how every store-changing command starts: with a daemon running on
the store it yields a `ControlClient` (the daemon does the work as itself); without one it yields
None while the command holds the store's shared lock and acts as the store's owner (see
`agent.runtime.storeaccess`), so files it creates belong to the service's user either way.
`reading_store(config)` is the same for commands that only read (no lock).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.errors import ControlError, StoreAccess
from agent.runtime.control import socket_path
from agent.runtime.storeaccess import as_store_owner, command_lock, daemon_pid

PROBE_TIMEOUT_S = 5.0  # the ping that asks whether a daemon answers (it answers at once)


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
        try:
            sock = _connect(self.path, None)
        except OSError as exc:
            raise ControlError(
                f"a gate-agent daemon (PID {self.pid or 'unknown'}) runs on this store but "
                f"its control socket {self.path} cannot be used ({exc.strerror}). Run as "
                f"root or as a member of the socket's group ([control] group): "
                f"`{_retry_hint()}`; if the daemon is just starting, try again in a few "
                "seconds", exit_code=2) from None
        try:
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


def _connect(path: Path, timeout_s: float | None) -> socket.socket:
    """A connection to the control socket at `path`; OSError when none can be made."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def answering_daemon(config: Config) -> tuple[ControlClient | None, str]:
    """A client for the daemon answering on the control socket, or None and why not (for the
    message of a command that then cannot work on the store itself)."""
    path = socket_path(config)
    try:
        sock = _connect(path, PROBE_TIMEOUT_S)
    except OSError as exc:  # none there, a stale file (refused), or not ours to open
        return None, f"{path}: {exc.strerror or exc}"
    pid: int | None = None
    try:  # its PID for the messages; connected is proof enough that it runs
        sock.sendall(json.dumps({"op": "ping", "args": {}}).encode() + b"\n")
        with sock.makefile("rb") as stream:
            answer = json.loads(stream.readline() or b"{}")
        pid = int((answer.get("result") or {}).get("pid") or 0) or None
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    finally:
        sock.close()
    return ControlClient(path, pid), ""


def _may_use_store(config: Config, why_no_daemon: str) -> None:
    """StoreAccess, before anything is done, when this user can neither act as the store's
    owner (root does) nor open `store.dir` itself."""
    store = config.store_dir
    if os.geteuid() == 0:  # acts as the store's owner (agent.runtime.storeaccess)
        return
    here = store if store.exists() else next((p for p in store.parents if p.exists()), store)
    if os.access(here, os.R_OK | os.W_OK | os.X_OK):
        return
    raise StoreAccess(
        f"no gate-agent daemon answers on its control socket ({why_no_daemon}), so this "
        f"command would work on store.dir {store} itself, which uid {os.geteuid()} may not "
        f"use: it needs the store's owner (`{_retry_hint()}`), or the running daemon "
        "(`systemctl start gate-agent`; [control] socket and group let technicians use it "
        "without sudo)")


@contextmanager
def acting_on_store(config: Config) -> Iterator[ControlClient | None]:
    """A client for the running daemon, or None: act directly (lock held, as the owner)."""
    daemon, why = answering_daemon(config)
    if daemon is not None:
        yield daemon
        return
    _may_use_store(config, why)
    with as_store_owner(config.store_dir), command_lock(config.store_dir) as pid:
        if pid is None:
            yield None
            return
    yield ControlClient(socket_path(config), pid)  # running, but its socket did not answer


@contextmanager
def reading_store(config: Config) -> Iterator[ControlClient | None]:
    """`acting_on_store` for commands that only read: no lock (nothing is changed)."""
    daemon, why = _running(config)
    if daemon is not None:
        yield daemon
        return
    _may_use_store(config, why)
    with as_store_owner(config.store_dir):
        yield None


def running_daemon(config: Config) -> ControlClient | None:
    """A client when a daemon runs on the store (read-only commands: status, queue)."""
    return _running(config)[0]


def _running(config: Config) -> tuple[ControlClient | None, str]:
    """The daemon answering on the socket, else the one holding the store's lock (its
    socket then says why it cannot be used), else None and why no socket answered."""
    daemon, why = answering_daemon(config)
    if daemon is not None:
        return daemon, ""
    pid = daemon_pid(config.store_dir)
    return (None, why) if pid is None else (ControlClient(socket_path(config), pid), "")
