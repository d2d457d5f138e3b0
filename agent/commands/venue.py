"""`gate-agent venue`: the venue bus from this gate's config — every gate's state (from their
heartbeats), a node's nats-server config (printed, or run), and the conflicts this gate found;
and `gate-agent sync` on a gate in venue mode (the leader runs the pass: `sync_through_leader`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from agent.commands import explain, plain
from agent.config import Config, load_config
from agent.errors import ConfigError, GateAgentError

if TYPE_CHECKING:
    from rich.table import Table

T = TypeVar("T")


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
                       "store knows them. With the daemon running, the daemon reads them.",
            ["gate-agent venue conflicts", "gate-agent venue conflicts --json | jq ."],
            "0 listed (none is not an error); 1 the running daemon did not answer; 2 no "
            "[venue] section, a configuration mistake, or no daemon and no access to store.dir "
            "(it names the sudo to use)")
    conflicts.set_defaults(func=cmd_conflicts)
    quar = sub.add_parser(
        "quarantine", parents=[common],
        help="scans the platform refused (422), held on the bus; --requeue sends them again")
    quar.add_argument("--json", action="store_true", help="print the list as JSON")
    quar.add_argument("--requeue", action="store_true",
                      help="put every quarantined scan back on the upload stream")
    quar.add_argument("--timeout", type=float, default=3.0,
                      help="seconds to wait for the bus (default 3)")
    explain(quar, "List the venue's quarantined scans: rows the platform refused with a 422 "
                  "naming them (or that it never confirmed after repeated tries), kept on the "
                  "bus with the platform's words instead of blocking the venue's uploads. "
                  "--requeue publishes them to the upload stream again; the leader sends "
                  "them as new rows (the scan uuid keeps the platform exactly once).",
            ["gate-agent venue quarantine", "gate-agent venue quarantine --requeue --json"],
            "0 listed (none is not an error); 1 the bus cannot be reached; 2 no [venue] "
            "section or a configuration mistake")
    quar.set_defaults(func=cmd_quarantine)


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


def on_bus(venue: dict[str, Any], config_path: str | None, timeout_s: float,
           body: Callable[[Any], Awaitable[T]], *, connection: bool = False) -> T:
    """Run `body(js)` (`body(nc)` with `connection`) on a short connection to the venue bus;
    any bus failure is one GateAgentError naming the servers and what the client said; the
    body's own GateAgentError passes as it is."""
    import asyncio

    import nats

    from agent.venue.bus import connect_options

    failures: list[str] = []

    async def failed(exc: Exception) -> None:  # the client's own report: kept for the message
        failures.append(f"{type(exc).__name__}: {exc}")

    async def run() -> T:
        nc = await asyncio.wait_for(nats.connect(
            **connect_options(venue, config_path), connect_timeout=timeout_s,
            max_reconnect_attempts=0, allow_reconnect=False, error_cb=failed), timeout_s + 1)
        try:
            return await body(nc if connection else nc.jetstream(timeout=timeout_s))
        finally:
            await nc.close()

    try:
        return asyncio.run(run())
    except GateAgentError:
        raise
    except Exception as exc:  # noqa: BLE001 - any bus failure: say which and stop
        said = failures[-1] if failures else f"{type(exc).__name__}: {exc}"
        raise GateAgentError(f"venue bus not reachable ({', '.join(venue['servers'])}): "
                             f"{said}") from exc


# How long `gate-agent sync` waits for the leader's pass: a full listing at the leader's
# budget takes about a minute per 60,000 items (1000-item async pages), a delta far less.
FULL_PASS_WAIT_S = 1800.0
DELTA_PASS_WAIT_S = 600.0
APPLY_WAIT_S = 120.0  # then for this gate's daemon to apply the pass from the bus
BUS_TIMEOUT_S = 5.0  # to connect, and for each JetStream call of the catalog catch-up


