"""`gate-agent run` (the daemon) and `gate-agent status` (its health as a readable table)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from agent.config import load_config
from agent.errors import GateAgentError


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("run", parents=[common], help="run the gate daemon")
    p.add_argument("--log-format", choices=("auto", "text", "json"),
                   help="override [log] format")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="override [log] level")
    p.set_defaults(func=cmd_run)
    p = subparsers.add_parser("status", parents=[common],
                              help="the running daemon's health, lanes, cache, queue and link")
    p.add_argument("--json", action="store_true", help="print GET /status as it is")
    p.add_argument("--url", help="status endpoint (default: from [status] listen / the state dir)")
    p.set_defaults(func=cmd_status)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.runtime.daemon import run_daemon
    return run_daemon(args.config, args.log_format, args.log_level)


def _status_url(args: argparse.Namespace) -> tuple[str, str]:
    config = load_config(args.config)
    token = config.status["token"]
    if args.url:
        return args.url.rstrip("/"), token
    address = config.status["listen"]
    addr_file = config.store_dir / "status.addr"
    if address.endswith(":0") and addr_file.exists():
        address = addr_file.read_text().strip()
    return f"http://{address}", token


def cmd_status(args: argparse.Namespace) -> int:
    base, token = _status_url(args)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(f"{base}/status", headers=headers, timeout=5.0)
    except httpx.HTTPError as exc:
        raise GateAgentError(f"no daemon answering at {base}/status ({type(exc).__name__}); is "
                             "`gate-agent run` running? (systemctl status gate-agent)") from None
    if response.status_code == 401:
        raise GateAgentError(f"{base}/status wants a token: set [status] token in the config")
    report = response.json()
    if args.json:
        print(json.dumps(report, indent=1))
        return 0 if report["health"] != "fail" else 1
    render(report, Console())
    return 0 if report["health"] != "fail" else 1


def render(report: dict[str, Any], console: Console) -> None:
    colour = {"pass": "green", "warn": "yellow", "fail": "red"}[report["health"]]
    console.print(f"[bold {colour}]{report['health'].upper()}[/]  gate-agent "
                  f"{report['version']}, up {report['uptime_s']:.0f} s")
    for reason in report["reasons"]:
        console.print(f"  [{ 'red' if reason['level'] == 'fail' else 'yellow'}]"
                      f"{reason['level']}[/] {reason['code']}: {reason['message']}",
                      highlight=False)
    lanes = Table(title="Lanes")
    for col in ("lane", "readers", "relay", "last scan", "5 min", "total"):
        lanes.add_column(col)
    for lane in report["lanes"]:
        readers = f"{lane['readers_connected']}/{len(lane['readers'])}"
        relay = "-" if not lane["relay"] else ("error" if lane["relay"].get("last_error")
                                                  else "ok")
        last = lane["last_scan"] or {}
        last_text = f"{last.get('status', '-')} {last.get('at', '')[11:19]}" if last else "-"
        lanes.add_row(lane["name"], readers, relay, last_text,
                      _counts(lane["decisions_5min"]), _counts(lane["decisions_total"]))
    console.print(lanes)
    journal = report["journal"]
    console.print(f"Journal: {journal.get('pending', '?')} pending (oldest "
                  f"{journal.get('oldest_pending') or '-'}), {journal.get('quarantined', 0)} "
                  f"quarantined, {journal.get('sent', 0)} sent")
    for event in report["cache"].get("events") or []:
        console.print(f"Event {event['id']} {event.get('name') or ''}: {event['items']} items, "
                      f"last sync {event.get('last_sync') or 'never'}")
    venue = report.get("venue")
    if venue:
        console.print(f"Venue {venue['venue']} as {venue['device']}: "
                      f"{'connected' if venue['connected'] else 'NOT CONNECTED'}, lag "
                      f"{venue['lag']}, claims {venue['claims_granted']} granted / "
                      f"{venue['claims_conflicted']} conflicted / {venue['claims_timed_out']} "
                      f"timed out, {venue['decided_offline']} decided offline, "
                      f"{venue['conflicts']} conflict(s)", highlight=False)
    platform = report["platform"]
    if platform.get("disabled"):
        console.print(f"Platform: off ({platform['disabled']})")
    else:
        console.print(f"Platform: remaining {platform.get('remaining')}, last error "
                      f"{platform.get('last_error') or '-'}, clock skew "
                      f"{platform.get('clock_skew_s')} s")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"
