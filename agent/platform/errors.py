"""Turning what the platform link produced into the one ApiError tree (see `agent.errors`).

`to_error` is the only place where HTTP statuses, httpx exceptions and unreadable bodies become
errors, so every caller sees the same specific type and a message that says what failed and
what to do. Messages go through `redact` (inside ApiError), so the token never shows.
"""

from __future__ import annotations

from typing import Any

import httpx

from agent.errors import (
    ApiError,
    BadResponse,
    Forbidden,
    NotFound,
    RateLimited,
    ServerError,
    Transport,
    Unauthenticated,
    Validation,
)

DEFAULT_RATE_WAIT_S = 60.0


def header_number(headers: httpx.Headers, name: str) -> float | None:
    """A numeric response header, None when absent or not a number."""
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw.strip())
    except ValueError:
        return None


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"][:300]
    return ""


def _field_errors(body: Any) -> dict[str, list[str]]:
    raw = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(raw, dict):
        return {}
    out: dict[str, list[str]] = {}
    for key, value in raw.items():
        items = value if isinstance(value, list) else [value]
        out[str(key)] = [str(v) for v in items]
    return out


def to_error(what: str, *, response: httpx.Response | None = None,
             exc: BaseException | None = None) -> ApiError:
    """The ApiError for a failed call `what` ("GET /entry/tickets"): from a response or exception.

    Callers `raise to_error(...) from exc` so the original cause stays in the traceback.
    """
    if response is None:
        if isinstance(exc, httpx.TimeoutException):
            return Transport(f"{what}: the platform did not answer in time ({type(exc).__name__});"
                             " check the network, or raise api.timeout_s")
        if isinstance(exc, httpx.HTTPError):
            reason = str(exc) or type(exc).__name__
            if "CERTIFICATE" in reason.upper() or "SSL" in reason.upper():
                return Transport(f"{what}: TLS verification failed ({reason}); check the system "
                                 "clock and api.ca_file")
            return Transport(f"{what}: network failure ({type(exc).__name__}: {reason}); "
                             "check the network and api.base_url")
        if isinstance(exc, ValueError):
            return BadResponse(f"{what}: the platform sent something that is not JSON ({exc}); "
                               "retry later, report if it persists")
        return BadResponse(f"{what}: unexpected answer ({exc})")
    status = response.status_code
    body = _body(response)
    text = _message(body)
    said = f" (platform says: {text})" if text else ""
    if status == 401:
        return Unauthenticated(f"{what}: the token was refused (401){said}; put a valid token "
                               "in api.token_file, the old one may be revoked", body=body)
    if status == 403:
        return Forbidden(f"{what}: not allowed (403){said}; check api.company_id and that the "
                         "company's subscription/trial is active", body=body)
    if status == 404:
        return NotFound(f"{what}: not found (404){said}; check the event id and api.base_url",
                        body=body)
    if status == 422:
        errors = _field_errors(body)
        detail = "; ".join(f"{k}: {' '.join(v)}" for k, v in list(errors.items())[:5])
        return Validation(f"{what}: the platform rejected the data (422){said}"
                          + (f" [{detail}]" if detail else ""), errors=errors, body=body)
    if status == 429:
        wait = header_number(response.headers, "X-Available-In-Seconds")
        wait_s = wait if wait is not None and wait >= 0 else DEFAULT_RATE_WAIT_S
        # Say when, not "waiting": a command exits here, only the daemon waits for the window.
        return RateLimited(f"{what}: the company's rate limit is used up (429); the platform "
                           f"accepts requests again in {wait_s:.0f} s", wait_s=wait_s, body=body)
    if status >= 500:
        return ServerError(f"{what}: platform error {status}{said}; will retry, report if it "
                           "persists", status=status, body=body)
    return BadResponse(f"{what}: unexpected HTTP status {status}{said}", status=status, body=body)
