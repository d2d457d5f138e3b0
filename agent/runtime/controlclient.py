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
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from agent.access import owner_of, user_name
from agent.config import Config
from agent.errors import (
    ControlError,
    DaemonOutdated,
    DaemonSilent,
    GateAgentError,
    StoreAccess,
)
from agent.runtime.control import READ_ONLY, socket_path
from agent.runtime.storeaccess import (
    as_store_owner,
    command_lock,
    daemon_pid,
    store_for_the_service,
)

ALIVE_EVERY = 3  # keepalive lines asked for per answer_timeout_s (a late one still fits)


def _command() -> str:
    return shlex.join(["gate-agent", *sys.argv[1:]] if sys.argv and sys.argv[0] else
                      ["gate-agent"])


def _retry_hint() -> str:
    return "sudo " + _command()


def _as_owner_hint(path: Path) -> str:
    """`sudo -u gate-agent gate-agent ...` for the owner of `path` (`'#4242'` for a uid with
    no account, as sudo spells it); the plain `sudo` form when the owner cannot be seen."""
    try:
        uid = path.stat().st_uid
    except OSError:
        return _retry_hint()
    name = user_name(uid)
    return f"sudo -u {shlex.quote(name if name != str(uid) else f'#{uid}')} {_command()}"


class ControlClient:
    """One request per connection, one JSON answer (see `agent.runtime.control`).

    Every wait is bounded by `timeout_s` (`[control] answer_timeout_s`): the connect, and each
    line of the answer (the daemon sends a keepalive line every `timeout_s / 3` while it
    works). A daemon that accepts and stays silent is a `DaemonSilent` error, never a command
    that waits for ever, and never a reason to open the store directly: it still holds it."""

    def __init__(self, path: Path, pid: int | None, timeout_s: float):
        self.path = path
        self.pid = pid
        self.timeout_s = timeout_s

    def call(self, op: str, on_progress: Callable[[dict[str, Any]], None] | None = None,
             **args: Any) -> Any:
        """The daemon's result; ControlError carrying the daemon's message and exit code.
        `on_progress`: called with each progress line the daemon sends before its answer."""
        try:
            sock = self._connect(op)
        except DaemonSilent:
            raise
        except OSError as exc:
            raise ControlError(
                f"a gate-agent daemon (PID {self.pid or 'unknown'}) runs on this store but "
                f"its control socket {self.path} cannot be used ({exc.strerror}). Run as "
                f"root or as a member of the socket's group ([control] group): "
                f"`{_retry_hint()}`; if the daemon is just starting, try again in a few "
                "seconds", exit_code=2) from None
        return self._ask(sock, op, on_progress, args)

    def _connect(self, op: str) -> socket.socket:
        """A connection; DaemonSilent when a listener does not take it in time (its backlog
        full: nobody accepts), OSError when there is none to be had (see `answering_daemon`)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(str(self.path))
        except (TimeoutError, BlockingIOError):
            sock.close()
            raise self._silent(op, "did not accept the connection") from None
        except OSError:
            sock.close()
            raise
        return sock

    def _ask(self, sock: socket.socket, op: str,
             on_progress: Callable[[dict[str, Any]], None] | None, args: dict[str, Any]) -> Any:
        request: dict[str, Any] = {"op": op, "args": args,
                                   "alive_s": self.timeout_s / ALIVE_EVERY}
        if on_progress is not None:
            request["stream"] = True
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            answer = _answer_line(sock, on_progress)
        except TimeoutError:
            raise self._silent(op, "accepted but did not answer") from None
        finally:
            sock.close()
        if answer is None:
            raise ControlError(f"the daemon (PID {self.pid or 'unknown'}) closed the control "
                               f"socket without answering {op!r}; see its log "
                               "(`journalctl -u gate-agent`)")
        if not answer.get("ok"):
            if _unknown_op(answer, op):
                raise self._outdated(op)
            raise ControlError(str(answer.get("error")), int(answer.get("exit_code") or 1))
        return answer.get("result")

    def _outdated(self, op: str) -> DaemonOutdated:
        return DaemonOutdated(
            f"the running gate-agent daemon (PID {self.pid or 'unknown'}) is older than this "
            f"command: it does not know {op!r}, so nothing was done. gate-agent was upgraded "
            "and the daemon still runs the version it started with: restart it (`systemctl "
            "restart gate-agent`; queued scans are kept), then run this command again")

    def _silent(self, op: str, what: str) -> DaemonSilent:
        done = "" if op in READ_ONLY else \
            f" (whether it did {op!r} is unknown: `gate-agent status` once it answers)"
        return DaemonSilent(
            f"the daemon at {self.path} {what} within {self.timeout_s:g} s{done}. It still "
            "holds the store, so this command does not work on it directly; see the daemon's "
            "log (`journalctl -u gate-agent`) and restart it if it stays silent (`systemctl "
            "restart gate-agent`); [control] answer_timeout_s sets the wait")


def _unknown_op(answer: dict[str, Any], op: str) -> bool:
    """The daemon does not have `op`: said by `unknown_op`, or, by a daemon older than that
    field, in the words every earlier daemon used (agent.runtime.control)."""
    if "unknown_op" in answer:
        return bool(answer["unknown_op"] == op)
    return str(answer.get("error", "")).startswith(f"this daemon does not know {op!r}")


def _answer_line(sock: socket.socket, on_progress: Callable[[dict[str, Any]], None] | None
                 ) -> dict[str, Any] | None:
    """The answer, after the keepalive and progress lines before it; None when the daemon
    closed the connection first. TimeoutError when a line is later than the socket's timeout."""
    with sock.makefile("rb") as stream:
        while line := stream.readline():
            message = json.loads(line)
            if "alive" in message:
                continue
            if "progress" in message:
                if on_progress is not None:
                    on_progress(message["progress"])
                continue
            return dict(message)
    return None


