"""Writing small files safely: private (0600) from the first byte, atomic, durable.

Used for everything gate-agent writes besides its SQLite files: the token, lane pairings,
the status address. A power cut leaves the old file or the new one, never half of either, and
no other user can read the content even for an instant (the temporary file is created 0600).
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, text: str, owner: tuple[int, int] | None = None) -> Path:
    """Atomically replace `path` with `text`, mode 0600, fsynced (file and directory);
    `owner` (uid, gid) gives it to that user before it appears (a root process writing into a
    service user's directory must not leave a file that user cannot replace)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            if owner is not None:
                os.fchown(fh.fileno(), *owner)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def require_private(path: Path, *, key: str, config_path: str | None = None) -> None:
    """Refuse a secret file (credentials) that group or others may read, or that is missing:
    a ConfigError naming the key, with the command that fixes it."""
    import stat

    from agent.errors import ConfigError

    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", path=config_path,
                          key=key) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path} is readable by group or others; run: chmod 600 {path}",
                          path=config_path, key=key)
