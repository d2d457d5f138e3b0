"""One identity at a time for every thread (agent.runtime.storeaccess): glibc applies a
`seteuid` to all the threads of a process, so a reader thread that (re)opens its device while
the main thread works on the store as its owner would open it as the service user. A reader
opening under `same_identity` never does: it waits for the step to end.

In a child process of its own (the switches are process-wide: a pytest worker must not run
as another uid, not even for a moment), as root, as CI runs (a switch needs root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: switches to the "
                                "store owner's uid, as `sudo gate-agent pair-tag` does (CI "
                                "runs as root)")

OWNER_UID = 4242  # the service user: a uid is all the kernel checks

# A reader whose device keeps dropping (each session ends at once), so it reopens all the
# time, while the main thread works on the store in steps as its owner, without pause.
RACE = """
import json, os, sys, time
from pathlib import Path
from agent.runtime.storeaccess import as_store_owner, same_identity
from drivers.base import DeviceLost, Reader

class Flaky(Reader):
    def __init__(self):
        super().__init__("flaky:", backoff_initial=0.0005, backoff_max=0.0005,
                         poll_interval=0.0005)
        self.seen = []

    def _open(self):
        self.seen.append(os.geteuid())

    def _read(self, timeout):
        raise DeviceLost("pulled")

store, guarded = Path(sys.argv[1]), sys.argv[2] == "guarded"
reader = Flaky()
if guarded:
    reader.open_guard = same_identity
reader.start(lambda scan: None)
steps = 0
while len(reader.seen) < 400 or steps < 400:
    with as_store_owner(store):
        steps += 1
        time.sleep(0.0005)  # a store step takes a while
    time.sleep(0.0001)  # the command, itself again, between two steps
reader.stop()
print(json.dumps({"opens": len(reader.seen), "as": sorted(set(reader.seen)),
                  "now": os.geteuid()}))
"""


@pytest.fixture
def store() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="ga-identity-", dir="/tmp"))
    try:
        (root / "state").mkdir(mode=0o700)
        os.chown(root / "state", OWNER_UID, OWNER_UID)
        yield root / "state"
    finally:
        (root / "state").rmdir()
        root.rmdir()


def _race(store: Path, mode: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", RACE, str(store), mode], capture_output=True,
                          text=True, timeout=300, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_a_reader_never_opens_its_device_as_the_store_owner(store: Path) -> None:
    result = _race(store, "guarded")
    assert result["as"] == [0] and result["now"] == 0, result


def test_without_the_guard_a_reader_opens_as_the_store_owner(store: Path) -> None:
    """Why the guard exists: the switch reaches the reader's thread (glibc's setxid)."""
    result = _race(store, "unguarded")
    assert OWNER_UID in result["as"], result  # type: ignore[operator]
