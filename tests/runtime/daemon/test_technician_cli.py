"""A technician without sudo, in the control socket's group (the documented install: `[control]
socket = "/run/gate-agent/control.sock"`, store.dir 0700 and the service user's).

With the daemon running, every command goes through its socket: the client must not first
look for `<store.dir>/daemon.lock`, which it cannot even see. With the daemon stopped, the
commands that would work on the store say they need its owner (sudo), before doing anything:
no traceback, no PermissionError half-way, and `login` asks the platform for nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from agent import demo_data
from tests.conftest import PROJECT_ROOT
from tests.runtime.daemon.conftest import wait_synced
from tests.runtime.daemon.test_service_control import (  # noqa: F401 - fixture
    TECHNICIAN_UID,
    _with_control,
    technicians,
)
from tests.runtime.daemon.test_service_user import (  # noqa: F401 - fixture
    NEEDS_SERVICE_USER,
    Install,
    _reader,
    install,
)

pytestmark = [pytest.mark.e2e, *NEEDS_SERVICE_USER]

C = demo_data.CODES


class Technician:
    def __init__(self, site: Install, gid: int):
        self.site, self.gid = site, gid

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """`gate-agent ARGS` as the technician's own uid, in the technicians' group only."""
        return subprocess.run(
            [self.site.python, "-m", "agent", *args, "--config", str(self.site.config)],
            user=TECHNICIAN_UID, group=TECHNICIAN_UID, extra_groups=[self.gid], input=stdin,
            capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT,
            env={**os.environ, **self.site.python_env, "HOME": "/tmp", "GATE_AGENT_TOKEN": ""})


@pytest.fixture
def tech(install: Install, technicians: tuple[str, int]) -> Iterator[Technician]:  # noqa: F811
    name, gid = technicians
    _with_control(install, name)
    yield Technician(install, gid)


def _logins(site: Install) -> int:
    return int(site.sandbox.received()["perEndpoint"].get("POST /login", 0))


def test_a_technician_in_the_socket_group_uses_every_command_through_the_daemon(
        install: Install, tech: Technician) -> None:  # noqa: F811
    daemon = install.daemon()
    daemon.groups = [tech.gid]  # SupplementaryGroups=<the technicians' group>
    daemon.start()
    try:
        daemon.wait_ready()
        wait_synced(daemon)
        scan = tech("scan", C["valid"], "--json")
        assert scan.returncode == 0, scan.stderr
        assert json.loads(scan.stdout)["admit"] is True
        check = tech("check", C["valid2"], "--json")
        assert check.returncode == 0, check.stderr
        assert json.loads(check.stdout)["status"] == "valid"
        again = tech("check", C["valid"], "--json")  # the daemon's journal: it was scanned
        assert again.returncode == 1 and json.loads(again.stdout)["status"] == "alreadyIn"
        queue = tech("queue", "--json", "--all")
        assert queue.returncode == 0, queue.stderr
        assert C["valid"] in [s["code"] for s in json.loads(queue.stdout)["scans"]]
        events = tech("release", "--events", "--json")
        assert events.returncode == 0 and json.loads(events.stdout) == [], events.stderr
        typo = tech("queue", "retry", "notauuid")  # the daemon's refusal, with its exit code
        assert typo.returncode == 2 and "notauuid" in typo.stderr, typo.stderr
        upload = tech("upload", "--json")
        assert upload.returncode == 0, upload.stderr
        paired = tech("devices", "pair", "entry", _reader(install), "--no-validate")
        assert paired.returncode == 0 and "the running daemon" in paired.stdout, paired.stderr
        # login: the technician may not write root's token file; the daemon takes the token
        login = install.sandbox.info()["login"]
        done = tech("login", "--email", login["email"], stdin=login["password"] + "\n")
        assert done.returncode == 0, done.stderr
        assert "NOT stored" in done.stdout and "uses the new token" in done.stdout
        assert (install.root / "token").read_text() == install.sandbox.token  # untouched
        for out in (scan, check, queue, events, upload, paired, done):
            assert "Traceback" not in out.stderr and "daemon.lock" not in out.stderr
    finally:
        assert daemon.stop() == 0


def test_without_the_daemon_store_commands_say_they_need_sudo_before_doing_anything(
        install: Install, tech: Technician) -> None:  # noqa: F811
    before = _logins(install)
    for args in (("scan", C["valid"]), ("check", C["valid"]), ("queue",),
                 ("release", "--events"), ("upload",), ("queue", "retry"),
                 ("devices", "pair", "entry", _reader(install), "--no-validate")):
        out = tech(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "needs the store's owner" in out.stderr and "sudo gate-agent" in out.stderr, \
            (args, out.stderr)
        assert "Traceback" not in out.stderr and "PermissionError" not in out.stderr
    login = install.sandbox.info()["login"]
    refused = tech("login", "--email", login["email"], stdin=login["password"] + "\n")
    assert refused.returncode == 2, refused.stderr
    assert "nothing was asked of the platform" in refused.stderr
    assert _logins(install) == before  # no token issued and left behind on the platform
    assert install.owners() == {}  # the store was not touched
