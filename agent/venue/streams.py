"""Create a venue stream or key-value bucket, or make one that exists with other settings fit.

Every gate creates the venue's streams and buckets at session start ("create" with the same
settings is accepted by the server). Once a setting changes (`venue.servers` from 1 to 3 nodes
asks for 3 replicas, a new `venue.lease_ttl_s` asks for another TTL), JetStream refuses the
create with error 10058 ("stream name already in use with a different configuration"); retried
for ever, that took every gate off the venue for good. So on 10058 each setting that differs
is updated in place where JetStream allows it (replicas, max age, duplicate window, per-subject
limit: `js.update_stream`, one setting at a time so one refusal does not block the others), and
a setting it refuses (storage type, retention, replicas above the number of nodes) is left as
the stream has it: the gate binds to the stream as it is, logs the difference once and keeps
it in `drift` (the caller's status), naming the setting and the `nats stream edit` command.

Only an answer is judged. A stream without a leader (no quorum, an election under way) has a
replica answer stream info, and a cluster without a meta leader answers a create or an update
with no answer at all (a timeout, JetStream "temporarily unavailable"): that is no refusal.
Taken as one, a change was put in `drift` as "the server refused the change: nats: timeout" and
never tried again until the next session set-up, however soon the quorum came back. So a
setting that differs on a leaderless stream, or an update not answered, raises: the caller's
set-up is tried again until the stream has a leader, which the session needs anyway (claims,
`stream_identity.leader_answer`). While a create is not answered, `waiting` hears each failure
(the bus's status says why its set-up waits, not only which step it is at). Whether a stream
exists is judged on an answer too: a failed create followed by a stream info that JetStream
does not answer is no "missing" (the create is not sent again on it) and no "exists": the
step fails with VenueStreamUnknown, said by the caller's set-up.

Replicas are only ever raised by a gate: a gate whose config lists fewer servers (or an old
config during a rolling change) would otherwise take them from the whole venue at each of its
session starts; it uses the stream as it is and says so. For the other settings, while gates
disagree the last one to start a session sets them: change every gate's config.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.errors import APIError, BadRequestError

from agent.errors import VenueNoStreamLeader, VenueStreamUnknown
from agent.venue.stream_identity import leaderless

log = logging.getLogger("gate_agent.venue.streams")

IN_USE_OTHER_CONFIG = 10058  # JetStream: stream name already in use with a different config
STREAM_NOT_FOUND = 10059  # JetStream: stream not found (the one answer that says "missing")
# JetStream's "no one can decide this now" (temporarily unavailable: no meta leader; cluster
# can not handle request: not the leader): no answer to a change, never a refusal of it
NOT_ANSWERED = {10008, 10009}
CREATE_RETRY_S = 30.0  # no meta leader yet (a cluster starting): create is tried this long
BUILT_IN = "built in"  # a setting the agent fixes (no config key asks for it)
REPLICAS_KEY = "venue.servers (3 or more: 3 replicas)"

# `nats stream edit` flags of the settings the agent sets; None: not editable in place
EDIT_FLAGS: dict[str, str | None] = {
    "num_replicas": "--replicas", "max_age": "--max-age", "duplicate_window": "--dupe-window",
    "max_msgs_per_subject": "--max-msgs-per-subject", "storage": None, "retention": None,
}

NEVER_LOWERED = {"num_replicas"}  # raised by a gate, lowered only by an operator

# (stream, setting, found, wanted, kept as it was) said once: a change made after it was
# refused is said too
_logged: set[tuple[str, str, str, str, bool]] = set()


@dataclass(frozen=True)
class Want:
    """One setting the config asks of a stream: `setting` a StreamConfig field, `key` the config
    key that decides it (for the operator), `along` fields that must change with it (a bucket's
    duplicate window may not exceed its TTL)."""

    setting: str
    value: Any
    key: str = BUILT_IN
    along: dict[str, Any] = field(default_factory=dict)


def is_in_use_error(exc: BaseException) -> bool:
    return isinstance(exc, BadRequestError) and exc.err_code == IN_USE_OTHER_CONFIG


def refused(exc: BaseException) -> bool:
    """The server answered a change and said no (replicas above the nodes, storage type):
    left as it is and said. Not a timeout, no responders, nor an API error meaning that no
    leader could decide it (NOT_ANSWERED): nothing was decided then."""
    if isinstance(exc, (NatsTimeoutError, NoRespondersError, TimeoutError)):
        return False
    return isinstance(exc, APIError) and exc.err_code not in NOT_ANSWERED


Waiting = Callable[[BaseException], object]  # told each failed try (its result unused)


async def _create(js: Any, make: Any, config: Any, stream: str,
                  waiting: Waiting | None = None) -> tuple[bool, Any]:
    """(True, `make(config)`), or (False, None) when `stream` exists and the create was
    refused: 10058, or another refusal of the new settings (a one-node server refuses 3
    replicas with 10074 before comparing). A failed create of a stream JetStream says is
    missing (10059) is retried for CREATE_RETRY_S, each failure said to `waiting`; one whose
    stream info is not answered raises VenueStreamUnknown (`_exists`)."""
    deadline = time.monotonic() + CREATE_RETRY_S
    while True:
        try:
            return True, await make(config)
        except Exception as exc:  # noqa: BLE001 - exists, or not made yet: retry a while
            if is_in_use_error(exc) or await _exists(js, stream, exc):
                return False, None
            if time.monotonic() > deadline:
                raise
            if waiting is not None:
                waiting(exc)
            await asyncio.sleep(0.25)


async def _exists(js: Any, stream: str, create_error: BaseException) -> bool:
    """After a failed create: any stream info answer says the stream exists, a replica's too
    (no leader now): it holds the stream, and what its settings need is judged by `reconcile`
    on that answer. Only JetStream's "stream not found" (10059) says it is missing (the create
    is tried again). Anything else (a timeout, no responders, no quorum) says nothing: taken
    as "missing", the create was sent again and again for CREATE_RETRY_S with only its own
    error said; taken as "exists", the set-up would go on with no stream. It raises
    VenueStreamUnknown instead, naming both errors: the caller's set-up step fails, says so
    and is tried again (agent.venue.setup)."""
    try:
        await js.stream_info(stream)
    except Exception as exc:
        if isinstance(exc, APIError) and exc.err_code == STREAM_NOT_FOUND:
            return False
        raise VenueStreamUnknown(
            f"cannot tell whether stream {stream} exists: its create failed "
            f"({_error_text(create_error)}) and its stream info got no answer "
            f"({_error_text(exc)})") from exc
    return True


def _error_text(exc: BaseException) -> str:
    """Short: both errors and the step must fit in status's 300 characters."""
    detail = (exc.description or f"code {exc.code}") if isinstance(exc, APIError) else str(exc)
    return f"{type(exc).__name__}: {detail}"[:70]


