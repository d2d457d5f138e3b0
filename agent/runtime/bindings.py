"""Hardware paired to lanes by a technician (`gate-agent devices pair`), kept in the state dir.

The config file says what a lane *should* use; on site a technician plugs in a scanner and
pairs it without editing TOML. Pairings live in `<store.dir>/devices.json`::

    {"version": 1, "lanes": {"lane1": {"readers": ["serial:///dev/serial/by-id/..."],
                                       "relay": "gpio:/dev/gpiochip0:17"}}}

written atomically (temp file, fsync, rename, fsync of the directory; mode 0600) so a power
cut leaves the old or the new file, never half of one. `effective_lanes(config)` is what the
daemon uses: config readers plus paired readers (duplicates dropped, config order first), and
the paired relay / relay_out instead of the configured one when there is one; the merged lane
must pass the same one-release-per-direction check as the config file.

The device-level contact (the fire panel's `emergency_input`, issue 17) is paired the same way
(`devices pair URL --role emergency`) and kept beside the lanes: ``"device": {"emergency_input":
"gpio:/dev/gpiochip0:22"}``; `effective_device(config)` puts it instead of `[device]`'s.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from agent.config import Config, LaneConfig, check_lane_outputs
from agent.errors import ConfigError
from agent.files import write_private

log = logging.getLogger(__name__)

FILENAME = "devices.json"
VERSION = 1

LaneBinding = dict[str, Any]  # {"readers": list[str], "relay": str | None, "relay_out": ...}
OUTPUT_ROLES = ("relay", "relay_out")  # the entry and the exit release
# The turnstile's own signals (issue 17): one device each, replaced on pairing like a relay.
SIGNAL_ROLES = ("passage_in", "passage_out", "light_green", "light_red", "buzzer", "display")
SINGLE_ROLES = OUTPUT_ROLES + SIGNAL_ROLES
INPUT_ROLES = ("passage_in", "passage_out")
# Device-level roles (not a lane's): CLI role name -> key of [device] and of "device" here.
DEVICE_ROLES = {"emergency": "emergency_input"}


def bindings_path(store_dir: Path) -> Path:
    return Path(store_dir) / FILENAME


def _read(store_dir: Path) -> Any:
    path = bindings_path(store_dir)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"lanes": {}}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read paired devices: {exc}", path=str(path)) from None


def load_device_bindings(store_dir: Path) -> dict[str, str]:
    """The paired device-level contacts ({"emergency_input": URL}); absent means none."""
    path = bindings_path(store_dir)
    data = _read(store_dir)
    device = data.get("device") or {} if isinstance(data, dict) else {}
    if not isinstance(device, dict):
        raise ConfigError("must be an object", path=str(path), key="device")
    out = {}
    for key in DEVICE_ROLES.values():
        url = device.get(key)
        if url is not None and not isinstance(url, str):
            raise ConfigError("must be a URL or null", path=str(path), key=f"device.{key}")
        if url:
            out[key] = url
    return out


def load_bindings(store_dir: Path) -> dict[str, LaneBinding]:
    """Paired devices per lane; an absent file means none. A damaged file is a ConfigError."""
    path = bindings_path(store_dir)
    data = _read(store_dir)
    lanes = data.get("lanes") if isinstance(data, dict) else None
    if not isinstance(lanes, dict):
        raise ConfigError('not a paired-devices file (no "lanes" object)', path=str(path))
    out: dict[str, LaneBinding] = {}
    for lane, entry in lanes.items():
        if not isinstance(entry, dict):
            raise ConfigError("must be an object", path=str(path), key=f"lanes.{lane}")
        readers = entry.get("readers", [])
        if not isinstance(readers, list) or not all(isinstance(r, str) for r in readers):
            raise ConfigError("must be a list of URLs", path=str(path), key=f"lanes.{lane}.readers")
        out[lane] = {"readers": list(readers)}
        for role in SINGLE_ROLES:
            url = entry.get(role)
            if url is not None and not isinstance(url, str):
                raise ConfigError("must be a URL or null", path=str(path),
                                  key=f"lanes.{lane}.{role}")
            out[lane][role] = url or None
    return out


def save_bindings(store_dir: Path, bindings: dict[str, LaneBinding],
                  device: dict[str, str] | None = None) -> Path:
    """Write all bindings atomically with mode 0600; returns the file's path. `device`: the
    device-level pairings (None keeps the file's)."""
    path = bindings_path(store_dir)
    device = load_device_bindings(store_dir) if device is None else device
    path.parent.mkdir(parents=True, exist_ok=True)
    lanes = {
        lane: {"readers": list(b.get("readers", [])),
               **{role: b.get(role) for role in SINGLE_ROLES if b.get(role) or role == "relay"}}
        for lane, b in sorted(bindings.items())
        if b.get("readers") or any(b.get(role) for role in SINGLE_ROLES)
    }
    data: dict[str, Any] = {"version": VERSION, "lanes": lanes}
    if device:
        data["device"] = device
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    return write_private(path, text)


def pair(store_dir: Path, lane: str, url: str, role: str) -> dict[str, LaneBinding]:
    """Add `url` to `lane` as a reader (appended once) or as its relay / relay_out (replacing
    one)."""
    if role not in ("reader", *SINGLE_ROLES):
        raise ValueError(f"role must be reader or one of {', '.join(SINGLE_ROLES)}, "
                         f"not {role!r}")
    bindings = load_bindings(store_dir)
    entry = bindings.setdefault(lane, {"readers": [], "relay": None})
    if role == "reader":
        if url not in entry["readers"]:
            entry["readers"].append(url)
    else:
        entry[role] = url
    save_bindings(store_dir, bindings)
    return bindings


def unpair(store_dir: Path, lane: str, url: str) -> bool:
    """Remove `url` from `lane` (as reader or relay); False when it was not paired there."""
    bindings = load_bindings(store_dir)
    entry = bindings.get(lane)
    if entry is None:
        return False
    found = False
    if url in entry["readers"]:
        entry["readers"].remove(url)
        found = True
    for role in SINGLE_ROLES:
        if entry.get(role) == url:
            entry[role] = None
            found = True
    if found:
        save_bindings(store_dir, bindings)
    return found


def pair_device(store_dir: Path, role: str, url: str) -> dict[str, str]:
    """Pair a device-level contact (role `emergency`), replacing the one paired before."""
    if role not in DEVICE_ROLES:
        raise ValueError(f"role must be one of {', '.join(DEVICE_ROLES)}, not {role!r}")
    device = {**load_device_bindings(store_dir), DEVICE_ROLES[role]: url}
    save_bindings(store_dir, load_bindings(store_dir), device)
    return device


def unpair_device(store_dir: Path, url: str) -> bool:
    """Remove a paired device-level contact; False when `url` was not paired as one."""
    device = load_device_bindings(store_dir)
    kept = {key: paired for key, paired in device.items() if paired != url}
    if kept == device:
        return False
    save_bindings(store_dir, load_bindings(store_dir), kept)
    return True


def effective_device(config: Config) -> dict[str, Any]:
    """`[device]` with the paired contacts instead of the configured ones (ConfigError when
    devices.json cannot be read)."""
    return {**config.device, **load_device_bindings(config.store_dir)}


def merge_lane(lane: LaneConfig, binding: LaneBinding | None) -> LaneConfig:
    """One lane with its paired devices merged in (see the module docstring for the rule)."""
    if not binding:
        return lane
    readers = tuple(dict.fromkeys([*lane.readers, *binding.get("readers", [])]))
    singles = {role: binding.get(role) or getattr(lane, role) for role in SINGLE_ROLES}
    return dataclasses.replace(lane, readers=readers, **singles)


def effective_lanes(config: Config) -> tuple[LaneConfig, ...]:
    """The configured lanes with the paired devices of `devices.json` merged in.

    Pairings for lanes no longer in the config are ignored with a warning (not an error: the
    gate must still open after someone renames a lane).
    """
    bindings = load_bindings(config.store_dir)
    names = {lane.name for lane in config.lanes}
    for stale in sorted(set(bindings) - names):
        log.warning("devices.json pairs devices to lane %r, which is not configured; ignored", stale)
    lanes = tuple(merge_lane(lane, bindings.get(lane.name)) for lane in config.lanes)
    for lane in lanes:  # a paired relay must not turn an exit into an entry either
        check_lane_outputs(lane, str(bindings_path(config.store_dir)), f"lanes.{lane.name}")
    return lanes


def paired_view(config: Config) -> dict[str, Any]:
    """What `gate-agent devices show` lists: every lane's devices in force and the device-level
    contacts, each with its source (the config file or a pairing). Read by the daemon for a
    technician without access to the store, or by the CLI as the store's owner."""
    return {"lanes": _lane_rows(config), "device": _device_rows(config)}


def _device_rows(config: Config) -> dict[str, dict[str, str]]:
    """The device-level contacts in force: paired, or from [device]."""
    paired = load_device_bindings(config.store_dir)
    return {key: {"url": url, "source": "paired" if paired.get(key) == url else "config"}
            for key, url in effective_device(config).items()
            if key in DEVICE_ROLES.values() and url}


def _lane_rows(config: Config) -> list[dict[str, Any]]:
    paired = load_bindings(config.store_dir)
    rows = []
    for lane in effective_lanes(config):
        configured = next(c for c in config.lanes if c.name == lane.name)
        mine = paired.get(lane.name, {"readers": [], "relay": None})
        rows.append({
            "lane": lane.name,
            "readers": [{"url": u, "source": "config" if u in configured.readers else "paired"}
                        for u in lane.readers],
            **{role: _source(lane, mine, role) for role in SINGLE_ROLES
               if role in OUTPUT_ROLES or getattr(lane, role)},
        })
    return rows


def _source(lane: Any, mine: dict[str, Any], role: str) -> dict[str, str] | None:
    url = getattr(lane, role)
    if not url:
        return None
    return {"url": url, "source": "paired" if mine.get(role) == url else "config"}
