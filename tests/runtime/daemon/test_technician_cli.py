"""A technician without sudo, in the control socket's group (the documented install: `[control]
socket = "/run/gate-agent/control.sock"`, store.dir 0700 and the service user's).

With the daemon running, every command goes through its socket: the client must not first
look for `<store.dir>/daemon.lock`, which it cannot even see; `pair-tag` (the daemon pairs,
with its rules, token and lanes) and `venue conflicts` (it reads its venue store) too. With the
daemon stopped, the commands that would work on the store say they need its owner, naming
the store, its owner and the `sudo -u` to type, before doing anything: no traceback, no
PermissionError half-way, and `login` asks the platform for nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import demo_data
from agent.access import group_name
from agent.store.venue import VENUE_FILE, VenueStore
from agent.venue.node import start_venue
from drivers.sim import send_scan
from tests.conftest import PROJECT_ROOT
from tests.runtime.daemon.conftest import wait_synced
from tests.runtime.daemon.test_service_control import (  # noqa: F401 - fixture
    SERVICE_UID,
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
from tests.runtime.pairing.conftest import TAG_A, TAG_B, PairTagProcess, platform_tag

pytestmark = [pytest.mark.e2e, *NEEDS_SERVICE_USER]

C = demo_data.CODES
DEAD_BUS = "nats://127.0.0.1:9"  # nothing listens: commands that do not use the bus
VENUE_SECTION = f'\n[venue]\nname = "hall"\nservers = ["{DEAD_BUS}"]\ndevice = "g1"\n'
CONFLICT_UUID = "7d0c5e3a-0000-4000-8000-000000000001"
CONFLICT = "admitted at g1 and g2 while they could not see each other"


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
        shown = tech("devices", "show", "--json")  # read back through the daemon, no sudo
        assert shown.returncode == 0, shown.stderr
        entry = next(r for r in json.loads(shown.stdout)["lanes"] if r["lane"] == "entry")
        assert {"url": _reader(install), "source": "paired"} in entry["readers"]
        # login: the technician may not write root's token file; the daemon takes the token
        login = install.sandbox.info()["login"]
        done = tech("login", "--email", login["email"], stdin=login["password"] + "\n")
        assert done.returncode == 0, done.stderr
        assert "NOT stored" in done.stdout and "uses the new token" in done.stdout
        assert (install.root / "token").read_text() == install.sandbox.token  # untouched
        for out in (scan, check, queue, events, upload, paired, shown, done):
            assert "Traceback" not in out.stderr and "daemon.lock" not in out.stderr
    finally:
        assert daemon.stop() == 0


def test_without_the_daemon_store_commands_say_they_need_sudo_before_doing_anything(
        install: Install, tech: Technician) -> None:  # noqa: F811
    before = _logins(install)
    for args in (("scan", C["valid"]), ("check", C["valid"]), ("queue",),
                 ("release", "--events"), ("upload",), ("queue", "retry"),
                 ("devices", "pair", "entry", _reader(install), "--no-validate"),
                 ("devices", "show"),
                 ("pair-tag", C["valid"], "--reader", _station_reader(install))):
        _needs_the_owner(install, tech(*args), args)
    login = install.sandbox.info()["login"]
    refused = tech("login", "--email", login["email"], stdin=login["password"] + "\n")
    assert refused.returncode == 2, refused.stderr
    assert "nothing was asked of the platform" in refused.stderr
    assert _logins(install) == before  # no token issued and left behind on the platform
    status = tech("status")  # `listen = ...:0`: the picked port is in the store it cannot read
    assert status.returncode == 1, (status.stdout, status.stderr)
    said = " ".join(status.stderr.split())
    assert f"written to {install.store / 'status.addr'}, which this user cannot read" in said
    assert "gate-agent status --url" in said and "Traceback" not in status.stderr
    install.config.write_text(install.config.read_text() + VENUE_SECTION)
    _needs_the_owner(install, tech("venue", "conflicts", "--json"), ("venue", "conflicts"))
    assert install.owners() == {}  # the store was not touched


def test_a_store_opened_to_the_technicians_group_is_still_worked_on_by_its_owner_only(
        install: Install, tech: Technician) -> None:  # noqa: F811
    """store.dir made 0770 for the technicians' group: they could enter and write it, but a
    cache, journal or -shm they made would be theirs, 0600, and the service could not open it
    (a journal it cannot open refuses every scan). Refused as before, saying why."""
    os.chown(install.store, SERVICE_UID, tech.gid)
    install.store.chmod(0o770)
    for args in (("pair-tag", C["valid"], "--reader", _station_reader(install)),
                 ("scan", C["valid"]), ("queue",)):
        out = tech(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        said = " ".join(out.stderr.split())
        assert f"store.dir {install.store} itself, which belongs to another user " \
               f"({SERVICE_UID}:{group_name(tech.gid)}, mode 770)" in said, (args, said)
        assert "the store's owner (the service) could not open them" in said, said
        assert f"`sudo -u '#{SERVICE_UID}' gate-agent {args[0]}" in said, (args, said)
        assert "Traceback" not in out.stderr
    assert install.owners() == {}  # nothing made there as the technician


def _needs_the_owner(site: Install, out: subprocess.CompletedProcess[str],
                     args: tuple[str, ...]) -> None:
    """StoreAccess (exit 2, before anything is done): the store, its owner, the sudo to type."""
    assert out.returncode == 2, (args, out.stdout, out.stderr)
    said = " ".join(out.stderr.split())  # as one line, whatever the terminal's width
    assert "needs the store's owner" in said, (args, said)
    assert f"store.dir {site.store} itself" in said and \
        f"({site.store} is {SERVICE_UID}:{SERVICE_UID}, mode 700)" in said, (args, said)
    assert f"`sudo -u '#{SERVICE_UID}' gate-agent {args[0]}" in said, (args, said)
    assert f"`sudo gate-agent {args[0]}" in said, (args, said)
    assert "Traceback" not in out.stderr and "PermissionError" not in out.stderr


def _station_reader(site: Install, name: str = "tag") -> str:
    """A pairing station's NFC reader (a sim socket) in a folder the technician owns."""
    here = site.root / "station"
    if not here.exists():
        here.mkdir()
        os.chown(here, TECHNICIAN_UID, TECHNICIAN_UID)
    return f"sim:{name}?socket={here / (name + '.sock')}"