async def ensure_stream(js: Any, config: StreamConfig, wants: list[Want],
                        drift: dict[str, str] | None = None,
                        waiting: Waiting | None = None) -> None:
    """Create `config`'s stream, or fit the existing one to `wants` (see the module doc)."""
    assert config.name is not None
    drift = {} if drift is None else drift
    _forget(drift, config.name)
    made, _info = await _create(js, js.add_stream, config, config.name, waiting)
    if not made:
        await reconcile(js, config.name, wants, drift)


def kv_stream(bucket: str) -> str:
    """The stream that holds a KV bucket (JetStream's naming)."""
    return f"KV_{bucket}"


async def ensure_bucket(js: Any, config: KeyValueConfig, drift: dict[str, str] | None = None,
                        ttl_key: str = BUILT_IN, replicas_key: str = REPLICAS_KEY,
                        waiting: Waiting | None = None) -> Any:
    """Create `config`'s bucket, or fit the existing one (its stream `KV_<bucket>`) to the
    config's replicas, TTL and history, and bind to it (`waiting`: as `ensure_stream`'s)."""
    drift = {} if drift is None else drift
    stream = kv_stream(config.bucket)
    _forget(drift, stream)
    made, kv = await _create(js, js.create_key_value, config, stream, waiting)
    if made:
        return kv
    ttl = config.ttl or 0.0
    # nats-py makes a bucket's duplicate window min(2 min, TTL): it follows a new TTL
    window = min(120.0, ttl) if ttl else 120.0
    await reconcile(js, stream, [
        Want("num_replicas", config.replicas, replicas_key),
        Want("max_age", ttl, ttl_key, {"duplicate_window": window}),
        Want("max_msgs_per_subject", config.history),
        Want("storage", config.storage),
    ], drift)
    return await js.key_value(config.bucket)


