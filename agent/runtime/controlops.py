"""What the running daemon does when a command asks over the control socket.

Each handler takes the request's `args` and answers a JSON-able dict. The work itself is
`agent.runtime.work`, the same the command does when no daemon runs; here it runs with the
daemon's own stores, lanes and platform client, and applies at once (a paired reader starts,
an imported file reaches every lane's cache, a new token serves the next request).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigError, GateAgentError, register_secret
from agent.runtime import bindings, cachecare, pairing, work
from agent.runtime.control import Handler, ProgressSink, progress_sink
from agent.runtime.opening import open_journal
from agent.store.cache import TicketCache

if TYPE_CHECKING:
    from agent.runtime.daemon import Daemon


Op = Callable[["DaemonOps", dict[str, Any]], Awaitable[Any]]


def _own_cache_connection(handler: Op) -> Op:
    """A handler that opens cache.db itself: never while a rebuilt cache is renamed over it
    (agent.runtime.cachecare.SwapHold)."""
    @functools.wraps(handler)
    async def held(self: DaemonOps, args: dict[str, Any]) -> Any:
        async with self.d.cache_swaps.using():
            return await handler(self, args)
    return held


class DaemonOps:
    def __init__(self, daemon: Daemon):
        self.d = daemon

    def handlers(self) -> dict[str, Handler]:
        return {"ping": self.ping, "status": self.status, "scan": self.scan,
                "check": self.check, "events": self.events,
                "sync": self.sync, "upload": self.upload, "import": self.import_,
                "queue": self.queue, "queue_retry": self.queue_retry, "pair": self.pair,
                "unpair": self.unpair, "token": self.token, "release": self.release,
                "venue_conflicts": self.venue_conflicts, "pair_tag_ticket": self.pair_tag_ticket,
                "pair_tag": self.pair_tag, "devices_show": self.devices_show}

    async def ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid()}

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self.d.report)

    # -- scans --------------------------------------------------------------------------------

    @_own_cache_connection
    async def scan(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        lane = self.d.config.lane(args.get("lane"))
        gate = await asyncio.to_thread(self.d._gate)

        def decide_all() -> list[dict[str, Any]]:
            out = []
            for code in args.get("codes") or []:
                started, wall = time.perf_counter(), self.d.clock.now()
                result = gate.scan(str(code), lane, wall, args.get("direction"),
                                   args.get("kind"), mono_ms=time.monotonic_ns() // 1_000_000)
                self.d.manual_decided(lane.name, result, wall, time.perf_counter() - started)
                out.append(work.answer(result.decision, result.uuid))
            return out

        try:
            answers = await asyncio.to_thread(decide_all)
        finally:
            await asyncio.to_thread(gate.close)
        if any(a["uuid"] for a in answers):
            self.d.request_upload()
        return answers

    @_own_cache_connection
    async def check(self, args: dict[str, Any]) -> dict[str, Any]:
        """`gate-agent check` while the daemon runs: decided on the daemon's own stores (a
        technician in the socket's group may not open them), recording nothing."""
        lane = self.d.config.lane(args.get("lane"))
        try:  # no --at: now by the daemon's clock, the time its lanes decide by
            at = self.d.clock.now() if args.get("at") is None else \
                datetime.fromisoformat(str(args["at"]))
        except ValueError:
            raise ConfigError(f"check: {args.get('at')!r} is not an ISO 8601 time") from None
        gate = await asyncio.to_thread(self.d._gate)
        try:
            decision = await asyncio.to_thread(gate.check, str(args.get("code") or ""), lane, at,
                                               args.get("direction"), args.get("kind"))
        finally:
            await asyncio.to_thread(gate.close)
        return work.answer(decision, None)

    # -- platform ----------------------------------------------------------------------------

    def _syncer_or_refuse(self) -> Any:
        if self.d.syncer is None:
            raise ConfigError(f"the daemon's platform link is off ({self.d.platform_disabled})"
                              "; `gate-agent login`, then try again")
        return self.d.syncer

    async def sync(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.d.role is not None:  # `gate-agent sync` asks the venue leader instead
            raise GateAgentError("venue mode: the venue leader runs every sync pass (it owns "
                                 "the company's API budget); `gate-agent sync` asks it")
        syncer = self._syncer_or_refuse()
        events = [int(e) for e in args.get("events") or []] or None
        full = bool(args.get("full"))
        sink = progress_sink()
        if sink is None:
            result = await work.sync_pass(syncer, full=full, event_ids=events)
        else:  # the command's progress bar: every page of this command's own passes
            hook = _relaying(sink, syncer.progress.requests)
            syncer.listeners.append(hook)
            try:
                result = await work.sync_pass(syncer, full=full, event_ids=events)
            finally:
                syncer.listeners.remove(hook)
        if full and not events:
            self.d.cache_degraded = None
        else:
            cachecare.reload_lane_caches(self.d)
        return result

    async def upload(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.d.role is not None:  # venue mode: to the bus; the leader uploads
            return await self.d.role.upload_now(drain=bool(args.get("drain")))
        if self.d.uploader is None:
            self._syncer_or_refuse()
            raise GateAgentError("the daemon cannot upload: its scan journal is unavailable")
        return await work.upload_pass(self.d.uploader, drain=bool(args.get("drain")))

    async def token(self, args: dict[str, Any]) -> dict[str, Any]:
        token = str(args.get("token") or "").strip()
        if not token or any(ch.isspace() for ch in token):
            raise ConfigError("the new token is empty or contains blanks")
        register_secret(token)
        self.d.use_token(token)
        return {"used": True}

    # -- store --------------------------------------------------------------------------------

    @_own_cache_connection
    async def import_(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        files = [(str(f["name"]), str(f["text"])) for f in args.get("files") or []]
        event = args.get("event")

        def apply() -> list[dict[str, Any]]:
            cache = TicketCache(self.d.cache_path,
                                keep_personal_data=self.d.config.store["keep_personal_data"])
            try:
                return work.import_files(cache, files, int(event) if event else None)
            finally:
                cache.close()

        results = await asyncio.to_thread(apply)
        cachecare.reload_lane_caches(self.d)
        return results

    async def queue(self, args: dict[str, Any]) -> dict[str, Any]:
        def listing() -> dict[str, Any]:
            journal = open_journal(self.d.config)
            try:
                return work.queue_listing(journal, include_sent=bool(args.get("all")),
                                          limit=int(args.get("limit") or 50))
            finally:
                journal.close()

        return await asyncio.to_thread(listing)

    async def events(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """`gate-agent release --events`: recent alarms and releases from the journal."""
        def listing() -> list[dict[str, Any]]:
            journal = open_journal(self.d.config)
            try:
                return work.lane_events(journal)
            finally:
                journal.close()

        return await asyncio.to_thread(listing)

    async def devices_show(self, args: dict[str, Any]) -> dict[str, Any]:
        """`gate-agent devices show`: the pairings this daemon's config and store hold."""
        return await asyncio.to_thread(bindings.paired_view, self.d.config)

    async def venue_conflicts(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """`gate-agent venue conflicts`: read by the daemon (store.dir is 0700, its own)."""
        return await asyncio.to_thread(work.venue_conflicts, self.d.config.store_dir)

    async def queue_retry(self, args: dict[str, Any]) -> dict[str, Any]:
        uuids = [str(u) for u in args.get("uuids") or []] or None

        def retry() -> int:
            journal = open_journal(self.d.config)
            try:
                return journal.retry_quarantined(uuids)
            finally:
                journal.close()

        count = await asyncio.to_thread(retry)
        if count:
            self.d.request_upload()
        return {"retried": count}

    async def pair(self, args: dict[str, Any]) -> dict[str, Any]:
        if str(args.get("role")) in bindings.DEVICE_ROLES:  # the fire panel: no lane
            await asyncio.to_thread(bindings.pair_device, self.d.config.store_dir,
                                    str(args["role"]), str(args["url"]))
            self.d.reload()
            return {"lane": None, "applied": True,
                    "file": str(bindings.bindings_path(self.d.config.store_dir))}
        lane = self.d.config.lane(args.get("lane"))
        await asyncio.to_thread(bindings.pair, self.d.config.store_dir, lane.name,
                                str(args["url"]), str(args["role"]))
        self.d.reload()
        return {"lane": lane.name, "file": str(bindings.bindings_path(self.d.config.store_dir)),
                "applied": True}

    async def unpair(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("lane") is None:  # a device-level contact
            found = await asyncio.to_thread(bindings.unpair_device, self.d.config.store_dir,
                                            str(args["url"]))
            if found:
                self.d.reload()
            return {"lane": None, "found": found}
        lane = self.d.config.lane(args.get("lane"))
        found = await asyncio.to_thread(bindings.unpair, self.d.config.store_dir, lane.name,
                                        str(args["url"]))
        if found:
            self.d.reload()
        return {"lane": lane.name, "found": found}

    # -- the pairing station (`gate-agent pair-tag`: its readers are its own, the rest is ours) -

    @_own_cache_connection
    async def pair_tag_ticket(self, args: dict[str, Any]) -> dict[str, Any]:
        """The ticket the station prompts for, from this daemon's cache (PairingRefused when
        it does not know it, as without a daemon)."""
        event = args.get("event")

        def look() -> dict[str, Any]:
            cache = self.d._open_cache(check=False)
            try:
                return pairing.ticket_answer(pairing.find_ticket(
                    cache, str(args.get("barcode") or ""), None if event is None else int(event)))
            finally:
                cache.close()

        return await asyncio.to_thread(look)

    @_own_cache_connection
    async def pair_tag(self, args: dict[str, Any]) -> dict[str, Any]:
        """A pairing with this daemon's platform client (its token and rate budget), its
        cache (the tag works at once on every lane) and, with --admit, its lane: journaled,
        shown and counted like a manual scan, on the venue's claims when it has a bus."""
        if self.d.client is None:
            raise pairing.PairingOffline(f"pairing needs the platform, and the daemon's platform "
                                         f"link is off ({self.d.platform_disabled}); nothing "
                                         "changed")
        lane = self.d.config.lane(args["admit_lane"]) if args.get("admit_lane") else None
        event = args.get("event")
        gate = await asyncio.to_thread(self.d._gate)
        station = pairing.Pairing(self.d.config, gate, self.d.client, self.d.clock,
                                  blocking=asyncio.to_thread, on_admit=self.d.manual_decided)
        try:
            result = await station.pair(str(args.get("barcode") or ""), str(args.get("tag") or ""),
                                        event_id=None if event is None else int(event),
                                        again=bool(args.get("again")), admit_lane=lane)
        finally:
            await station.aclose()
            await asyncio.to_thread(gate.close)
        if result.admit is not None and result.admit.uuid:
            self.d.request_upload()
        return pairing.pair_answer(result)

    async def release(self, args: dict[str, Any]) -> dict[str, Any]:
        """A technician's release (agent.commands.turnstile), journaled with who asked."""
        lane = self.d.config.lane(args.get("lane"))
        hold = args.get("hold")
        by = str(args.get("by") or "unknown")[:100]
        return await asyncio.to_thread(self.d.release_lane, lane.name,
                                       None if hold is None else bool(hold), by)


PROGRESS_FIELDS = ("phase", "event_id", "pages", "items", "total", "requests", "started")


def _relaying(sink: ProgressSink, requests_before: int) -> Any:
    """A sync progress listener that sends the reports of this command's own passes down its
    connection (its request count from this command's start, as a sync of its own would
    count). Its passes are the ones its handler's task runs: a delta may now run beside a full
    resync (agent.platform.sync), and two commands' reports must not end in each other's
    summary. A listener of its own, added and removed by identity, so that commands ending in
    any order leave no other's hook behind (one hook replaced and put back did)."""
    task = asyncio.current_task()

    def hook(progress: Any) -> None:
        if asyncio.current_task() is not task:
            return
        report = {key: getattr(progress, key) for key in PROGRESS_FIELDS}
        report["requests"] = max(0, report["requests"] - requests_before)
        sink(report)
    return hook