def _pair_tag(site: Install, tech: Technician, *args: str) -> PairTagProcess:
    return PairTagProcess(
        [site.python, "-m", "agent", "pair-tag", *args, "--config", str(site.config)],
        {**os.environ, **site.python_env, "HOME": "/tmp", "GATE_AGENT_TOKEN": ""},
        user=TECHNICIAN_UID, group=TECHNICIAN_UID, extra_groups=[tech.gid])


def test_a_technician_pairs_wristbands_through_the_daemon_with_its_rules(
        install: Install, tech: Technician) -> None:  # noqa: F811
    """No sudo: the daemon asks the platform with its own token, pairs in its cache (the tag
    works on its lanes at once) and admits through its lane, journaled as its own scan."""
    daemon = install.daemon()
    daemon.groups = [tech.gid]
    daemon.start()
    try:
        daemon.wait_ready()
        wait_synced(daemon)
        reader = _station_reader(install)
        tags = Path(reader.partition("socket=")[2])
        run = _pair_tag(install, tech, C["valid"], "--reader", reader, "--admit")
        run.wait_line("present the tag")
        send_scan(tags, "04:aa:aa:aa:aa:aa:01")
        code, out, err = run.finish(60)
        assert code == 0, (out, err)
        assert f"PAIRED {TAG_A} -> {C['valid']} (event {demo_data.EVENT_ID}, item 1)" in out
        assert f"ADMIT in  {TAG_A}  valid" in out
        assert platform_tag(install.sandbox, C["valid"]) == TAG_A
        daemon.wait_for(lambda r: f"control: pair_tag requested by uid {TECHNICIAN_UID}"
                        in r.get("msg", ""), 10, "the daemon paired")
        inside = tech("check", TAG_A, "--json")  # the daemon's cache and journal: in already
        assert inside.returncode == 1 and json.loads(inside.stdout)["status"] == "alreadyIn", \
            (inside.stdout, inside.stderr)
        queue = json.loads(tech("queue", "--json", "--all").stdout)
        assert [(s["code"], s["lane"]) for s in queue["scans"]] == [(TAG_A, "entry")]
        # the pairing rules hold through the daemon: a ticket it does not know, a second tag
        # without --again (the platform refuses; nothing changes)
        unknown = tech("pair-tag", C["unknown"], "--reader", reader)
        assert unknown.returncode == 1, (unknown.stdout, unknown.stderr)
        assert "not in this gate's ticket cache" in unknown.stdout
        run = _pair_tag(install, tech, C["nfc_ticket"], "--reader", reader)
        run.wait_line("present the tag")
        send_scan(tags, TAG_B)
        code, out, err = run.finish(60)
        assert code == 1 and "already has a tag" in out and "--again" in out, (out, err)
        assert platform_tag(install.sandbox, C["nfc_ticket"]) == demo_data.NFC_TAG
        install.sandbox.stop()  # the platform is gone: offline keeps its own exit code (3)
        run = _pair_tag(install, tech, C["valid2"], "--reader", reader)
        run.wait_line("present the tag")
        send_scan(tags, TAG_B)
        offline, said, err2 = run.finish(120)
        assert offline == 3 and "cannot be reached" in said and "nothing changed" in said, \
            (said, err2)
        for text in (out, err, unknown.stderr, err2):
            assert "Traceback" not in text and "PermissionError" not in text
        assert set(install.owners().values()) == {SERVICE_UID}
    finally:
        assert daemon.stop() == 0


