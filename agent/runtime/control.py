"""The daemon's control socket: the one way technicians' commands change a running gate.

A UNIX stream socket (`[control] socket`, default `<store.dir>/control.sock`), mode 0660 and
owned by the service user (group `[control] group` when set: the technicians). Each connection
carries one request line and gets one answer line, both JSON::

    -> {"op": "scan", "args": {"codes": ["ABC"], "lane": "entry"}}
    <- {"ok": true, "result": {...}}   or   {"ok": false, "error": "...", "exit_code": 2}

An op this daemon does not have (a command newer than the daemon: installed, not restarted)
is answered `{"ok": false, ..., "unknown_op": OP}`; the command says the daemon must be
restarted (`DaemonOutdated`).

A request with `"stream": true` may get progress lines before its answer, for a command that
shows a progress bar while the daemon works (`sync`): `<- {"progress": {...}}` (a handler
sends them with `progress_sink()`; a request without `stream` never gets one).

A request with `"alive_s": S` gets `<- {"alive": true}` every S seconds while its handler
works: the command bounds every wait by `[control] answer_timeout_s` (a daemon whose loop is
stuck accepts connections, in the kernel's backlog, and never answers), and a `sync --full`
that works for minutes still answers within that bound, line by line.

The daemon does the work as itself (its user, its open stores, its platform client and rate
governor), so a `sudo gate-agent scan` never leaves a root-owned file in the state directory,
a `sync --full` swaps the cache through the daemon's own swap (never under its open WAL), and a
new token from `gate-agent login` is used from the next request on, whatever systemd's
`LoadCredential=` copied at start. Only filesystem permissions guard the socket; the peer's uid
is logged with every state-changing request.
"""

from __future__ import annotations

import contextvars
import errno
import grp
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.access import owner_of, process_user, read_only_place, user_name
from agent.config import Config
from agent.errors import ConfigError, GateAgentError, redact

if TYPE_CHECKING:  # asyncio is loaded by the daemon's side only: a command's client reads
    import asyncio  # READ_ONLY and socket_path from here and never needs it (20-40 ms)

log = logging.getLogger("gate_agent.control")

SOCKET_NAME = "control.sock"
MAX_REQUEST = 256 * 1024 * 1024  # an import of a 1M-item ticket file fits
READ_ONLY = frozenset({"ping", "status", "queue", "check", "events", "venue_conflicts",
                       "pair_tag_ticket", "devices_show"})
ALIVE_LINE = b'{"alive": true}\n'
MIN_ALIVE_S = 0.05

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
ProgressSink = Callable[[dict[str, Any]], None]

_progress: contextvars.ContextVar[ProgressSink | None] = contextvars.ContextVar(
    "control_progress", default=None)


def progress_sink() -> ProgressSink | None:
    """Where the running handler's request wants progress lines (thread-safe), or None."""
    return _progress.get()


def socket_path(config: Config) -> Path:
    configured = config.control["socket"]
    return Path(configured).expanduser() if configured else config.store_dir / SOCKET_NAME


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    return int(struct.unpack("3i", raw)[1])


