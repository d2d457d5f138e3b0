"""What the running daemon tells the outside about itself: the status snapshot, the HTTP
status endpoint that serves it, and the systemd watchdog loop that pings systemd and writes
the one-line status with it.

Apart from agent.runtime.daemon because none of it decides, opens or starts anything: it reads
the daemon's state (its lanes, stores, platform link, venue bus) and says it. The health
rules themselves are agent.ops.status; the HTTP app is agent.ops.server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import uvicorn

from agent import __version__
from agent.core.codes import epoch_iso
from agent.errors import CacheUnavailable, GateAgentError
from agent.files import write_private
from agent.ops.dashboard import venue_view
from agent.ops.server import build_app, split_listen
from agent.ops.status import evaluate, summary_line
from agent.runtime import cachecare, venuewiring
from agent.runtime.notify import watchdog_interval
from agent.runtime.storeaccess import store_owner

if TYPE_CHECKING:
    from agent.runtime.daemon import Daemon

log = logging.getLogger("gate_agent.daemon")

STATUS_RETRY_S = 5.0  # how often a status endpoint that cannot listen tries its port again
STATUS_BACKLOG = 128  # connections queued before the status server accepts (uvicorn: 2048)


def report(d: Daemon) -> dict[str, Any]:
    """The status snapshot (`gate-agent status`, /status, the heartbeats, the metrics)."""
    now = datetime.now(UTC)
    journal: dict[str, Any] = {"path": str(d.journal_path)}
    if d.journal is not None:
        try:
            journal.update(d.journal.counts())
        except GateAgentError as exc:
            journal["error"] = str(exc)
    if d.journal_error:  # not opened at start (tried again: journal_access)
        journal["error"], journal["unopened"] = d.journal_error, True
    cache: dict[str, Any] = {"degraded": d.cache_degraded,
                             "unreadable": d.cache_unreadable}
    if d.status_cache is not None:
        try:
            cache.update(d.status_cache.get_status())
        except CacheUnavailable as exc:  # damaged under the running gate: a fail reason
            cache["read_failed"] = str(exc)
            cachecare.cache_failed(d, str(exc))
        except Exception as exc:  # noqa: BLE001 - status must answer even mid-swap
            cache["error"] = str(exc)
    platform: dict[str, Any] = {"disabled": d.platform_disabled,
                                "offline": d.config.api["offline"]}
    led = d.role.platform_status() if d.role is not None else None
    if led is not None:
        platform.update(led)  # venue mode: the leader's link (as long as it leads)
    elif d.client is not None:
        platform.update(d.client.get_status())
    snap: dict[str, Any] = {
        "version": __version__, "uptime_s": round(time.time() - d.started, 1),
        "started_at": epoch_iso(d.started),
        "lanes": [runner.get_status() for runner in d.lanes.values()],
        "cache": cache, "journal": journal, "platform": platform,
        "upload": (d.role.upload_status.as_dict() if d.role is not None else
                   d.uploader.status.as_dict() if d.uploader else None),
        "sync": d.syncer.progress.as_dict() if d.syncer else None,
        "jobs": d.jobs.get_status(), "status_listen": d.listen_address,
        "status_error": d.status_error,
        "pairings_error": d.pairings_error, "reload_error": d.reload_error,
        "venue": venue_status(d),
        "emergency": d.emergency.get_status(), "clock": d.clock.get_status(),
    }
    if snap["venue"] is not None and d.role is not None:
        snap["venue"]["leader"] = d.role.get_status()
    health, reasons = evaluate(snap, now, d.config.sync["max_cache_age_s"])
    snap["health"], snap["reasons"] = health, [r.as_dict() for r in reasons]
    return snap


def venue_status(d: Daemon) -> dict[str, Any] | None:
    if d.bus is not None:
        return d.bus.get_status(d.journal)
    if d.config.venue is None or d.venue_error is None:
        return None
    return {"venue": d.config.venue["name"], "connected": False,
            "open_error": d.venue_error}


async def serve_status(d: Daemon) -> None:
    """The status endpoint. A port held by something else must not keep the gate down
    (the service would restart every 2 s, lanes and all): the gate runs without it,
    says so (`status_unavailable` in systemd's status line and the log) and tries the
    port again every `status_retry_s` (STATUS_RETRY_S)."""
    host, port = split_listen(d.config.status["listen"], d.config.status["token"])
    app = build_app(d.report, d.metrics.render, d.config.status["token"],
                    lambda: venue_view(d.bus, d.status_cache, datetime.now(UTC)))
    while True:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            break
        except OSError as exc:
            sock.close()
            if d.status_error is None:
                log.error("status endpoint: cannot listen on %s:%s (%s); the gate runs "
                          "without it and tries again every %g s", host, port,
                          exc.strerror, d.status_retry_s)
            d.status_error = f"cannot listen on {host}:{port} ({exc.strerror})"
        try:
            await asyncio.wait_for(d.stop_event.wait(), timeout=d.status_retry_s)
            return
        except TimeoutError:
            pass
    d.status_error = None
    # listening before status.addr names it: a client that reads the file at once (the
    # CLI, the demo, a test) must be queued until uvicorn accepts, not refused (it was,
    # once in CI: bound only, the port refuses connections until uvicorn's start-up)
    sock.listen(STATUS_BACKLOG)
    actual = sock.getsockname()[1]
    d.listen_address = f"{host}:{actual}"
    # 0600 like every other file of store.dir (was the umask's mode), and the store's
    # owner's when root runs the daemon in the foreground (as SQLite does for its -wal);
    # a read-only store.dir must not keep the status endpoint (and its alarm) down.
    try:
        write_private(d.config.store_dir / "status.addr", d.listen_address + "\n",
                      owner=store_owner(d.config.store_dir))
    except OSError as exc:
        log.error("cannot write %s: %s", d.config.store_dir / "status.addr", exc.strerror)
    log.info("status endpoint on http://%s/status", d.listen_address)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    d.server = StatusServer(config)
    await d.server.serve(sockets=[sock])


async def watchdog(d: Daemon) -> None:
    """systemd's watchdog ping (only while no lane thread has stalled) and status line."""
    interval = watchdog_interval()
    period = interval or 5.0
    while not d.stop_event.is_set():
        d.jobs.follow_clock()  # a wall-clock step (NTP at boot) must not stall the jobs
        venuewiring.follow_leader_clock(d)
        stalled = [n for n, r in d.lanes.items()
                   if time.monotonic() - r.heartbeat > 3 * period + 2]
        if interval and not stalled:
            d.notifier.watchdog()
        d.notifier.status(summary_line(d.report()))
        try:
            await asyncio.wait_for(d.stop_event.wait(), timeout=period)
        except TimeoutError:
            pass


class StatusServer(uvicorn.Server):
    """uvicorn without its own SIGINT/SIGTERM handlers: the daemon owns the signals and
    stops the status server last, after the lanes have drained."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