async def reconcile(js: Any, name: str, wants: list[Want], drift: dict[str, str]) -> None:
    """Update each setting of stream `name` that differs from `wants`; one JetStream refuses
    is left as it is, logged once and noted in `drift[<name>.<setting>]`. A setting to change
    on a stream without a leader raises VenueNoStreamLeader, and an update not answered its
    error (see the module doc): nothing is decided, the caller tries again."""
    info = await js.stream_info(name)
    current = info.config
    for want in wants:
        found = getattr(current, want.setting)
        if _same(found, want.value):
            continue
        why = None
        if want.setting in NEVER_LOWERED and found is not None and want.value < found:
            why = "a gate never lowers them: a gate listing fewer servers would take them from all"
        elif leaderless(info):
            raise VenueNoStreamLeader(
                f"stream {name} has no leader now (no quorum, or an election under way): its "
                f"{want.setting} ({want.key}) is changed once it has one")
        else:
            try:
                updated = current.evolve(**{want.setting: want.value, **want.along})
                current = (await js.update_stream(updated)).config
            except Exception as exc:
                task = asyncio.current_task()
                if (task is not None and task.cancelling()) or not refused(exc):
                    raise
                why = "the server refused the change: " + (
                    getattr(exc, "description", None) or str(exc) or type(exc).__name__)
        if why is not None:
            text = _bound_text(name, want, found, why)
            drift[f"{name}.{want.setting}"] = text
            _say_once(name, want, found, f"venue: {text}", kept=True)
            continue
        _say_once(name, want, found, f"venue: stream {name}: {want.setting} changed from "
                                     f"{_show(found)} to {_show(want.value)} ({want.key})",
                  kept=False)


def _bound_text(name: str, want: Want, found: Any, why: str) -> str:
    flag = EDIT_FLAGS.get(want.setting)
    fix = (f"run `nats stream edit {name} {flag} {_show(want.value)}` where the server allows"
           f" it, or set the config back" if flag else
           f"it cannot be changed in place: back up, `nats stream rm {name}` and let the "
           f"gates create it again, or set the config back")
    return (f"stream {name} has {want.setting} {_show(found)}, {want.key} asks "
            f"{_show(want.value)}; not changed ({why}), the stream is used as it is — "
            f"{fix}")[:400]


def _say_once(name: str, want: Want, found: Any, text: str, kept: bool) -> None:
    key = (name, want.setting, _show(found), _show(want.value), kept)
    if key not in _logged:
        _logged.add(key)
        log.warning("%s", text)


def _forget(drift: dict[str, str], stream: str) -> None:
    for key in [k for k in drift if k.startswith(f"{stream}.")]:
        del drift[key]


def _same(found: Any, wanted: Any) -> bool:
    if wanted is None:
        return True  # not asked for: the server's default stands
    if isinstance(wanted, float) or isinstance(found, float):
        return found is not None and abs(float(found) - float(wanted)) < 1e-3
    return bool(found == wanted)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}s"
    return str(getattr(value, "value", value))
