"""Strict TOML configuration: typed, bounded, unknown keys rejected, errors naming `section.key`.

Modelled on Klipper's configfile: every option is declared once below with its type, default
and bounds, so `config.example.toml` can be checked against this table by a test, and a typo in
a technician's file is an error that names the file and the key instead of a silent default.

The key names of `[api]`, `[store]`, `[events]` and `[[lanes]]` are a contract with scripts
outside the project: add keys freely, never rename one.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.access import unreadable_config
from agent.errors import ConfigError

DEFAULT_CONFIG_PATH = "/etc/gate-agent/config.toml"
DEFAULT_BASE_URL = "https://api.nuwebgroup.com/v1"
# A device cannot know it is alone in its company (the rate limit is the company's): by default
# it takes a quarter, safe for up to four devices. A sole device sets 1.0; N devices 1/N.
DEFAULT_BUDGET_SHARE = 0.25

Validator = Callable[[Any], str | None]


@dataclass(frozen=True)
class Option:
    """One declared option: its type(s), default (None = optional) and an extra check."""

    kind: type | tuple[type, ...]
    default: Any = None
    check: Validator | None = None
    required: bool = False
    secret: bool = False  # its value never appears in a message (see _check_value)


def _between(lo: float, hi: float) -> Validator:
    def check(v: Any) -> str | None:
        return None if lo <= v <= hi else f"must be between {lo} and {hi}, got {v}"

    return check


def _one_of(*choices: str) -> Validator:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}; got {v!r}"

    return check


def _hh_mm(v: Any) -> str | None:
    hour, _, minute = str(v).partition(":")
    ok = hour.isdigit() and minute.isdigit() and len(minute) == 2 and int(hour) < 24 \
        and int(minute) < 60
    return None if ok else f"must be HH:MM (local time), got {v!r}"


def _non_empty(v: Any) -> str | None:
    return None if str(v).strip() else "must not be empty"


def _int_list(v: Any) -> str | None:
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return "must be a list of whole numbers"
    return None


def _str_list(v: Any) -> str | None:
    if not all(isinstance(x, str) and x.strip() for x in v):
        return "must be a list of non-empty strings"
    return None


def _event_ids(v: Any) -> str | None:
    if isinstance(v, str):
        return None if v == "activated" else 'must be a list of event ids or the string "activated"'
    return _int_list(v)


def _listen(v: Any) -> str | None:
    host, sep, port = str(v).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return 'must be "host:port", e.g. "127.0.0.1:8080" (port 0 picks a free port)'
    return None


SECTIONS: dict[str, dict[str, Option]] = {
    "api": {
        "base_url": Option(str, DEFAULT_BASE_URL, _non_empty),
        "token_file": Option(str, "/etc/gate-agent/token"),
        "token_env": Option(str, "GATE_AGENT_TOKEN"),
        "company_id": Option(int, 0, _between(0, 2**63 - 1)),
        "language": Option(str, "en", _non_empty),
        "requests_per_minute": Option(int, 60, _between(1, 100_000)),
        "budget_share": Option((float, int), DEFAULT_BUDGET_SHARE, _between(0.01, 1.0)),
        "upload_reserve": Option(int, 2, _between(0, 1000)),
        "timeout_s": Option((float, int), 15.0, _between(0.5, 600)),
        "ca_file": Option(str, ""),
        "async_poll_limit_s": Option((float, int), 120.0, _between(1, 7200)),
        "device_name": Option(str, ""),
        "scanned_by": Option(int, 0, _between(0, 2**63 - 1)),
        "offline": Option(bool, False),
    },
    "store": {
        "dir": Option(str, "/var/lib/gate-agent", _non_empty),
        "keep_personal_data": Option(bool, False),
        "sent_retention_days": Option(int, 7, _between(0, 3650)),
        "fail_closed": Option(bool, True),
    },
    "events": {
        "ids": Option((str, list), "activated", _event_ids),
    },
    "sync": {
        "upload_interval_s": Option((float, int), 10.0, _between(0.2, 3600)),
        "upload_batch_size": Option(int, 500, _between(1, 5000)),
        "delta_interval_s": Option((float, int), 30.0, _between(1, 86400)),
        "refresh_interval_s": Option((float, int), 300.0, _between(10, 86400)),
        "full_resync_at": Option(str, "04:00", _hh_mm),
        "full_resync_retry_s": Option((float, int), 30.0, _between(1, 3600)),
        "max_cache_age_s": Option((float, int), 3600.0, _between(10, 30 * 86400)),
    },
    "status": {
        "listen": Option(str, "127.0.0.1:8080", _listen),
        "token": Option(str, "", secret=True),
    },
    "control": {
        "socket": Option(str, ""),
        "group": Option(str, ""),
        "answer_timeout_s": Option((float, int), 5.0, _between(0.5, 600)),
    },
    "device": {  # the turnstile's signals shared by every lane (issue 17)
        "emergency_input": Option(str, ""),
        # people per zone count the passages since this local time (the counting day)
        "people_day_starts": Option(str, "06:00", _hh_mm),
    },
    "log": {
        "level": Option(str, "info", _one_of("debug", "info", "warning", "error")),
        "format": Option(str, "auto", _one_of("auto", "text", "json")),
    },
}

def _nats_urls(v: Any) -> str | None:
    problem = _str_list(v)
    if problem or not v:
        return "must be a non-empty list of server URLs, e.g. [\"nats://10.0.0.5:4222\"]"
    for url in v:
        scheme, sep, rest = str(url).partition("://")
        if not sep or scheme not in ("nats", "tls") or not rest:
            return f"{url!r} must look like nats://host:port (or tls://host:port)"
    return None


def _bus_name(v: Any) -> str | None:
    """Venue and device names become parts of NATS subjects and the stream's name."""
    if v and not str(v).replace("-", "").replace("_", "").isalnum():
        return f"must be letters, digits, - or _ (it is part of the bus's subjects); got {v!r}"
    return None


