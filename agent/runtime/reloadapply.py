"""A SIGHUP reload applied to the running daemon: the fresh file read, the lanes' pairings
and the platform token re-read, the plan (agent.runtime.reload) carried out — changed lanes
finish their queued scans and restart, the others keep running with the fresh settings — and
the emergency input swapped when another is named. Or the whole reload refused, naming why.

Apart from agent.runtime.daemon because it is the one path that changes a running gate's
settings, with its own rule: every step that can fail runs before any lane stops, so a
refused reload leaves everything as it was. What changes is decided, without I/O, by
agent.runtime.reload.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING

from agent.config import Config, LaneConfig, load_config
from agent.errors import ConfigError, GateAgentError, StoreError
from agent.platform.token import load_token
from agent.runtime import venuewiring
from agent.runtime.bindings import effective_device, effective_lanes
from agent.runtime.gate import Gate
from agent.runtime.release import EmergencyInput
from agent.runtime.reload import plan_reload
from agent.runtime.storeaccess import not_mine

if TYPE_CHECKING:
    from agent.runtime.daemon import Daemon

log = logging.getLogger("gate_agent.daemon")


def reload(d: Daemon) -> str | None:
    """The reload itself; why it was refused (logged here or by the step), else None."""
    try:
        fresh = load_config(d.config.path)
    except ConfigError as exc:
        return _refused(f"{exc} — the service would not start with this file: fix it, "
                        "then reload")
    wanted = reload_pairings(d, fresh)
    if wanted is None:
        return "[[lanes]] changed but devices.json cannot be read"
    if fresh.venue != d.config.venue:
        log.warning("[venue] changed: it takes effect at the next restart; the running "
                    "venue settings are kept")
        fresh = dataclasses.replace(fresh, venue=d.config.venue)
    plan = plan_reload(d.config, fresh, {n: r.lane for n, r in d.lanes.items()}, wanted)
    if plan.refused:
        log.error("%s", plan.refused)
        return plan.refused
    if not reload_token(d, fresh, plan.changed):
        return "the new token source gives no token (see the log)"
    gates: dict[str, Gate] = {}
    try:  # before any lane stops: one that cannot start refuses the whole reload
        for lane in plan.start_lanes:
            gates[lane.name] = gate = d._gate()
            if (error := venuewiring.link_error(d, gate)) is not None:
                raise StoreError(error)  # the running lanes keep their links meanwhile
    except GateAgentError as exc:
        for gate in gates.values():
            gate.close()
        return _refused(f"lane {lane.name} cannot be started: {exc}")
    for name in plan.stop_lanes:
        runner = d.lanes.pop(name)
        runner.stop()
        runner.gate.close()
        log.info("lane %s stopped for reload", name)
    d.config = fresh
    for runner in d.lanes.values():  # unchanged lanes: the fresh settings too
        with runner.lock:
            runner.gate.config = fresh
    if d.syncer is not None:
        d.syncer.config = fresh
    for gate in gates.values():
        gate.config = fresh
    d.start_lanes(plan.start_lanes, gates)
    swap_emergency(d, emergency_url(d, fresh))
    log.info("configuration reloaded: %d lane(s); changed: %s", len(d.lanes),
             ", ".join(plan.changed) or "nothing")
    return None


def reload_pairings(d: Daemon, fresh: Config) -> tuple[LaneConfig, ...] | None:
    """The fresh lanes with their paired devices. An unreadable devices.json (a `sudo`
    left it root-owned, say) keeps every lane running as it is, with its bindings, and
    says so in the log and in status (pairings_error); the rest of the reload goes on.
    None: a lane's configuration changed too, which cannot be applied without the file."""
    try:
        wanted = effective_lanes(fresh)
    except ConfigError as exc:
        path = fresh.store_dir / "devices.json"
        d.pairings_error = not_mine(path) or str(exc)
        running = tuple(runner.lane for runner in d.lanes.values())
        log.error("paired devices not reloaded from %s, the running lanes keep theirs: %s",
                  path, d.pairings_error)
        if fresh.lanes != d.config.lanes:
            log.error("reload refused, keeping the running configuration: [[lanes]] "
                      "changed but %s cannot be read", path)
            return None
        return running
    d.pairings_error = None
    return wanted


def reload_token(d: Daemon, fresh: Config, changed: tuple[str, ...]) -> bool:
    """A renewed token (the fix the auth_failed reason asks for) is taken without a
    restart; a missing or unreadable one keeps the running token and says so — unless
    the reload itself names a new token source, which must work or the reload is refused.
    Returns False when the reload is refused."""
    if d.client is None:
        return True
    try:
        token = load_token(fresh.api, config_path=fresh.path)
    except ConfigError as exc:
        moved = [k for k in ("api.token_file", "api.token_env") if k in changed]
        if moved:
            log.error("reload refused, keeping the running configuration: %s changed "
                      "but gives no token: %s", ", ".join(moved), exc)
            return False
        log.error("token not reloaded, keeping the running one: %s", exc)
        return True
    if d.pushed_token is not None and token == d.start_token:
        log.info("platform token kept: the one given by `gate-agent login` is newer than "
                 "the credential this service was started with")
        return True
    if token == d.start_token and d.pushed_token is None:
        # Under systemd the credential is systemd's copy taken at start: a token file
        # edited since is not what this read gives. Say so rather than "reloaded".
        log.info("platform token unchanged%s", " (systemd's credential is copied at "
                 "start: restart the service, or use `gate-agent login`)"
                 if os.environ.get("CREDENTIALS_DIRECTORY") else "")
        return True
    d.start_token, d.pushed_token = token, None
    d.client.set_token(token)
    log.info("platform token reloaded")
    return True


def emergency_url(d: Daemon, config: Config) -> str:
    """`[device] emergency_input`, or the one paired (`devices pair URL --role
    emergency`); an unreadable devices.json keeps the one in use (pairings_error)."""
    try:
        return str(effective_device(config)["emergency_input"])
    except ConfigError as exc:
        log.error("paired emergency input not read, keeping %s: %s",
                  d.emergency.url or "none", exc)
        return d.emergency.url


def swap_emergency(d: Daemon, url: str) -> None:
    """A reload named another emergency input: watch that one instead. A release the old
    one held ends; the new one, active, starts it again at once (its first reading)."""
    old = d.emergency
    if url == old.url:
        return
    old.stop()
    if old.active:
        old.active, old.since = False, None
        d.releases.emergency(False, old.url)
    log.info("emergency input: %s (was %s)", url or "none", old.url or "none")
    d.emergency = EmergencyInput(url, d._emergency_changed)
    d.emergency.start()


def _refused(why: str) -> str:
    log.error("reload refused, keeping the running configuration: %s", why)
    return why