def answering_daemon(config: Config) -> tuple[ControlClient | None, str]:
    """A client for the daemon answering on the control socket, or None and why not (for the
    message of a command that then cannot work on the store itself). DaemonSilent when one
    accepts but does not answer a ping within `[control] answer_timeout_s`."""
    client = ControlClient(socket_path(config), None, config.control["answer_timeout_s"])
    try:
        sock = client._connect("ping")
    except OSError as exc:  # none there, a stale file (refused), or not ours to open
        return None, f"{client.path}: {exc.strerror or exc}"
    try:  # its PID for the messages; connected is proof enough that it runs
        client.pid = int((client._ask(sock, "ping", None, {}) or {}).get("pid") or 0) or None
    except DaemonSilent:
        raise
    except (GateAgentError, OSError, ValueError, TypeError, AttributeError):
        pass
    return client, ""


def _may_use_store(config: Config, why_no_daemon: str) -> None:
    """StoreAccess, before anything is done, when this user can neither act as the store's
    owner (root does) nor work on `store.dir` as its owner. A user who may enter and write a
    store that is another's (a directory opened to a group) is refused too: the cache's -shm,
    a new journal would be that user's, 0600, and the service could not open them (a journal
    it cannot open refuses every scan)."""
    store = config.store_dir
    uid = os.geteuid()
    if uid == 0:  # acts as the store's owner (agent.runtime.storeaccess)
        return
    here = store if store.exists() else next((p for p in store.parents if p.exists()), store)
    if not os.access(here, os.R_OK | os.W_OK | os.X_OK):
        why = f"which uid {uid} may not use ({here} is {owner_of(here)})"
    elif here == store and _owner_uid(store) not in (uid, None):
        why = (f"which belongs to another user ({owner_of(store)}): the files uid {uid} "
               "made there would be its own, and the store's owner (the service) could not "
               "open them")
    else:
        return
    raise StoreAccess(
        f"no gate-agent daemon answers on its control socket ({why_no_daemon}), so this "
        f"command would work on store.dir {store} itself, {why}: it needs the store's owner "
        f"(`{_as_owner_hint(here)}`, or `{_retry_hint()}`: root works on the store as its "
        "owner and may also read a root-only token file), or the running daemon (`systemctl "
        "start gate-agent`; [control] socket and group let technicians use it without sudo)")


def _owner_uid(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except OSError:
        return None


@contextmanager
def acting_on_store(config: Config, *, per_step: bool = False
                    ) -> Iterator[ControlClient | None]:
    """A client for the running daemon, or None: act directly (lock held, as the owner).

    `per_step`: the command switches to the store's owner for each of its steps itself
    (`as_store_owner`) and is itself between them; for a command whose reader threads must
    keep this process's rights for the whole session (`pair-tag`; see agent.runtime.storeaccess)."""
    daemon, why = answering_daemon(config)
    if daemon is not None:
        yield daemon
        return
    _may_use_store(config, why)
    # root acting on the store itself: a store.dir not made yet is made the service's, one of
    # root's is refused, so that no file this command makes is root's (the service could not
    # open it: a journal it cannot open refuses every scan)
    store_for_the_service(config.store_dir)
    with ExitStack() as held:
        if not per_step:
            held.enter_context(as_store_owner(config.store_dir))
        with as_store_owner(config.store_dir):  # daemon.lock, if it is new, is the owner's
            pid = held.enter_context(command_lock(config.store_dir))
        if pid is None:
            yield None
            return
    # running, but its socket did not answer
    yield ControlClient(socket_path(config), pid, config.control["answer_timeout_s"])


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
    if pid is None:
        return None, why
    return ControlClient(socket_path(config), pid, config.control["answer_timeout_s"]), ""