def sync_through_leader(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    """`gate-agent sync [--full] [--event ID]` in venue mode: the venue leader runs the pass
    (agent.venue.passrequest), so the company's budget has one owner; this gate then holds the
    pass from the catalog stream (its daemon applies it, or without one this command does).
    Returns what `cmd_sync` prints, as a direct sync would, plus the leader and its term."""
    import contextlib

    from rich.console import Console

    from agent.runtime import work
    from agent.runtime.controlclient import acting_on_store
    from agent.runtime.opening import CACHE_FILE
    from agent.store.cache import TicketCache
    from agent.venue import catalog, passrequest
    from agent.venue.bus import device_name

    venue = _venue(config)
    mode = "full" if args.full else "delta"
    cache_path = config.store_dir / CACHE_FILE
    keep = config.store["keep_personal_data"]
    err = Console(stderr=True)

    with acting_on_store(config) as daemon:
        async def run(nc: Any) -> dict[str, Any]:
            waiting = contextlib.nullcontext() if args.json else err.status(
                plain(f"venue {venue['name']}: the leader runs a {mode} pass for every gate ..."))
            with waiting:
                answer = await passrequest.ask_leader(
                    nc, venue["name"], full=args.full, events=args.event or None,
                    device=device_name(venue),
                    timeout_s=FULL_PASS_WAIT_S if args.full else DELTA_PASS_WAIT_S)
            if daemon is None:  # nobody follows the catalog on this gate now: apply it here
                cache = TicketCache(cache_path, keep_personal_data=keep, check=False)
                try:
                    follower = catalog.CatalogFollower(nc.jetstream(timeout=BUS_TIMEOUT_S),
                                                       venue["name"], cache)
                    answer["applied_here"] = await follower.catch_up(APPLY_WAIT_S)
                finally:
                    cache.close()
            return answer

        answer = on_bus(venue, config.path, BUS_TIMEOUT_S, run, connection=True)
        if daemon is None:
            events = work.cached_events(config, cache_path, args.event or None)
        else:
            events = _daemon_applies(daemon, answer, args.event or config.event_ids)
    return {"mode": mode, "applied": answer["applied"], "requests": answer["requests"],
            "leader": answer["leader"], "term": answer.get("term"),
            "passes": [p for p in answer.get("passes") or [] if isinstance(p, dict)],
            "events": events}


def upload_through_bus(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    """`gate-agent upload [--drain]` in venue mode: this gate's pending scans go to the venue
    bus now (through its daemon, or directly without one); the leader uploads them with the
    venue's budget (agent.venue.uplink.hand_over_now)."""
    from agent.runtime.controlclient import acting_on_store
    from agent.runtime.opening import open_journal
    from agent.venue import uplink
    from agent.venue.bus import device_name

    venue = _venue(config)
    with acting_on_store(config) as daemon:
        if daemon is not None:
            out: dict[str, Any] = daemon.call("upload", drain=args.drain)
            return out
        journal = open_journal(config)
        try:
            return on_bus(venue, config.path, BUS_TIMEOUT_S, lambda js: uplink.hand_over_now(
                js, venue["name"], device_name(venue), journal,
                config.api["scanned_by"] or None, args.drain))
        finally:
            journal.close()


def _daemon_applies(daemon: Any, answer: dict[str, Any], wanted: list[int] | None
                    ) -> list[dict[str, Any]]:
    """Wait until this gate's daemon has applied the catalog up to the leader's pass; then its
    cache's events (from the daemon: this command does not open the daemon's files)."""
    import time

    deadline = time.monotonic() + APPLY_WAIT_S
    while True:
        status = daemon.call("status")
        leader = (status.get("venue") or {}).get("leader") or {}
        here = int(leader.get("catalog_position") or 0)
        if here >= answer["catalog_seq"]:
            events = (status.get("cache") or {}).get("events") or []
            return [e for e in events if not wanted or e.get("id") in wanted]
        if time.monotonic() > deadline:
            raise GateAgentError(
                f"the venue leader {answer['leader']} finished the pass, but this gate's daemon "
                f"has applied the catalog only up to {here} of {answer['catalog_seq']} after "
                f"{APPLY_WAIT_S:.0f} s (`gate-agent status` shows its venue link)")
        time.sleep(0.2)


def read_gates(venue: dict[str, Any], config_path: str | None,
               timeout_s: float) -> tuple[list[dict[str, Any]], list[str]]:
    """Every gate's latest heartbeat, straight from the bus (worst first), and the buckets
    that could not be read."""
    from agent.venue.heartbeat import read_board

    async def look(js: Any) -> tuple[list[dict[str, Any]], list[str]]:
        board, unread = await read_board(js, venue["name"], venue["heartbeat_s"],
                                         venue["heartbeat_ttl_s"], timeout_s)
        return board.rows(), unread

    return on_bus(venue, config_path, timeout_s, look)


def cmd_quarantine(args: argparse.Namespace) -> int:
    """The venue's quarantined scans (the leader's 422 refusals), and their requeue."""
    from rich.console import Console

    from agent.venue import quarantine

    config = load_config(args.config)
    venue = _venue(config)

    async def look(js: Any) -> tuple[list[dict[str, Any]], int]:
        kv = await quarantine.existing_bucket(js, venue["name"])
        if kv is None:
            return [], 0
        rows = await quarantine.listing(kv)
        requeued = await quarantine.requeue(js, kv, venue["name"]) if args.requeue else 0
        return rows, requeued

    rows, requeued = on_bus(venue, config.path, args.timeout, look)
    if args.json:
        print(json.dumps({"venue": venue["name"], "quarantined": rows, "requeued": requeued}))
        return 0
    Console().print(quarantine_table(venue["name"], rows))
    if args.requeue:
        print(f"{requeued} scan(s) requeued: the leader sends them again")
    return 0


def quarantine_table(venue: str, rows: list[dict[str, Any]]) -> Table:
    """`venue quarantine` as a table: the platform's words shown as they are."""
    from rich.table import Table

    table = Table(title=plain(f"Venue {venue}: {len(rows)} quarantined scan(s)"))
    for col in ("scan uuid", "barcode", "event", "scanned", "since (UTC)", "platform said"):
        table.add_column(col, overflow="fold")
    for e in rows:
        r = e["row"]
        table.add_row(*map(plain, (str(r.get("uuid")), str(r.get("barcode")),
                                   str(r.get("eventId")), str(r.get("scannedOn")),
                                   str(e["at"])[:19].replace("T", " "), str(e["reason"]))))
    return table


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console

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
    Console().print(gates_table(venue["name"], gates))
    return 0


def gates_table(venue: str, gates: list[dict[str, Any]]) -> Table:
    """`venue status` as a table: gate names and their reasons shown as they are."""
    from rich.table import Table

    from agent.ops.heartbeat import bus_text, reach_text

    table = Table(title=plain(f"Venue {venue}: {len(gates)} gate(s)"))
    for col in ("gate", "state", "health", "seen", "lanes", "per min", "to upload",
                "cache age", "bus", "platform", "version", "first reason"):
        table.add_column(col, overflow="fold")
    for g in gates:
        lanes = g.get("lanes") or []
        readers = [r for lane in lanes for r in lane.get("readers") or []]
        up = sum(1 for r in readers if r.get("connected"))
        queue = g.get("queue") or {}
        oldest = queue.get("oldest_pending_age_s")
        bus = g.get("bus") or {}
        reasons = g.get("reasons") or []
        table.add_row(*map(plain, (
            str(g["device"]), g["state"], str(g.get("health")), f"{g['age_s']:.0f} s ago",
            f"{len(lanes)} ({up}/{len(readers)} readers)",
            ", ".join(f"{k} {v}" for k, v in (g.get("per_min") or {}).items()) or "0",
            f"{queue.get('pending', 0)}" + (f", oldest {oldest:.0f} s" if oldest else ""),
            "never" if g.get("cache_age_s") is None else f"{g['cache_age_s']:.0f} s",
            bus_text(bus), reach_text(g),
            str(g.get("version")), str(reasons[0]["message"]) if reasons else "")))
    return table


def cmd_conflicts(args: argparse.Namespace) -> int:
    """Socket-first: the running daemon reads its venue store (a technician without sudo may
    not open store.dir); without one, read here as the store's owner."""
    from rich.console import Console

    from agent.runtime import work
    from agent.runtime.controlclient import reading_store

    config = load_config(args.config)
    _venue(config)
    with reading_store(config) as daemon:
        rows: list[dict[str, Any]] = daemon.call("venue_conflicts") if daemon is not None \
            else work.venue_conflicts(config.store_dir)
    if args.json:
        print(json.dumps({"conflicts": rows}))
        return 0
    Console().print(conflicts_table(rows))
    return 0


def conflicts_table(rows: list[dict[str, Any]]) -> Table:
    """`venue conflicts` as a table."""
    from rich.table import Table

    table = Table(title=f"Venue conflicts: {len(rows)}")
    for col in ("scanned (UTC)", "event", "item", "zone", "gate", "lane", "offline", "what"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*map(plain, (str(r["scanned_on"])[:19].replace("T", " "),
                                   str(r["event_id"]), str(r["item_id"]), str(r["zone_id"]),
                                   str(r["device"]), str(r["lane"]),
                                   "yes" if r["offline"] else "no", str(r["detail"]))))
    return table
