"""`gate-agent sync` on a gate in venue mode: the venue leader runs the pass, not the gate.

In venue mode one elected device spends the company's API budget (agent.venue.budget); a
technician's sync typed at any other gate must not list tickets beside it (a full listing of
100,000 items is ~100 requests, far beyond `platform_reserve`, and would push the leader into
429s). So the command asks the leader over the bus, and this gate's cache gets the pass from
the catalog stream like every other gate (agent.venue.catalog).

The request is a core NATS request/reply on `venuectl.<name>.sync` — a subject no stream
captures (a stream would store it and answer with a publish ack instead of the leader). Only
the leader subscribes, while it holds its lease; with no leader the server answers "no
responders" at once. The leader answers when the pass is done (or failed), with what it did
and the catalog position a gate must reach to hold the pass.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson

from agent.errors import GateAgentError


def subject(venue: str) -> str:
    return f"venuectl.{venue}.sync"


class BadRequest(ValueError):
    """A sync request the leader cannot read: answered with the reason, nothing is run."""


@dataclass(frozen=True)
class PassRequest:
    full: bool
    events: tuple[int, ...]  # empty: every event the leader serves
    device: str  # who asked (for the leader's log)


def encode_request(full: bool, events: list[int] | None, device: str) -> bytes:
    return orjson.dumps({"full": full, "events": list(events or []), "device": device})


def decode_request(data: bytes) -> PassRequest:
    """Strict: anything but the three fields with their types is refused, never guessed at."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("not a JSON object")
    full, events, device = body.get("full"), body.get("events", []), body.get("device", "")
    if not isinstance(full, bool):
        raise BadRequest("`full` must be true or false")
    if not isinstance(events, list) or not all(
            isinstance(e, int) and not isinstance(e, bool) and e > 0 for e in events):
        raise BadRequest("`events` must be a list of positive event ids")
    if not isinstance(device, str):
        raise BadRequest("`device` must be a string")
    return PassRequest(full, tuple(events), device)


def decode_answer(data: bytes) -> dict[str, Any]:
    """The leader's answer; an unreadable one is an error, never taken as a done pass."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise GateAgentError(f"the venue leader's answer is not JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
        raise GateAgentError(f"the venue leader's answer cannot be read: {data[:200]!r}")
    if not body["ok"]:
        leader = f"the venue leader {body['leader']}" if body.get("leader") else "the venue leader"
        raise GateAgentError(f"{leader} could not run the pass: "
                             f"{body.get('error') or 'no reason given'}")
    for key in ("leader", "mode", "applied", "requests", "catalog_seq"):
        if key not in body:
            raise GateAgentError(f"the venue leader's answer lacks `{key}`: {data[:200]!r}")
    if not isinstance(body["catalog_seq"], int) or isinstance(body["catalog_seq"], bool):
        raise GateAgentError(f"the venue leader's answer has no catalog position: "
                             f"{data[:200]!r}")
    return body


async def ask_leader(nc: Any, venue: str, *, full: bool, events: list[int] | None,
                     device: str, timeout_s: float) -> dict[str, Any]:
    """Ask the venue's leader for a pass and wait until it is done (at most `timeout_s`)."""
    import nats.errors

    try:
        reply = await nc.request(subject(venue), encode_request(full, events, device),
                                 timeout=timeout_s)
    except nats.errors.NoRespondersError as exc:
        raise GateAgentError(
            f"no venue leader answers on venue {venue!r}: no device holds the lease now "
            "(`gate-agent venue status` shows the gates; a device leads when `[venue] leader` "
            "allows it and it has a token)") from exc
    except nats.errors.TimeoutError as exc:
        raise GateAgentError(
            f"the venue leader did not finish the pass in {timeout_s:.0f} s; it may still be "
            "running: this gate gets it from the bus when it ends "
            "(`gate-agent venue status` shows each gate's cache age)") from exc
    return decode_answer(reply.data)


async def serve(nc: Any, venue: str, run: Any) -> Any:
    """The leader's side: `await run(PassRequest) -> dict` for every request, one at a time
    (nats-py runs a subscription's callback for one message after another); the answer is
    `{"ok": true, ...}` or `{"ok": false, "error": ...}`. Returns the subscription (the leader
    unsubscribes when it steps down)."""

    async def on_request(msg: Any) -> None:
        try:
            answer = await run(decode_request(msg.data))
            answer = {"ok": True, **answer}
        except BadRequest as exc:
            answer = {"ok": False, "error": f"bad request: {exc}"}
        except asyncio.CancelledError:  # the leader stepped down mid-pass: say so, then stop
            if msg.reply:
                await msg.respond(orjson.dumps({"ok": False, "error": "the leader stepped "
                                                "down during the pass; ask again"}))
            raise
        except Exception as exc:  # noqa: BLE001 - told to the asking gate, which exits 1
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        if msg.reply:
            try:
                await msg.respond(orjson.dumps(answer))
            except Exception:  # noqa: BLE001 - the asking gate gave up or the link dropped
                pass

    return await nc.subscribe(subject(venue), cb=on_request)