def test_a_technician_lists_venue_conflicts_through_the_daemon(
        install: Install, tech: Technician, tmp_path: Path) -> None:  # noqa: F811
    """The venue store is the daemon's (store.dir 0700): it reads the conflicts for them."""
    (node,) = start_venue(tmp_path / "nats", 1)
    try:
        install.config.write_text(install.config.read_text() +
                                  VENUE_SECTION.replace(DEAD_BUS, node.url))
        _seed_conflict(install.store / VENUE_FILE)
        daemon = install.daemon()
        daemon.groups = [tech.gid]
        daemon.start()
        try:
            daemon.wait_ready()
            listed = tech("venue", "conflicts", "--json")
            assert listed.returncode == 0, listed.stderr
            rows = json.loads(listed.stdout)["conflicts"]
            assert [(r["uuid"], r["detail"]) for r in rows] == [(CONFLICT_UUID, CONFLICT)]
            table = tech("venue", "conflicts")
            assert table.returncode == 0 and "Venue conflicts: 1" in table.stdout, table.stderr
            assert "Traceback" not in listed.stderr + table.stderr
        finally:
            assert daemon.stop() == 0
    finally:
        node.kill()


def _seed_conflict(path: Path) -> None:
    """venue.db as an earlier partition left it: one conflict found (the service user's file)."""
    store = VenueStore(path)
    try:
        store.conn.execute(
            "INSERT INTO venue_conflicts (uuid, event_id, item_id, zone_id, device, lane, "
            "scanned_on, offline, detail, detected_at) VALUES (?, ?, 1, 1, 'g2', 'entry', "
            "'2026-11-28T19:30:00Z', 1, ?, '2026-11-28T19:31:00Z')",
            (CONFLICT_UUID, demo_data.EVENT_ID, CONFLICT))
    finally:
        store.close()
    for made in path.parent.glob(path.name + "*"):
        os.chown(made, SERVICE_UID, SERVICE_UID)
