"""Which gates that may lead can reach the platform: one record per gate in the lease bucket.

Key `reach.<device>` beside the lease's `leader` key (agent.venue.lease), put by every gate
that may lead (`venue.leader`) at least every quarter of the lease TTL. The bucket's TTL is
the lease's, so a record lives exactly as long as a lease would: a gate whose election link is
gone (dead, cut off the bus, stopped) has no record within `lease_ttl_s`, the same test the
lease itself passes. That is why these records are here and not in the heartbeat: the
heartbeat is put by the daemon's claims connection from its status report (agent.ops.heartbeat),
so a gate can be "online" there while its election link is not — and the decisions read here
(agent.venue.stepdown) are about who can take the lease.

A record says, in its own terms and without any clock comparison between gates:
- `reachable`: the gate's last probe (agent.platform.probe) opened a connection, and that probe
  is recent (its `age_s` under a few probe intervals); for the leader, its real requests: the
  last one succeeded (None: nothing known yet);
- `held`: the gate stepped down and stays out of elections for a while (never a successor).
An unreadable record is skipped: never counted as a gate that can reach the platform.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from agent.venue.kvkeys import keys_under

log = logging.getLogger("gate_agent.venue.leader")

PREFIX = "reach."


def key(device: str) -> str:
    return f"{PREFIX}{device}"


@dataclass(frozen=True)
class Reach:
    """One gate's record (see the module docstring)."""

    device: str
    reachable: bool | None
    source: str  # "probe" (a member's connection test) or "requests" (the leader's own)
    age_s: float | None  # how old the probe or the last request outcome was when put
    error: str | None
    held: bool

    def encode(self) -> bytes:
        return orjson.dumps({"device": self.device, "reachable": self.reachable,
                             "source": self.source, "age_s": self.age_s, "error": self.error,
                             "held": self.held})

    @property
    def successor(self) -> bool:
        """Could take the lease and do the platform work: reachable, not held down."""
        return self.reachable is True and not self.held


def decode(value: bytes | None) -> Reach | None:
    """A record, or None when it cannot be read (never guessed at)."""
    try:
        body = orjson.loads(value or b"")
        reachable = body["reachable"]
        age = body["age_s"]
        if not isinstance(body["held"], bool) \
                or not (reachable is None or isinstance(reachable, bool)) \
                or not (age is None or isinstance(age, (int, float))):
            return None
        return Reach(device=str(body["device"]), reachable=reachable,
                     source=str(body["source"]), age_s=age,
                     error=None if body["error"] is None else str(body["error"]),
                     held=body["held"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


async def put(kv: Any, record: Reach) -> None:
    await kv.put(key(record.device), record.encode())


async def remove(kv: Any, device: str) -> None:
    """A clean stop: the record goes at once instead of at its TTL."""
    try:
        await kv.delete(key(device))
    except Exception as exc:  # noqa: BLE001 - it expires by itself
        log.info("venue reach record of %s not deleted (%s); it expires by TTL", device, exc)


async def successors(js: Any, bucket: str, kv: Any, device: str,
                     known: Iterable[str] = ()) -> list[str]:
    """The other gates whose live record in `bucket` (the lease bucket `kv`) says they can
    reach the platform and may lead now (sorted). The gates in `known` (found before) are
    read by name as well: a listing that missed one must not make a held-down gate think it
    is the only one that can work."""
    names = set(await keys_under(js, bucket, PREFIX)) | {key(d) for d in known}
    return [name[len(PREFIX):] for name in sorted(names - {key(device)})
            if await is_successor(kv, name[len(PREFIX):])]


async def is_successor(kv: Any, device: str) -> bool:
    """Whether `device`'s live record says now that it could take the lease and work."""
    try:
        entry = await kv.get(key(device))
    except Exception:  # noqa: BLE001 - expired or deleted: not live
        return False
    record = decode(entry.value if entry is not None else None)
    return record is not None and record.successor and record.device == device