# `[venue]` is optional: without it the gate works alone, exactly as in round one.
VENUE_OPTIONS: dict[str, Option] = {
    "name": Option(str, None, lambda v: _non_empty(v) or _bus_name(v), required=True),
    "servers": Option(list, None, _nats_urls, required=True),
    "device": Option(str, "", _bus_name),
    "credentials": Option(str, ""),
    "tls_ca": Option(str, ""),
    "claim_timeout_ms": Option(int, 250, _between(5, 10_000)),
    "offline_policy": Option(str, "local", _one_of("local", "refuse")),
    "heartbeat_s": Option((float, int), 2.0, _between(0.2, 60)),
    "heartbeat_ttl_s": Option((float, int), 10.0, _between(1, 600)),
    # the venue leader (one device talks to the platform for the whole venue)
    "leader": Option(bool, True),
    "lease_ttl_s": Option((float, int), 10.0, _between(1, 600)),
    "platform_reserve": Option(int, 6, _between(0, 100_000)),
    "fallback_after_s": Option((float, int), 120.0, _between(5, 86400)),
    # a leader without a successful platform request this long, while another gate that may
    # lead reaches the platform, gives it the lease (agent.venue.stepdown)
    "leader_stepdown_after_s": Option((float, int), 120.0, _between(1, 86400)),
    "platform_probe_s": Option((float, int), 30.0, _between(1, 3600)),
}

LANE_OPTIONS: dict[str, Option] = {
    "name": Option(str, None, _non_empty, required=True),
    "event_ids": Option(list, [], _int_list),
    "zone_id": Option(int, None, _between(1, 2**63 - 1)),
    "gate_id": Option(int, None, _between(1, 2**63 - 1)),
    "direction": Option(str, "in", _one_of("in", "out", "auto")),
    "max_entries": Option(int, 1, _between(0, 1_000_000)),
    "readers": Option(list, [], _str_list),
    "relay": Option(str, ""),
    "relay_out": Option(str, ""),
    "relay_both_directions": Option(bool, False),
    "relay_pulse_ms": Option(int, 800, _between(10, 60_000)),
    "debounce_ms": Option(int, 2000, _between(0, 600_000)),
    "ticket_types": Option(list, [], _int_list),
    "exclude_ticket_types": Option(list, [], _int_list),
    "include_products": Option(bool, False),
    "age_unknown": Option(str, "refuse", _one_of("refuse", "admit")),
    "grace_minutes": Option(int, 0, _between(0, 24 * 60)),
    # The turnstile's own signals (issue 17; agent.runtime.passage, agent.runtime.indicators).
    "passage_in": Option(str, ""),
    "passage_out": Option(str, ""),
    "passage_timeout_ms": Option(int, 5000, _between(100, 120_000)),
    "held_open_ms": Option(int, 10_000, _between(100, 600_000)),
    "light_green": Option(str, ""),
    "light_red": Option(str, ""),
    "buzzer": Option(str, ""),
    "display": Option(str, ""),
    "indicate_admit": Option(str, "green:1500", lambda v: _pattern(v)),
    "indicate_refuse": Option(str, "red:1500,buzzer:300", lambda v: _pattern(v)),
    "indicate_not_passed": Option(str, "red:800", lambda v: _pattern(v)),
    "indicate_alarm": Option(str, "red:3000,buzzer:3000", lambda v: _pattern(v)),
}

INDICATOR_NAMES = ("green", "red", "buzzer")


