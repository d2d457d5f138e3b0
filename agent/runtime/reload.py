"""What a SIGHUP reload changes: applied everywhere at once, or refused naming the key.

A reload must never leave the device half on the old configuration (a lane deciding with the
old event list or `fail_closed` beside one with the new). `plan_reload` compares the running
configuration with the fresh one, key by key: a changed key the daemon can apply in place
(LIVE_KEYS, lanes) goes into the plan; any other changed key is read only at start-up (the
platform client, the store, the status server, the job intervals, logging) and makes the whole
reload refused, so the technician restarts the service instead. Pure: no I/O, so it is tested
on its own and the daemon's reload stays a few lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.config import SECTIONS, Config, LaneConfig

# Keys the daemon applies in place on reload: events.ids and store.fail_closed go to every
# lane's Gate and the syncer; the token keys to the platform client (agent.runtime.reloadapply).
LIVE_KEYS = frozenset({"events.ids", "store.fail_closed", "api.token_file", "api.token_env"})


@dataclass(frozen=True)
class ReloadPlan:
    changed: tuple[str, ...]  # every changed `section.key` (lanes as `lanes.NAME`)
    needs_restart: tuple[str, ...]  # changed keys read only at start-up: the reload is refused
    stop_lanes: tuple[str, ...]  # running lanes removed or changed
    start_lanes: tuple[LaneConfig, ...]  # lanes new or changed, in config order

    @property
    def refused(self) -> str | None:
        """The message for the log when the reload cannot be applied, else None."""
        if not self.needs_restart:
            return None
        return (f"{', '.join(self.needs_restart)} changed and is only read at start-up; "
                "reload refused, the running configuration stays in force everywhere "
                "(restart the service to apply it: systemctl restart gate-agent)")


def changed_keys(old: Config, fresh: Config) -> list[str]:
    """`section.key` of every top-level setting whose value differs (lanes not included)."""
    out = []
    for section in SECTIONS:
        before, after = getattr(old, section), getattr(fresh, section)
        out += [f"{section}.{key}" for key in SECTIONS[section] if before.get(key) != after.get(key)]
    return out


def plan_reload(old: Config, fresh: Config, running: Mapping[str, LaneConfig],
                wanted: tuple[LaneConfig, ...]) -> ReloadPlan:
    """`running`: the lanes in force (with their paired devices); `wanted`: the fresh ones."""
    keys = changed_keys(old, fresh)
    by_name = {lane.name: lane for lane in wanted}
    stop = tuple(name for name, lane in running.items() if by_name.get(name) != lane)
    start = tuple(lane for lane in wanted if running.get(lane.name) != lane)
    lanes = sorted({*stop, *(lane.name for lane in start)})
    return ReloadPlan(
        changed=tuple(keys + [f"lanes.{name}" for name in lanes]),
        needs_restart=tuple(k for k in keys if k not in LIVE_KEYS),
        stop_lanes=stop, start_lanes=start)
