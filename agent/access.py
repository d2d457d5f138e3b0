"""Why this process cannot use a path, said so that the technician at the gate can fix it.

The daemon runs as its own user (the unit's `User=gate-agent`) while technicians install files
as root, and the unit's `ProtectSystem=strict` makes everything outside the unit's own
directories read-only. A bare "Permission denied" or "Read-only file system" leaves them
guessing which user, which file and which setting: these messages name the user the process
runs as, the path's owner and mode, and the command or unit setting that fixes it.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import struct
from functools import cache
from pathlib import Path
from typing import Any

# statx(2) (linux/stat.h): the file's attributes, asked by name. `stx_attributes` is the u64
# at offset 8 of `struct statx` (256 bytes), `stx_attributes_mask` (which ones the file system
# reports) the u64 at offset 56.
_AT_FDCWD, _STATX_BASIC_STATS, _STATX_SIZE = -100, 0x7FF, 256
_STATX_ATTR_IMMUTABLE, _STATX_ATTR_APPEND = 0x10, 0x20
# Below this, a failed write in store.dir is taken for a full disk (SQLite grows a file a page
# or a WAL frame at a time; a few pages free is as good as none for the next commit)
_FULL_BELOW_BYTES = 64 * 1024


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)  # no account (a bare uid, as in tests): the number works for chown


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def process_user() -> str:
    """`user gate-agent (uid 995, group gate-agent)`: who this process acts as."""
    uid, gid = os.geteuid(), os.getegid()
    return f"user {user_name(uid)} (uid {uid}, group {group_name(gid)})"


def owner_of(path: Path) -> str:
    """`root:root, mode 640`, or why it cannot be told."""
    try:
        info = path.stat()
    except OSError as exc:
        return f"unknown ({exc.strerror})"
    return (f"{user_name(info.st_uid)}:{group_name(info.st_gid)}, "
            f"mode {info.st_mode & 0o777:o}")


def unreadable_config(path: Path) -> str:
    """A config file this process may not read: the service user, the owners, and the
    `chgrp`/`chmod` that lets the service's group read it (README, "Installing")."""
    path = Path(os.path.abspath(path))
    group = group_name(os.getegid())
    where = [f"{path.parent} is {owner_of(path.parent)}"]
    if os.access(path.parent, os.X_OK):  # else the file's owner cannot be seen
        where.append(f"{path.name} is {owner_of(path)}")
    return (f"cannot read: Permission denied; this process runs as {process_user()}; "
            f"{'; '.join(where)}. Let the service's group read both (as root): "
            f"`chgrp {group} {path.parent} {path} && chmod 750 {path.parent} && "
            f"chmod 640 {path}`")


def read_only_place(directory: Path, key: str) -> str:
    """A directory on a read-only file system: under the unit, everything but its own
    directories (`StateDirectory=`, `RuntimeDirectory=`) is read-only (`ProtectSystem=strict`).
    `ReadWritePaths=` needs the directory to exist when the unit starts, hence the `install`."""
    user, group = user_name(os.geteuid()), group_name(os.getegid())
    return (f"{directory} is on a read-only file system: under the systemd unit "
            f"(ProtectSystem=strict) only /var/lib/gate-agent and /run/gate-agent are writable. "
            f"Create it and add it to the unit (as root): `install -d -o {user} -g {group} "
            f"-m700 {directory}`, then `systemctl edit gate-agent` with `[Service]` "
            f"`ReadWritePaths={directory}`; or leave {key} at its default")


def _usable(path: Path, mode: int) -> bool:
    """os.access by this process's effective ids (a command may act as the store's owner)."""
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)


@cache
def _statx() -> Any:
    """libc's statx, or None where it is missing (glibc before 2.28, another libc)."""
    try:
        call = ctypes.CDLL(None, use_errno=True).statx
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    call.restype = ctypes.c_int
    return call


def immutable(path: Path) -> bool:
    """`chattr +i` (or `+a`) on `path`: no one, root included, may write it, whatever its owner
    and mode say (os.access answers "no" as for a file of someone else's).

    Asked with statx(2), by the file's name, never by opening it: the FS_IOC_GETFLAGS ioctl
    needs a descriptor, and closing any descriptor of a file drops every POSIX lock this
    process holds on it — the locks of every SQLite connection of the process to that
    database, its -wal and its -shm (sqlite.org/howtocorrupt.html, 2.2). This is asked after
    a store's connections are open (each VenueStore's open, every write failure's message):
    another process would then find the file unused, reset the WAL index under them and
    corrupt it (tests/store/test_access_keeps_locks.py). Where statx is missing, or the file
    system does not report these attributes, the answer is "no": the store's own error still
    says what failed."""
    call = _statx()
    if call is None:
        return False
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if call(_AT_FDCWD, os.fsencode(path), 0, _STATX_BASIC_STATS, buf) != 0:
        return False
    attributes, = struct.unpack_from("=Q", buf, 8)
    reported, = struct.unpack_from("=Q", buf, 56)
    wanted = _STATX_ATTR_IMMUTABLE | _STATX_ATTR_APPEND
    return bool(attributes & reported & wanted)