class ControlServer:
    """Serves `handlers` (op name -> coroutine taking the request's args) on a UNIX socket."""

    def __init__(self, path: Path, handlers: dict[str, Handler], group: str = ""):
        self.path = path
        self.handlers = handlers
        self.group = group
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        import asyncio

        gid = -1
        if self.group:
            try:
                gid = grp.getgrnam(self.group).gr_gid
            except KeyError:
                raise ConfigError(f"no group named {self.group!r}", key="control.group") from None
        if len(os.fsencode(self.path)) >= 108:
            raise ConfigError(f"socket path {self.path} is longer than a UNIX socket allows "
                              "(107 bytes); set [control] socket to a shorter path",
                              key="control.socket")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.path.unlink(missing_ok=True)  # a stale one: this daemon holds the store's lock
            self.server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                          limit=MAX_REQUEST)
        except OSError as exc:
            raise self._cannot_place(exc) from None
        os.chmod(self.path, 0o660)
        if gid != -1:
            try:
                os.chown(self.path, -1, gid)
            except OSError as exc:
                self.server.close()
                self.path.unlink(missing_ok=True)
                raise self._cannot_give(gid, exc) from None
        log.info("control socket on %s", self.path)

    def _cannot_place(self, exc: OSError) -> ConfigError:
        """The socket's directory is read-only (outside the unit's writable paths) or not ours."""
        if exc.errno == errno.EROFS:
            return ConfigError(read_only_place(self.path.parent, "control.socket"),
                               key="control.socket")
        return ConfigError(f"cannot create the control socket {self.path}: {exc.strerror} "
                           f"(this process runs as {process_user()}; {self.path.parent} is "
                           f"{owner_of(self.path.parent)})", key="control.socket")

    def _cannot_give(self, gid: int, exc: OSError) -> ConfigError:
        """Why the socket could not be given to `[control] group`, from the real errno: a
        service user outside the group, or a chown the system call filter refuses (the
        unit's `~@privileged` includes @chown; the unit allows it again with
        `SystemCallFilter=@chown`)."""
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        failed = f"chown of {self.path} to group {self.group!r} failed: {code} ({exc.strerror})"
        if exc.errno == errno.EPERM and gid not in (os.getegid(), *os.getgroups()):
            return ConfigError(
                f"{failed}: this process ({process_user()}) is not a member of group "
                f"{self.group!r}, so it cannot give it the control socket: add it "
                f"(`usermod -aG {self.group} {user_name(os.geteuid())}`, or "
                f"`SupplementaryGroups={self.group}` in a drop-in: `systemctl edit "
                "gate-agent`) and restart, or leave the key empty",
                key="control.group")
        if exc.errno == errno.EPERM:
            return ConfigError(
                f"{failed} although this process ({process_user()}) is a member of "
                f"{self.group!r}: a system call filter refuses chown (the unit needs "
                "`SystemCallFilter=@chown` after its `SystemCallFilter=~@privileged` line, as "
                "systemd/gate-agent.service ships it)", key="control.group")
        return ConfigError(failed, key="control.group")

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import asyncio

        try:
            answer = await self._answer(reader, writer)
            await asyncio.sleep(0)  # progress lines scheduled before the answer go out first
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the command went away (Ctrl-C): the work it asked for is done regardless
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> dict[str, Any]:
        try:
            request = json.loads(await reader.readline())
            op, args = request["op"], request.get("args") or {}
            if not isinstance(args, dict):
                raise TypeError("args must be an object")
        except (ValueError, KeyError, TypeError) as exc:
            return {"ok": False, "error": f"bad control request ({exc})", "exit_code": 2}
        handler = self.handlers.get(op)
        if handler is None:  # the words are what every earlier daemon answers (read by
            # commands that predate `unknown_op`: agent.runtime.controlclient)
            return {"ok": False, "error": f"this daemon does not know {op!r} (an older "
                    "version? restart it after an upgrade)", "exit_code": 2,
                    "unknown_op": op}
        if op not in READ_ONLY:
            log.info("control: %s requested by uid %s", op, _peer_uid(writer))
        if request.get("stream") is True:
            _progress.set(_line_writer(writer))
        alive = _keepalive(writer, request.get("alive_s"))
        try:
            return {"ok": True, "result": await handler(args)}
        except GateAgentError as exc:
            return {"ok": False, "error": redact(str(exc)), "exit_code": exc.exit_code}
        except Exception as exc:  # noqa: BLE001 - a bug must not take the daemon down
            log.exception("control: %s failed", op)
            return {"ok": False, "error": redact(f"internal error in the daemon: {exc!r}"),
                    "exit_code": 70}
        finally:
            if alive is not None:
                alive.cancel()


def _keepalive(writer: asyncio.StreamWriter, every: Any) -> asyncio.Task[None] | None:
    """`{"alive": true}` every `every` seconds from this loop while the handler works (see the
    module docstring); None when the request did not ask (an older command)."""
    if isinstance(every, bool) or not isinstance(every, int | float) or not every > 0:
        return None
    import asyncio

    interval = max(MIN_ALIVE_S, float(every))

    async def beat() -> None:
        while not writer.is_closing():
            await asyncio.sleep(interval)
            writer.write(ALIVE_LINE)

    return asyncio.create_task(beat(), name="control keepalive")


def _line_writer(writer: asyncio.StreamWriter) -> ProgressSink:
    """Progress lines to one connection, from the loop or any thread, in order."""
    import asyncio

    loop = asyncio.get_running_loop()

    def send(progress: dict[str, Any]) -> None:
        line = json.dumps({"progress": progress}).encode() + b"\n"
        if not writer.is_closing():
            loop.call_soon_threadsafe(writer.write, line)

    return send
