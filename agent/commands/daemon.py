"""`gate-agent run` (the daemon) and `gate-agent status` (its health as a readable table)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.commands import explain, plain
from agent.config import DEFAULT_CONFIG_PATH, Config, load_config
from agent.errors import ControlError, DaemonSilent, GateAgentError

if TYPE_CHECKING:
    from rich.console import Console


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("run", parents=[common], help="run the gate daemon")
    p.add_argument("--log-format", choices=("auto", "text", "json"),
                   help="override [log] format")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="override [log] level")
    explain(p, "Run the gate: readers, decisions, relays, and the platform sync and upload "
               "jobs, until SIGTERM. One daemon per store.dir: a second one exits 2 naming the "
               "running one's PID. Under systemd: `systemctl start gate-agent`.",
            ["gate-agent run -c /etc/gate-agent/config.toml",
             "gate-agent run --log-format text --log-level debug"],
            "0 stopped by SIGTERM/SIGINT; 2 a configuration mistake, or another daemon runs on "
            "this store.dir; 70 internal error")
    p.set_defaults(func=cmd_run)
    p = subparsers.add_parser("status", parents=[common],
                              help="the running daemon's health, lanes, cache, queue and link")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.add_argument("--url", metavar="URL",
                   help="ask this status endpoint over HTTP, e.g. http://10.0.0.5:8080 (the "
                        ".../status the daemon logs works too; default: the local daemon)")
    explain(p, "The running daemon's health (pass/warn/fail with reasons), lanes, journal, "
               "cache and platform link: from the daemon's control socket, or over HTTP.",
            ["gate-agent status", "gate-agent status --json | jq .reasons",
             "gate-agent status --url http://10.0.0.5:8080/status"],
            "0 health pass or warn; 1 health fail, or no daemon answering; 2 a mistake in the "
            "configuration")
    p.set_defaults(func=cmd_status)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.runtime.daemon import run_daemon
    return run_daemon(args.config, args.log_format, args.log_level)


def _status_url(args: argparse.Namespace, config: Config | None) -> tuple[str, str]:
    token = config.status["token"] if config is not None else ""
    if args.url:
        # The daemon logs its endpoint as ".../status": accept that as well as the base URL.
        url = args.url.rstrip("/")
        return url.removesuffix("/status"), token
    assert config is not None  # only --url goes without a configuration
    address = config.status["listen"]
    if address.endswith(":0"):  # a port the daemon picked at start, written to status.addr
        addr_file = config.store_dir / "status.addr"
        try:
            address = addr_file.read_text().strip()
        except FileNotFoundError:
            pass  # no daemon has written one: the request below says none answers
        except OSError as exc:
            raise GateAgentError(
                f"[status] listen = {address!r} picks a port at start, written to {addr_file}, "
                f"which this user cannot read ({exc.strerror}): give the endpoint with "
                "`gate-agent status --url http://HOST:PORT`, or run with sudo") from None
    return f"http://{address}", token


def _config_for_status(args: argparse.Namespace) -> Config | None:
    """`status --url` from another machine needs no configuration: without `-c` and with no
    file at the default place, none is read (an endpoint wanting a token says so)."""
    if args.url and args.config == DEFAULT_CONFIG_PATH and not Path(args.config).exists():
        return None
    return load_config(args.config)


def cmd_status(args: argparse.Namespace) -> int:
    from agent.runtime.controlclient import running_daemon

    config = _config_for_status(args)
    daemon = None if args.url or config is None else running_daemon(config)
    if daemon is not None:
        try:
            report = daemon.call("status")
        except DaemonSilent:
            raise  # hung: its HTTP endpoint is served by the same stuck loop
        except ControlError:
            report = None  # not allowed on the socket (no sudo): ask the HTTP endpoint
        if report is not None:
            return _print_report(report, args.json)
    import httpx  # only when no socket answered: it is slow to load

    base, token = _status_url(args, config)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(f"{base}/status", headers=headers, timeout=5.0)
    except httpx.HTTPError as exc:
        raise GateAgentError(f"no daemon answering at {base}/status ({type(exc).__name__}); is "
                             "`gate-agent run` running? (systemctl status gate-agent)") from None
    if response.status_code == 401:
        raise GateAgentError(f"{base}/status wants a token: set [status] token in the config")
    if response.status_code != 200:
        raise GateAgentError(f"{base}/status answered HTTP {response.status_code}; is that the "
                             "gate-agent status endpoint ([status] listen)?")
    return _print_report(response.json(), args.json)


def _print_report(report: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        from rich.console import Console

        render(report, Console())
    return 0 if report["health"] != "fail" else 1


def render(report: dict[str, Any], console: Console) -> None:
    """The report as a technician reads it. Names, codes, messages and errors come from the
    platform, the readers and the venue: every line is `plain` (never read as markup)."""
    from rich.table import Table

    from agent.ops.status import relay_ok

    colour = {"pass": "green", "warn": "yellow", "fail": "red"}[report["health"]]
    console.print(plain((report["health"].upper(), f"bold {colour}"),
                        f"  gate-agent {report['version']}, up {report['uptime_s']:.0f} s"))
    for reason in report["reasons"]:
        console.print(plain("  ", (reason["level"], "red" if reason["level"] == "fail"
                                   else "yellow"), f" {reason['code']}: {reason['message']}"))
    lanes = Table(title="Lanes (times in UTC)")
    for col in ("lane", "readers", "relay", "queue", "last scan", "5 min", "total"):
        lanes.add_column(col)
    for lane in report["lanes"]:
        readers = f"{lane['readers_connected']}/{len(lane['readers'])}"
        relay = "-" if not lane["relay"] else ("error" if not relay_ok(lane["relay"])
                                                  else "HELD OPEN" if lane["relay"].get("held")
                                                  else "ok")
        last = lane["last_scan"] or {}
        last_text = f"{last.get('status', '-')} {last.get('at', '')[11:19]}" if last else "-"
        lanes.add_row(*map(plain, (lane["name"], readers, relay, str(lane.get("queue", "-")),
                                   last_text, _counts(lane["decisions_5min"]),
                                   _counts(lane["decisions_total"]))))
    console.print(lanes)
    for lane in report["lanes"]:
        passage = lane.get("passage")
        if passage:  # the turnstile's own signals (docs/turnstile.md)
            people = ", ".join(f"zone {z}: {n}" for z, n in sorted(passage["people"].items()))
            released = "".join(f"; release by {r['by']} waiting ({'/'.join(r['directions'])}, "
                               f"{r['ends_in_s']:.0f} s left)"
                               for r in passage.get("releases_waiting") or [])
            console.print(plain(f"Passages on {lane['name']}: {_counts(passage['totals'])}; "
                                f"{passage['waiting']} waiting{released}; "
                                f"people {people or '-'}"))
    emergency = report.get("emergency")
    if emergency and emergency.get("active"):
        console.print(plain((f"EMERGENCY RELEASE since {emergency.get('since')}", "bold red")))
    journal = report["journal"]
    console.print(plain(f"Journal: {journal.get('pending', '?')} pending (oldest "
                        f"{journal.get('oldest_pending') or '-'}), "
                        f"{journal.get('quarantined', 0)} quarantined, {journal.get('sent', 0)} "
                        "sent"))
    for event in report["cache"].get("events") or []:
        console.print(plain(f"Event {event['id']} {event.get('name') or ''}: {event['items']} "
                            f"items, last sync {event.get('last_sync') or 'never'}"))
    venue = report.get("venue")
    if venue:
        console.print(plain(
            f"Venue {venue['venue']} as {venue['device']}: "
            f"{'connected' if venue['connected'] else 'NOT CONNECTED'}, lag "
            f"{venue['lag']}, claims {venue['claims_granted']} granted / "
            f"{venue['claims_conflicted']} conflicted / {venue['claims_timed_out']} "
            f"timed out / {venue.get('claims_not_sent', 0)} not sent, "
            f"{venue['decided_offline']} decided offline, "
            f"{venue['conflicts']} conflict(s)"
            + (f", {venue['claims_unanswered']} admit(s) awaiting the bus's answer"
               if venue.get("claims_unanswered") else "")))
        gates = venue.get("gates") or {}
        if any(gates.values()):
            console.print(plain("Venue gates (heartbeats): " + ", ".join(
                f"{n} {state}" for state, n in gates.items() if n) +
                " — `gate-agent venue status` lists them"))
        leader = venue.get("leader")
        if leader:
            console.print(plain(_leader_line(leader)))
    platform = report["platform"]
    if platform.get("disabled"):
        console.print(plain(f"Platform: off ({platform['disabled']})"))
    else:
        unmeasured = platform.get("not_measured_since")
        console.print(plain(f"Platform: remaining {platform.get('remaining')}, last error "
                            f"{platform.get('last_error') or '-'}, clock skew "
                            f"{platform.get('clock_skew_s')} s"
                            + (f" (not measured since {unmeasured}: this gate no longer leads "
                               "the venue)" if unmeasured else "")))


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"


def _nobody_leads(leader: dict[str, Any]) -> str:
    """An election, or a venue left without a leader (status reason venue_no_leader)."""
    from agent.ops.status import leaderless_too_long

    leaderless = leaderless_too_long(leader)
    if leaderless is None:
        return "nobody (election under way)"
    return f"NOBODY for {leaderless:.0f} s (since {leader.get('leaderless_since')})"


def _leader_line(leader: dict[str, Any]) -> str:
    """Who leads the venue (the same on every gate), and this gate's view of its work."""
    who = leader.get("leader") or _nobody_leads(leader)
    mine = " (this gate)" if leader.get("this_device_leads") else ""
    since = f" since {leader['leader_since']}" if leader.get("leader_since") else ""
    ages = ", ".join(f"event {k} {v}" for k, v in (leader.get("leader_pass_at") or {}).items())
    lag = leader.get("upload_lag")
    waited = leader.get("upload_lag_s")
    lag = lag if lag is None or waited is None else f"{lag} scan(s), oldest {waited:.0f} s"
    return (f"Venue leader: {who}{mine}{since}, term {leader.get('leader_term') or '-'}; "
            f"budget in use {leader.get('budget_in_use_per_min', '-')}/min; upload lag "
            f"{'-' if lag is None else lag}; last sync published: {ages or 'none yet'}")
