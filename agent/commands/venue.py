"""`gate-agent venue`: the venue bus from this gate's config — every gate's state (from their
heartbeats), a node's nats-server config (printed, or run), and the conflicts this gate found."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from agent.commands import explain
from agent.config import Config, load_config
from agent.errors import ConfigError, GateAgentError


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("venue", parents=[common], help="the venue bus ([venue])",
                              description="Venue bus helpers built from the [venue] section.")
    explain(p, "Venue bus helpers built from the [venue] section: a venue node's nats-server "
               "config, and the admits beyond a ticket's limit found after a partition.",
            ["gate-agent venue node-config --node 1", "gate-agent venue conflicts --json"])
    sub = p.add_subparsers(dest="venue_command", required=True)
    node = sub.add_parser(
        "node-config", parents=[common],
        help="print the nats-server config of venue node N (of [venue] servers)",
        description="One node per [venue] servers URL, clustered (JetStream replicas 3) when "
                    "there are several: cluster port = client port + 2000, monitoring = + 4000.")
    node.add_argument("--node", type=int, default=1, help="which server of the list (1-based)")
    node.add_argument("--store-dir", default="/var/lib/nats",
                      help="JetStream storage root (a folder per node under it)")
    node.add_argument("--run", action="store_true",
                      help="write the config next to the storage and exec nats-server on it")
    explain(node, "Print the nats-server config of venue node N (of [venue] servers): one node "
                  "per servers URL, clustered (JetStream replicas 3) when there are several; "
                  "cluster port = client port + 2000, monitoring = + 4000. --run writes it "
                  "next to the storage and runs nats-server on it.",
            ["gate-agent venue node-config --node 2 > /etc/nats/venue.conf",
             "sudo gate-agent venue node-config --node 1 --store-dir /var/lib/nats --run"],
            "0 printed (or the node ran and stopped); 2 no [venue] section, a bad --node, "
            "or nats-server missing")
    node.set_defaults(func=cmd_node_config)
    status = sub.add_parser(
        "status", parents=[common], help="every gate of the venue, worst first (heartbeats)")
    status.add_argument("--json", action="store_true", help="print the gates as JSON")
    status.add_argument("--timeout", type=float, default=3.0,
                        help="seconds to wait for the bus (default 3)")
    explain(status, "Every gate of the venue from the heartbeats on the bus, worst first: "
                    "offline (no heartbeat within [venue] heartbeat_ttl_s), stale (heartbeats "
                    "late), then online gates by health. Reads the bus directly: works with "
                    "this gate's daemon stopped.",
            ["gate-agent venue status", "gate-agent venue status --json | jq '.gates[0]'"],
            "0 listed (offline gates are not an error); 1 the bus cannot be reached; 2 no "
            "[venue] section or a configuration mistake")
    status.set_defaults(func=cmd_status)
    conflicts = sub.add_parser(
        "conflicts", parents=[common],
        help="admits beyond a ticket's limit, made by gates that could not see each other")
    conflicts.add_argument("--json", action="store_true", help="print the list as JSON")
    explain(conflicts, "List admits beyond a ticket's limit made by gates that could not see "
                       "each other (decided offline during a partition), as this gate's venue "
                       "store knows them.",
            ["gate-agent venue conflicts", "gate-agent venue conflicts --json | jq ."],
            "0 listed (none is not an error); 2 no [venue] section or a configuration mistake")
    conflicts.set_defaults(func=cmd_conflicts)


def _venue(config: Config) -> dict[str, Any]:
    if config.venue is None:
        raise ConfigError("no [venue] section: this gate works alone", path=config.path,
                          key="venue")
    return config.venue


def cmd_node_config(args: argparse.Namespace) -> int:
    from agent.venue.node import render_config, server_binary, specs_from_servers

    config = load_config(args.config)
    venue = _venue(config)
    specs = specs_from_servers(list(venue["servers"]), venue["name"], args.store_dir)
    if not 1 <= args.node <= len(specs):
        raise ConfigError(f"--node must be 1..{len(specs)} (one per [venue] servers URL)")
    spec = specs[args.node - 1]
    text = render_config(spec)
    if not args.run:
        print(text, end="")
        return 0
    conf = Path(spec.store_dir).with_suffix(".conf")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(text, encoding="utf-8")
    binary = server_binary()
    os.execv(binary, [binary, "-c", str(conf)])
    return 0  # not reached


def read_gates(venue: dict[str, Any], config_path: str | None,
               timeout_s: float) -> tuple[list[dict[str, Any]], list[str]]:
    """Every gate's latest heartbeat, straight from the bus (worst first), and the buckets
    that could not be read."""
    import asyncio

    import nats

    from agent.venue.bus import connect_options
    from agent.venue.heartbeat import read_board

    failures: list[str] = []

    async def failed(exc: Exception) -> None:  # the client's own report: kept for the message
        failures.append(f"{type(exc).__name__}: {exc}")

    async def look() -> tuple[list[dict[str, Any]], list[str]]:
        nc = await asyncio.wait_for(nats.connect(
            **connect_options(venue, config_path), connect_timeout=timeout_s,
            max_reconnect_attempts=0, allow_reconnect=False, error_cb=failed), timeout_s + 1)
        try:
            board, unread = await read_board(nc.jetstream(timeout=timeout_s), venue["name"],
                                             venue["heartbeat_s"],
                                             venue["heartbeat_ttl_s"], timeout_s)
            return board.rows(), unread
        finally:
            await nc.close()

    try:
        return asyncio.run(look())
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any bus failure: say which and stop
        said = failures[-1] if failures else f"{type(exc).__name__}: {exc}"
        raise GateAgentError(f"venue bus not reachable ({', '.join(venue['servers'])}): "
                             f"{said}") from exc


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    venue = _venue(config)
    gates, unread = read_gates(venue, config.path, args.timeout)
    for bucket in unread:
        print(f"warning: heartbeats not read from {bucket}; the list may be incomplete",
              file=sys.stderr)
    if args.json:
        print(json.dumps({"venue": venue["name"], "gates": gates, "unread": unread},
                         default=str))
        return 0
    table = Table(title=f"Venue {venue['name']}: {len(gates)} gate(s)")
    for col in ("gate", "state", "health", "seen", "lanes", "per min", "to upload",
                "cache age", "bus", "version", "first reason"):
        table.add_column(col, overflow="fold")
    for g in gates:
        lanes = g.get("lanes") or []
        readers = [r for lane in lanes for r in lane.get("readers") or []]
        up = sum(1 for r in readers if r.get("connected"))
        queue = g.get("queue") or {}
        oldest = queue.get("oldest_pending_age_s")
        bus = g.get("bus") or {}
        reasons = g.get("reasons") or []
        table.add_row(
            str(g["device"]), g["state"], str(g.get("health")), f"{g['age_s']:.0f} s ago",
            f"{len(lanes)} ({up}/{len(readers)} readers)",
            ", ".join(f"{k} {v}" for k, v in (g.get("per_min") or {}).items()) or "0",
            f"{queue.get('pending', 0)}" + (f", oldest {oldest:.0f} s" if oldest else ""),
            "never" if g.get("cache_age_s") is None else f"{g['cache_age_s']:.0f} s",
            "connected" if bus.get("connected") else "not connected",
            str(g.get("version")), reasons[0]["message"] if reasons else "")
    Console().print(table)
    return 0


def cmd_conflicts(args: argparse.Namespace) -> int:
    from agent.store.venue import VENUE_FILE, VenueStore

    config = load_config(args.config)
    _venue(config)
    path = config.store_dir / VENUE_FILE
    rows: list[dict[str, Any]] = []
    if path.exists():  # no file yet: the daemon has not met the bus, so no conflicts
        store = VenueStore(path, readonly=True)
        try:
            rows = store.conflicts()
        finally:
            store.close()
    if args.json:
        print(json.dumps({"conflicts": rows}))
        return 0
    table = Table(title=f"Venue conflicts: {len(rows)}")
    for col in ("scanned (UTC)", "event", "item", "zone", "gate", "lane", "offline", "what"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(str(r["scanned_on"])[:19].replace("T", " "), str(r["event_id"]),
                      str(r["item_id"]), str(r["zone_id"]), str(r["device"]), str(r["lane"]),
                      "yes" if r["offline"] else "no", r["detail"])
    Console().print(table)
    return 0