def parse_pattern(text: str) -> tuple[tuple[str, int], ...]:
    """`"red:1500,buzzer:300"` -> (("red", 1500), ("buzzer", 300)); ValueError when malformed.
    Each named output is switched on for its milliseconds, all at once; "" shows nothing."""
    out: list[tuple[str, int]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, ms = part.partition(":")
        if name not in INDICATOR_NAMES or not sep or not ms.isdigit() \
                or not 10 <= int(ms) <= 60_000:
            raise ValueError(f"{part!r} must be NAME:MS with NAME one of "
                             f"{', '.join(INDICATOR_NAMES)} and MS 10..60000")
        out.append((name, int(ms)))
    return tuple(out)


def _pattern(v: Any) -> str | None:
    try:
        parse_pattern(v)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class LaneConfig:
    """One lane: where scans come from, what they may open, and the local rules."""

    name: str
    event_ids: tuple[int, ...] = ()
    zone_id: int | None = None
    gate_id: int | None = None
    direction: str = "in"
    max_entries: int = 1
    readers: tuple[str, ...] = ()
    relay: str = ""  # releases the entry direction
    relay_out: str = ""  # releases the exit direction
    relay_both_directions: bool = False  # `relay` is direction-neutral (opt-in; see below)
    relay_pulse_ms: int = 800
    debounce_ms: int = 2000
    ticket_types: tuple[int, ...] = ()
    exclude_ticket_types: tuple[int, ...] = ()
    include_products: bool = False
    age_unknown: str = "refuse"
    grace_minutes: int = 0
    passage_in: str = ""  # input pulsed when someone passed in (empty: no confirmation)
    passage_out: str = ""  # the same for the exit direction
    passage_timeout_ms: int = 5000
    held_open_ms: int = 10_000
    light_green: str = ""
    light_red: str = ""
    buzzer: str = ""
    display: str = ""
    indicate_admit: str = "green:1500"
    indicate_refuse: str = "red:1500,buzzer:300"
    indicate_not_passed: str = "red:800"
    indicate_alarm: str = "red:3000,buzzer:3000"


@dataclass(frozen=True)
class Config:
    """The whole configuration; sections are plain dicts of validated values."""

    path: str
    api: dict[str, Any]
    store: dict[str, Any]
    events: dict[str, Any]
    sync: dict[str, Any]
    status: dict[str, Any]
    log: dict[str, Any]
    control: dict[str, Any]
    lanes: tuple[LaneConfig, ...] = field(default_factory=tuple)
    venue: dict[str, Any] | None = None  # None: no [venue] section, the gate works alone
    device: dict[str, Any] = field(default_factory=lambda: {"emergency_input": "",
                                                            "people_day_starts": "06:00"})
    has_api: bool = True  # False: the file has no [api] section (see require_platform)

    def require_platform(self) -> None:
        """The daemon must not quietly run against the production URL with an empty cache
        because [api] was forgotten: it needs the section, or `[api] offline = true`."""
        if not self.has_api and not self.api["offline"]:
            raise ConfigError("section [api] is missing: set base_url and company_id for the "
                              "platform link, or `offline = true` in [api] for a gate that runs "
                              "offline on purpose", path=self.path, key="api")

    @property
    def store_dir(self) -> Path:
        return Path(self.store["dir"]).expanduser()

    def lane(self, name: str | None) -> LaneConfig:
        """The named lane, or the only/first lane; a clear error naming the lanes otherwise."""
        if not self.lanes:
            raise ConfigError("no [[lanes]] configured; add one", path=self.path, key="lanes")
        if name is None:
            return self.lanes[0]
        for lane in self.lanes:
            if lane.name == name:
                return lane
        known = ", ".join(lane.name for lane in self.lanes)
        raise ConfigError(f"no lane named {name!r} (lanes: {known})", path=self.path, key="lanes")

    @property
    def event_ids(self) -> list[int] | None:
        """Configured event ids, or None for "all activated events"."""
        ids = self.events["ids"]
        return None if ids == "activated" else list(ids)

    @functools.cached_property
    def served_events(self) -> tuple[int, ...] | None:
        """`event_ids` as every scan's Facts carries it, made once per config (issue 18)."""
        ids = self.event_ids
        return tuple(ids) if ids is not None else None


def _check_value(path: str, key: str, opt: Option, value: Any) -> Any:
    kinds = opt.kind if isinstance(opt.kind, tuple) else (opt.kind,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        names = " or ".join(
            {"str": "a string", "int": "a whole number", "float": "a number", "bool": "true/false",
             "list": "a list"}.get(k.__name__, k.__name__)
            for k in kinds
        )
        got = f"{type(value).__name__} (the value is a secret: not shown)" if opt.secret \
            else f"{type(value).__name__} {value!r}"
        raise ConfigError(f"must be {names}, got {got}", path=path, key=key)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if opt.check is not None:
        problem = opt.check(value)
        if problem:
            raise ConfigError(problem, path=path, key=key)
    return value


def _read_table(path: str, prefix: str, table: Any, options: dict[str, Option]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError("must be a table", path=path, key=prefix)
    unknown = sorted(set(table) - set(options))
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} (known: {', '.join(sorted(options))})",
            path=path, key=f"{prefix}.{unknown[0]}",
        )
    out: dict[str, Any] = {}
    for key, opt in options.items():
        if key in table:
            out[key] = _check_value(path, f"{prefix}.{key}", opt, table[key])
        elif opt.required:
            raise ConfigError("is required", path=path, key=f"{prefix}.{key}")
        else:
            out[key] = list(opt.default) if isinstance(opt.default, list) else opt.default
    return out


def lane_from_dict(path: str, prefix: str, table: Any) -> LaneConfig:
    values = _read_table(path, prefix, table, LANE_OPTIONS)
    for key in ("event_ids", "readers", "ticket_types", "exclude_ticket_types"):
        values[key] = tuple(values[key])
    lane = LaneConfig(**values)
    check_lane_outputs(lane, path, prefix)
    return lane


def output_for(lane: LaneConfig, direction: str) -> str:
    """The output that releases `direction` ("in" | "out") on this lane, "" for none.

    One output per direction: `relay` lets people in, `relay_out` lets them out. The entry
    relay serves an exit only when the lane declares it direction-neutral."""
    if direction == "out":
        return lane.relay_out or (lane.relay if lane.relay_both_directions else "")
    return lane.relay


def passage_input_for(lane: LaneConfig, direction: str) -> str:
    """The input confirming a passage in `direction`, "" when that direction has none (an
    admit then stands at once, as before)."""
    return lane.passage_out if direction == "out" else lane.passage_in


def check_lane_outputs(lane: LaneConfig, path: str, prefix: str) -> None:
    """A lane that lets people out must not do it through the entry relay by accident: a
    ticket handed back over the barrier after an exit would walk the next person in."""
    if lane.relay_both_directions and lane.relay_out:
        raise ConfigError("cannot be true together with relay_out (one relay per direction "
                          "already)", path=path, key=f"{prefix}.relay_both_directions")
    if lane.relay_both_directions and not lane.relay:
        raise ConfigError("is true but the lane has no relay", path=path,
                          key=f"{prefix}.relay_both_directions")
    if lane.relay_out and lane.direction == "in":
        raise ConfigError('is set on a lane with direction = "in", which never lets anyone out',
                          path=path, key=f"{prefix}.relay_out")
    if lane.direction in ("out", "auto") and lane.relay and not lane.relay_out \
            and not lane.relay_both_directions:
        raise ConfigError(
            f'lane {lane.name!r} (direction = "{lane.direction}") has only an entry relay: set '
            "relay_out to the exit release, or relay_both_directions = true if the one relay "
            "is direction-neutral (then a ticket passed back after an exit can let someone in)",
            path=path, key=f"{prefix}.relay_out")


def parse_config(data: dict[str, Any], path: str = "<config>") -> Config:
    """Validate an already-parsed TOML document."""
    known = set(SECTIONS) | {"lanes", "venue"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown section [{unknown[0]}] (known: {', '.join(sorted(known))})",
            path=path, key=unknown[0],
        )
    sections = {name: _read_table(path, name, data.get(name, {}), opts)
                for name, opts in SECTIONS.items()}
    raw_lanes = data.get("lanes", [])
    if not isinstance(raw_lanes, list):
        raise ConfigError("must be an array of tables ([[lanes]])", path=path, key="lanes")
    lanes = tuple(lane_from_dict(path, f"lanes[{i}]", t) for i, t in enumerate(raw_lanes))
    names = [lane.name for lane in lanes]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"lane name {name!r} is used twice", path=path, key="lanes.name")
    venue = _read_table(path, "venue", data["venue"], VENUE_OPTIONS) if "venue" in data else None
    if venue is not None and venue["heartbeat_ttl_s"] < 2 * venue["heartbeat_s"]:
        raise ConfigError(f"must be at least twice venue.heartbeat_s ({venue['heartbeat_s']} s):"
                          " one lost heartbeat must not show a gate offline",
                          path=path, key="venue.heartbeat_ttl_s")
    return Config(path=path, lanes=lanes, has_api="api" in data, venue=venue, **sections)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; every problem is a ConfigError naming file and key."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            "file not found (pass --config PATH, or copy config.example.toml there)", path=str(p)
        ) from None
    except PermissionError:
        raise ConfigError(unreadable_config(p), path=str(p)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=str(p)) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("is not UTF-8 text", path=str(p)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"is not valid TOML: {exc}", path=str(p)) from None
    return parse_config(data, str(p))
