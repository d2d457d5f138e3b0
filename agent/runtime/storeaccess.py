"""Who may touch `store.dir`: one daemon at a time, and commands acting as the store's owner.

**One daemon per store.** `<store.dir>/daemon.lock` carries an advisory `flock`. The daemon takes
it exclusively before it opens any file or device and writes its PID into it; a second daemon
finds it taken and exits 2 naming that PID, without having opened a reader (a serial port is not
opened exclusively, and a sim socket would be replaced). CLI commands that work on the store
directly (no daemon running) hold it *shared* while they work, so a daemon started meanwhile
waits for them instead of opening a cache that `sync --full` is about to swap; and a command
that finds the exclusive lock taken talks to the daemon instead (`agent.runtime.controlclient`).
The kernel drops a lock when its holder dies, so a crash never leaves the store locked.

**The store's owner.** Under systemd the daemon runs as its own user and `store.dir` is that
user's. A technician's `sudo gate-agent ...` would create root-owned 0600 files there that the
service then cannot open (a journal it cannot write refuses every scan). `as_store_owner()`
switches the effective uid/gid to the owner of `store.dir` while a command works on it, so every
file it creates (SQLite's -wal/-shm too) belongs to the service; root's rights come back after,
for reading a root-only token file or an import file in root's home.

**One identity at a time, for every thread.** glibc applies `seteuid` to all the threads of a
process, so while one thread acts as the store's owner, every other thread does too. A command
with reader threads (`pair-tag`'s tag reader and scanner, which reconnect by themselves when a
cable is pulled) therefore works on the store in short steps (`as_store_owner` around each,
`acting_on_store(per_step=True)`), and its readers open their devices under `same_identity()`:
a switch and a device open never overlap, so a device only root may open is opened as root,
never tried as the service user (who may not), and no store file is made while a reader holds
root's rights.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pwd
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from agent.access import group_name, owner_of, process_user, read_only_place, user_name
from agent.errors import ConfigError, StoreAccess, StoreBusy

log = logging.getLogger(__name__)

LOCK_FILE = "daemon.lock"
# The user the service runs as: the unit's `User=` (systemd/gate-agent.service), an account
# made by systemd/gate-agent.sysusers. The variable names another (a name or a uid) for a unit
# whose User= was changed.
SERVICE_USER = "gate-agent"
SERVICE_USER_ENV = "GATE_AGENT_SERVICE_USER"
T = TypeVar("T")

# Held by whichever thread switches this process's effective uid/gid, for as long as the switch
# lasts, and by readers while they open a device (see the module docstring).
_IDENTITY = threading.RLock()


def _open_lock(store_dir: Path) -> int:
    """Readable by all (it holds a PID, no secret), so whoever created it, the daemon and the
    commands can both lock it; a flock works on a read-only descriptor too."""
    path = store_dir / LOCK_FILE
    try:
        store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise _unusable(store_dir, exc) from None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except PermissionError:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except PermissionError:
            raise ConfigError(not_mine(path) or _not_writable(store_dir),
                              key="store.dir") from None
        except OSError as exc:
            raise _unusable(store_dir, exc) from None
    except OSError as exc:
        raise _unusable(store_dir, exc) from None
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o644)  # whatever the umask (systemd's UMask=0077)
    return fd


def _not_writable(store_dir: Path) -> str:
    """The store belongs to someone else (a root-made directory): the service cannot even
    look inside, so `not_mine()` of the lock file has nothing to say."""
    who = f"{user_name(os.geteuid())}:{group_name(os.getegid())}"
    return (f"{store_dir} cannot be written by this process ({process_user()}; the directory "
            f"is {owner_of(store_dir)}): `chown -R {who} {store_dir}`, then restart")


def _unusable(store_dir: Path, exc: OSError) -> ConfigError:
    """store.dir cannot hold the lock for another reason than its owner: a read-only file
    system (a path outside the unit's ReadWritePaths), no such parent, no space."""
    if exc.errno == errno.EROFS:
        return ConfigError(read_only_place(store_dir, "store.dir"), key="store.dir")
    if exc.errno == errno.EACCES and not store_dir.exists():
        return ConfigError(f"{store_dir} does not exist and this process ({process_user()}) "
                           f"may not create it: as root, `install -d -o {user_name(os.geteuid())}"
                           f" -g {group_name(os.getegid())} -m700 {store_dir}`",
                           key="store.dir")
    return ConfigError(f"{store_dir}: cannot create {LOCK_FILE}: {exc.strerror}",
                       key="store.dir")


def _pid_in(fd: int) -> int | None:
    raw = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(raw) if raw.isdigit() else None


def _try(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def busy_message(pid: int | None, store_dir: Path) -> str:
    who = f"PID {pid}" if pid else "PID unknown"
    return (f"another gate-agent daemon ({who}) is running on store.dir {store_dir}; stop it "
            "first (`systemctl stop gate-agent`), or give this one its own store.dir")


class DaemonLock:
    """The daemon's exclusive hold on its store, from before any device is opened to exit."""

    def __init__(self, store_dir: Path):
        self.store_dir = Path(store_dir)
        self.fd: int | None = None

    def acquire(self, poll_s: float = 0.2) -> None:
        """Take the lock; StoreBusy naming the running daemon's PID when one holds it. Commands
        holding it shared are waited for (a `sync --full` in progress finishes first)."""
        fd = _open_lock(self.store_dir)
        told = False
        while not _try(fd, fcntl.LOCK_EX):
            if not _try(fd, fcntl.LOCK_SH):  # exclusive holder: a daemon
                pid = _pid_in(fd)
                os.close(fd)
                raise StoreBusy(busy_message(pid, self.store_dir))
            fcntl.flock(fd, fcntl.LOCK_UN)  # only commands hold it: wait for them
            if not told:
                log.warning("waiting for a gate-agent command working on %s to finish",
                            self.store_dir)
                told = True
            time.sleep(poll_s)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # a read-only lock file (left by root): locked all the same
            log.warning("cannot record this daemon's PID: %s", not_mine(self.store_dir /
                                                                        LOCK_FILE))
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def daemon_pid(store_dir: Path) -> int | None:
    """The running daemon's PID, or None when no daemon holds the store (read-only check)."""
    try:
        fd = os.open(Path(store_dir) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if _try(fd, fcntl.LOCK_SH):
            return None
        return _pid_in(fd) or 0
    finally:
        os.close(fd)  # also releases the probe's shared lock


@contextmanager
def command_lock(store_dir: Path) -> Iterator[int | None]:
    """Yields None while holding the store shared (no daemon: act directly), or the running
    daemon's PID (then nothing may be done to the store directly: ask the daemon)."""
    fd = _open_lock(Path(store_dir))
    try:
        if not _try(fd, fcntl.LOCK_SH):
            yield _pid_in(fd) or 0
            return
        yield None
    finally:
        os.close(fd)


def store_owner(store_dir: Path) -> tuple[int, int] | None:
    """(uid, gid) to act as when this process is root and `store_dir` belongs to another user;
    None when nothing needs switching (not root, root's own store, or no store yet)."""
    if os.geteuid() != 0:
        return None
    try:
        info = Path(store_dir).stat()
    except OSError:
        return None
    return None if info.st_uid == 0 else (info.st_uid, info.st_gid)


def refuse_root_daemon(store_dir: Path, config_path: Path | str | None) -> None:
    """The daemon is not a command: it runs for hours and creates files all along (the cache and
    journal at start in an empty store, a rebuilt cache, moved-aside damaged ones), so switching
    its uid for a moment like `as_store_owner` cannot keep them the service's. Root starting it
    on the service's store is refused instead (ConfigError, exit 2) before anything is opened:
    the files it made would be root's, and the service would refuse every scan after it."""
    owner = store_owner(store_dir)
    if owner is None:
        return
    uid, _ = owner
    name = user_name(uid)
    raise ConfigError(
        f"store.dir {store_dir} belongs to {name} (uid {uid}): the daemon must run as that "
        f"user, or the files it creates there become root's and the service cannot open them. "
        f"Start the service (`systemctl start gate-agent`), or in the foreground: "
        f"`sudo -u {name} gate-agent run" + (f" -c {config_path}`" if config_path else "`"))


def service_account() -> tuple[str, int, int] | None:
    """(name, uid, gid) of the service's user, None when this machine has no such account (a
    development machine, or a gate whose daemon runs as root by design). A bare uid given in
    $GATE_AGENT_SERVICE_USER needs no account (its gid is taken to be the same number)."""
    wanted = os.environ.get(SERVICE_USER_ENV) or SERVICE_USER
    try:
        entry = pwd.getpwuid(int(wanted)) if wanted.isdigit() else pwd.getpwnam(wanted)
    except KeyError:
        return (wanted, int(wanted), int(wanted)) if wanted.isdigit() else None
    return entry.pw_name, entry.pw_uid, entry.pw_gid


def store_for_the_service(store_dir: Path) -> None:
    """Root about to work on `store_dir` itself (no daemon runs): every file it makes there
    must be the service's, or the service cannot open them (a journal it cannot open refuses
    every scan). `as_store_owner` sees to that once the directory is the service's; here,
    before, the two cases where it is not:
    - no store.dir yet: made as systemd's `StateDirectory=` makes it, owned by the service's
      user, 0700 (its missing parents root's, 0755, as /var/lib is), so that root's command
      then works in it as that user;
    - a store.dir of root's: refused (StoreAccess, exit 2) naming it, the service's user and
      the `chown`. Not chowned here: a technician's command does not take a directory away
      from whoever owns it on a guess.
    Nothing happens when this process is not root, or the machine has no service account
    (then root's store is the store of a daemon run as root)."""
    account = service_account()
    if os.geteuid() != 0 or account is None or account[1] == 0:
        return
    name, uid, gid = account
    store_dir = Path(os.path.abspath(store_dir))
    if not store_dir.exists():
        for parent in reversed(store_dir.parents):
            if not parent.exists():
                parent.mkdir(mode=0o755)
                parent.chmod(0o755)  # whatever root's umask
        store_dir.mkdir(mode=0o700)
        os.chown(store_dir, uid, gid)
        store_dir.chmod(0o700)
        log.info("created store.dir %s for the service's user %s (uid %d), as systemd's "
                 "StateDirectory= would", store_dir, name, uid)
        return
    if store_dir.stat().st_uid == 0:
        raise StoreAccess(
            f"store.dir {store_dir} belongs to root ({owner_of(store_dir)}) while the service "
            f"runs as {name} (uid {uid}; the unit's User=): the files this command would make "
            f"there would be root's and the service could not open them. Give the store to "
            f"the service (as root): `chown -R {name}:{group_name(gid)} {store_dir} && chmod "
            f"700 {store_dir}`, then run this command again")


@contextmanager
def as_store_owner(store_dir: Path) -> Iterator[None]:
    """Work with the effective uid/gid of `store_dir`'s owner (see the module docstring).
    Nested, or in a process that is not root, it changes nothing."""
    with _IDENTITY:  # before the check: no other thread is between switches meanwhile
        owner = store_owner(store_dir)
        if owner is None:
            yield
            return
        uid, gid = owner
        old_gid = os.getegid()
        os.setegid(gid)
        try:
            os.seteuid(uid)
            try:
                yield
            finally:
                os.seteuid(0)
        finally:
            os.setegid(old_gid)


def as_store_owner_call(store_dir: Path, fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` as `store_dir`'s owner: one step of a command that works in steps."""
    with as_store_owner(store_dir):
        return fn(*args)


@contextmanager
def same_identity() -> Iterator[None]:
    """No switch of this process's identity while held: what a reader opens its device under
    (`drivers.base.Reader.open_guard`). It waits for a store step in another thread to end,
    so a command must not hold `as_store_owner` for longer than a step while readers run."""
    with _IDENTITY:
        yield


@contextmanager
def own_rights() -> Iterator[None]:
    """Inside `as_store_owner`: this process's own rights back for a moment (to read a token
    file only root may read)."""
    with _IDENTITY:
        uid, gid = os.geteuid(), os.getegid()
        if (uid, gid) == (os.getuid(), os.getgid()):
            yield
            return
        os.seteuid(os.getuid())
        os.setegid(os.getgid())
        try:
            yield
        finally:
            os.setegid(gid)
            os.seteuid(uid)


def not_mine(path: Path) -> str | None:
    """Why this process cannot use `path` because of its owner or mode (with the fix to type),
    or None: a file someone's `sudo` left root-owned is not a damaged file."""
    try:
        info = Path(path).stat()
    except OSError:
        return None
    if info.st_uid == os.geteuid() or os.access(path, os.R_OK | os.W_OK):
        return None  # ours (a read-only disk, say, is another problem, reported as such)
    return (f"{path} belongs to uid {info.st_uid} (mode {info.st_mode & 0o777:o}) and this "
            f"service runs as uid {os.geteuid()}: `chown -R {os.geteuid()}:{os.getegid()} "
            f"{Path(path).parent}`, then restart")
