"""`gate-agent release`: a technician opens a lane by hand, journaled with who did it.

With the daemon running the request goes through its control socket (the daemon owns the
relays): `--hold` keeps the lane open until `--end`, and scans read meanwhile are recorded as
taken during the release. Without a daemon only one pulse is possible (a person let through),
driven here and journaled the same way. `gate-agent release --events` lists recent alarms and
releases (agent.store.passages).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import time
from typing import Any

from agent.commands import explain
from agent.config import load_config
from agent.errors import ConfigError


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("release", parents=[common],
                              help="open a lane by hand (one person, or held until --end)")
    p.add_argument("lane", nargs="?", metavar="LANE", help="lane name (default: the first)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--hold", action="store_true",
                     help="hold the lane open until `--end` (needs the running daemon)")
    how.add_argument("--end", action="store_true", help="end a held release")
    how.add_argument("--events", action="store_true",
                     help="list recent alarms and releases instead")
    p.add_argument("--by", metavar="NAME", help="who asks (default: $SUDO_USER or your login)")
    p.add_argument("--json", action="store_true", help="the answer as one JSON object")
    explain(p, "Open a lane by hand: one relay pulse (let one person through), or --hold it "
               "open until --end. Every release is journaled with who asked; while held, scans "
               "are recorded as taken during the release and not counted as entries.",
            ["sudo gate-agent release entry --by 'J. Smith'",
             "sudo gate-agent release entry --hold --by steward-3",
             "sudo gate-agent release entry --end", "gate-agent release --events --json"],
            "0 done; 1 the relay failed; 2 a mistake in the configuration or the command "
            "line (--hold without a running daemon)")
    p.set_defaults(func=cmd_release)


def _who(given: str | None) -> str:
    if given and given.strip():
        return given.strip()[:100]
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def cmd_release(args: argparse.Namespace) -> int:
    from agent.runtime.controlclient import acting_on_store, reading_store

    config = load_config(args.config)
    if args.events:
        with reading_store(config) as daemon:
            if daemon is not None:  # its journal (a technician may not open it)
                events = daemon.call("events")
            else:
                from agent.runtime import work
                from agent.runtime.opening import open_journal

                journal = open_journal(config)
                try:
                    events = work.lane_events(journal)
                finally:
                    journal.close()
        for event in ([] if args.json else events):
            print(f"{event['at']}  {event['lane'] or '*':<12} {event['kind']:<13} "  # noqa: T201
                  f"{event['by'] or '-':<16} {event['detail'] or ''}")
        if args.json:
            print(json.dumps(events))  # noqa: T201
        return 0
    lane = config.lane(args.lane)
    by = _who(args.by)
    hold = True if args.hold else False if args.end else None
    with acting_on_store(config) as daemon:
        if daemon is not None:
            answer = daemon.call("release", lane=lane.name, hold=hold, by=by)
        else:
            answer = _pulse_without_daemon(config, lane.name, lane.relay or lane.relay_out,
                                           lane.relay_pulse_ms, hold, by)
    print(json.dumps(answer) if args.json else  # noqa: T201
          f"lane {answer['lane']}: {answer['action']} by {answer['by']}")
    return 0


def _pulse_without_daemon(config: Any, lane: str, url: str, pulse_ms: int, hold: bool | None,
                          by: str) -> dict[str, Any]:
    if hold is not None:
        raise ConfigError("holding a lane open (or ending a hold) needs the running daemon, "
                          "which owns the relays; start it, or release one person without "
                          "--hold/--end", key="release")
    if not url:
        raise ConfigError(f"lane {lane} has no relay to release", key="lanes.relay")
    from agent.runtime.opening import open_journal
    from agent.store.passages import PassageLog, now_iso
    from drivers import open_output

    output = open_output(url)
    try:
        output.pulse(pulse_ms)
        time.sleep(pulse_ms / 1000)
    finally:
        output.close()
    journal = open_journal(config)
    try:
        PassageLog(journal).event(now_iso(), lane, "manual_pulse", by, "without the daemon")
    finally:
        journal.close()
    return {"lane": lane, "action": "manual_pulse", "by": by, "released_by": []}
