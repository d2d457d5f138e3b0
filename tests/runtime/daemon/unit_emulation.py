"""The unit's sandbox without systemd as PID 1: what systemd would enforce, rebuilt from the
shipped unit file so that a change to the file changes what the tests enforce.

- `unit_syscalls(text)`: the system calls the unit's `SystemCallFilter=` lines allow, with
  systemd.exec(5)'s semantics: the first line decides the kind (an allow list here), later
  `~` lines take their sets out of it and later allow lines put theirs back. Sets are expanded
  by systemd's own table (`systemd-analyze syscall-filter`).
- `filtered_python(...)`: an "interpreter" that loads that filter (libseccomp, errno EPERM as
  `SystemCallErrorNumber=EPERM`) and then execs the real one: the daemon runs under it as
  under the unit.
- `read_only(...)`: argv running a command in a mount namespace where a directory is
  read-only, as `ProtectSystem=strict` makes every path outside the unit's own directories.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path

ANALYZE = shutil.which("systemd-analyze")
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's python3-seccomp lives in its dist-packages


def has_seccomp() -> bool:
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True) \
        if Path(SYSTEM_PYTHON).exists() else None
    return probe is not None and probe.returncode == 0


@cache
def expand(name: str) -> frozenset[str]:
    """A system call or a @set, as the names of the calls it stands for."""
    if not name.startswith("@"):
        return frozenset({name})
    assert ANALYZE is not None
    out = subprocess.run([ANALYZE, "syscall-filter", name], capture_output=True, text=True,
                         check=True).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if word and not word.startswith("#"):
            calls |= expand(word)
    return frozenset(calls)


def unit_syscalls(unit_text: str) -> set[str]:
    lines = [line.split("=", 1)[1].strip() for line in unit_text.splitlines()
             if line.startswith("SystemCallFilter=")]
    assert lines and not lines[0].startswith("~"), "the unit's filter must start as an allow list"
    allowed: set[str] = set(expand("@default"))  # systemd always allows @default
    for value in lines:
        deny = value.startswith("~")
        names = set().union(*(expand(n) for n in value.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed


FILTER = '''\
import errno, os, sys
import seccomp
calls = open(sys.argv[1]).read().split()
f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
for call in calls:
    try:
        f.add_rule(seccomp.ALLOW, call)
    except (RuntimeError, ValueError):
        pass  # a name this architecture does not have
f.load()
os.execv(sys.argv[2], sys.argv[2:])
'''


def filtered_python(where: Path, unit_text: str, python: str) -> str:
    """Write the filter and a wrapper into `where` (readable by the service uid); returns the
    wrapper's path, to be used as the daemon's interpreter."""
    calls = where / "syscalls.txt"
    calls.write_text("\n".join(sorted(unit_syscalls(unit_text))))
    script = where / "filter.py"
    script.write_text(FILTER)
    wrapper = where / "python-under-unit-filter"
    wrapper.write_text(f'#!/bin/sh\nexec {SYSTEM_PYTHON} {script} {calls} {python} "$@"\n')
    for path in (calls, script):
        path.chmod(0o644)
    wrapper.chmod(0o755)
    return str(wrapper)


def read_only(directory: Path, argv: list[str]) -> list[str]:
    """`argv` in a new mount namespace where `directory` is a read-only bind of itself."""
    mounts = (f"mount --make-rprivate / && mount --bind {directory} {directory} && "
              f"mount -o remount,bind,ro {directory} && exec \"$@\"")
    return ["unshare", "--mount", "sh", "-c", mounts, "sh", *argv]
