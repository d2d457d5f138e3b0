"""The sandbox's control API under `/_sandbox/` (not part of the platform).

Only for the machine itself or for callers that present the control token printed at start-up
(`X-Sandbox-Control: <token>`), so exposing the sandbox on a LAN does not expose its switches.

    GET  /_sandbox/info              company, default token, events, demo credentials
    GET  /_sandbox/received          uploads (with uuids), request uuids, 429s sent, per endpoint
    POST /_sandbox/received/reset    forget what was received
    GET  /_sandbox/faults            current faults
    POST /_sandbox/faults            {"latency_s", "error_rate", "reset_rate", "malformed_rate",
                                      "lost_after_commit_rate", "error_after_commit_rate",
                                      "storm", "async_delay_s", "trial_expired",
                                      "clock_offset_s", "link_style", "scan_time_form",
                                      "upload_answer"} (any subset; {"clear": true} resets all)
    POST /_sandbox/clock             {"advance_s": N} moves the server clock forward
    POST /_sandbox/tokens            {"token"?: T} adds a token (or issues one) -> {"token"}
    POST /_sandbox/tokens/revoke     {"token": T}
    POST /_sandbox/items             {"barcode": B, "status": "refunded"|"locked"|"sold"|...}
                                     changes an item as the box office would (shows in deltas)
"""

from __future__ import annotations

import ipaddress
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agent.sandbox.state import DEMO_EMAIL, DEMO_PASSWORD, Faults, SandboxState, TokenInfo


def _allowed(request: Request, state: SandboxState) -> bool:
    if request.headers.get("x-sandbox-control") == state.control_token:
        return True
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def control_routes(state: SandboxState) -> list[Route]:
    """Routes bound to `state`; every one refuses non-loopback callers without the token."""

    async def guarded(request: Request) -> JSONResponse:
        if not _allowed(request, state):
            return JSONResponse({"message": "Control token required."}, status_code=403)
        body: Any = {}
        if request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                body = {}
        if not isinstance(body, dict):
            return JSONResponse({"message": "JSON object expected."}, status_code=422)
        action = request.path_params["action"]
        with state.lock:
            try:
                status, answer = _act(state, request.method, action, body)
            except (KeyError, ValueError, TypeError) as exc:
                status, answer = 422, {"message": f"bad control request: {exc!r}"}
        return JSONResponse(answer, status_code=status)

    return [Route("/_sandbox/{action:path}", guarded, methods=["GET", "POST"])]


def _act(state: SandboxState, method: str, action: str, body: dict[str, Any]) -> tuple[int, Any]:
    key = (method, action.strip("/"))
    if key == ("GET", "info"):
        return 200, {"companyId": state.company_id, "token": state.default_token,
                     "events": [e["id"] for e in state.seed.events],
                     "login": {"email": DEMO_EMAIL, "password": DEMO_PASSWORD},
                     "rpm": state.rpm, "windowS": state.window_s}
    if key == ("GET", "received"):
        return 200, state.received_report()
    if key == ("POST", "received/reset"):
        state.reset_received()
        return 200, {"ok": True}
    if key == ("GET", "faults"):
        return 200, state.fault_status()
    if key == ("POST", "faults"):
        if body.pop("clear", False):
            state.faults = Faults()
            state.clock.offset_s = 0.0
        return 200, state.set_faults(body)
    if key == ("POST", "clock"):
        state.clock.offset_s += float(body["advance_s"])
        return 200, state.fault_status()
    if key == ("POST", "tokens"):
        token = body.get("token")
        if token:
            state.tokens[str(token)] = TokenInfo(8, {state.company_id})
        else:
            token = state.issue_token()
        return 200, {"token": token}
    if key == ("POST", "tokens/revoke"):
        return (200, {"ok": True}) if state.revoke(str(body["token"])) else \
            (404, {"message": "unknown token"})
    if key == ("POST", "items"):
        found = state.store.find(str(body["barcode"]))
        if found is None:
            return 404, {"message": "unknown barcode"}
        item = state.store.item(found.event_id, found.index)
        variable = item["variable"] if isinstance(item.get("variable"), dict) else {}
        if "status" in body:
            variable["status"] = str(body["status"])
        item["variable"] = variable
        if "listed" in body:  # off every listing, or back on it
            state.store.set_listed(found.event_id, int(item["id"]), bool(body["listed"]))
        state.store.put(found.event_id, item, state.clock.now())
        return 200, {"id": item["id"], "eventId": found.event_id,
                     "status": variable.get("status"),
                     "listed": int(item["id"]) not in state.store.unlisted[found.event_id]}
    return 404, {"message": f"unknown control action {method} /_sandbox/{action}"}