def _immutable_one(path: Path) -> str | None:
    """The file of a store (or its -wal/-shm, or their directory) marked immutable, with the
    command that lifts it; None when none is."""
    for candidate in (path.parent, path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if candidate.exists() and immutable(candidate):
            return (f"{candidate} is marked immutable (`lsattr` shows i or a) — not damaged, "
                    f"but no one may write it: as root, `chattr -i -a {candidate}`")
    return None


# SQLite's primary result codes for "another connection holds the lock" (its busy timeout ran
# out): SQLITE_BUSY and SQLITE_LOCKED
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


def held_by_another(exc: BaseException) -> bool:
    """SQLite gave up waiting for a lock on a file: another process holds it (a CLI, `sqlite3`
    left in a transaction or in `PRAGMA locking_mode=EXCLUSIVE`, a backup tool). The agent's
    own connections hold a lock for milliseconds, far below the busy timeout. Never damage and
    never the disk: such a file is kept as it is and tried again."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return "database is locked" in str(exc) or "database table is locked" in str(exc)


def held_hint(path: Path | str, exc: BaseException) -> str:
    """Who to look for when `exc` is `held_by_another`, appended to its message; "" else."""
    return (f" (another process holds it: `fuser -v {path}` names it)"
            if held_by_another(exc) else "")


def store_write_failure(path: Path | str, error: BaseException) -> str:
    """A write to the open SQLite file `path` failed while running (`error`, SQLite's words):
    those words, and why when it is the file's access or the disk — a read-only file system, a
    file not this user's any more, one marked immutable, no space left — with what to type.
    Asked only after a failure (never on the hot path). SQLite's "disk I/O error" or
    "attempt to write a readonly database" alone leave a technician guessing."""
    path = Path(os.path.abspath(path))
    why = sqlite_file_access(path) or no_room(path)
    return f"{error}; {why}" if why else f"{error}{held_hint(path, error)}"


def no_room(path: Path) -> str | None:
    """The file system of the file `path` full, with what to type; None when it has room. SQLite says
    "database or disk is full" for a write, but "disk I/O error" when it cannot even make a
    file's -shm at open: neither is damage (a full disk must not get a cache moved aside)."""
    path = Path(os.path.abspath(path))
    directory = path.parent
    try:
        info = os.statvfs(directory)
    except OSError:
        return None
    free = info.f_bavail * info.f_frsize
    if free >= _FULL_BELOW_BYTES:
        return None
    return (f"{path} cannot be written: {directory} has no room left ({free // 1024} KiB "
            f"free) — not damaged: free space on that file system (`df -h {directory}`)")


def sqlite_file_access(path: Path | str, *, write: bool = True) -> str | None:
    """Why this process cannot use the SQLite file `path` for a reason of access — a read-only
    file system, the file, its `-wal` or `-shm` or their directory not readable (and, with
    `write`, writable) by this user — with what to type; None when access is not the problem.

    Asked after SQLite failed to open or migrate a store: "unable to open database file" and
    "attempt to write a readonly database" are what a file left root-owned by a `sudo`, or a
    path outside the unit's writable directories, look like to SQLite, and they are no damage:
    a rebuild would not help (the new file is made beside the old one, as the same user)."""
    path = Path(os.path.abspath(path))
    directory = path.parent
    rw = os.R_OK | os.W_OK if write else os.R_OK
    try:
        read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if write and read_only:
        return f"{path} cannot be written: " + read_only_place(directory, "store.dir")
    if write and (frozen := _immutable_one(path)):
        return frozen
    who = f"{user_name(os.geteuid())}:{group_name(os.getegid())}"
    fix = (f"as root, `chown -R {who} {directory}` (a running gate tries the file again by "
           "itself every few seconds; a command: run it again)")
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if candidate.exists() and not _usable(candidate, rw):
            info = candidate.stat()
            return (f"{candidate} cannot be {'read and written' if write else 'read'} by this "
                    f"process ({process_user()}): it belongs to {user_name(info.st_uid)} "
                    f"(uid {info.st_uid}), mode {info.st_mode & 0o777:o} — not damaged, "
                    f"only not this user's; {fix}")
    if not _usable(directory, rw | os.X_OK) and (write or not path.exists()):
        return (f"{directory} (holding {path.name} and its -wal/-shm files) cannot be "
                f"{'written' if write else 'read'} by this process ({process_user()}; the "
                f"directory is {owner_of(directory)}) — not damaged, only not this user's; "
                f"{fix}")
    return None
