"""Can this device reach the platform? A TCP connect (and TLS handshake for https) to
`api.base_url`'s host and port, and nothing else.

In venue mode only the elected leader talks to the platform, and the company's rate limit is
owned by its governor (agent.venue.budget): a member that wants to know whether *it* could do
the leader's work must not spend a request of that budget to find out. Opening a connection
reaches exactly as far as a request would on the network (name resolution, route, firewall,
the TLS certificate checked as the client checks it) without sending one. It cannot see a
revoked token or an overloaded platform; those only the leader's real requests show.

This module is the only place besides agent.platform.client that opens a connection to the
platform (one package talks to the network).
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

from agent.platform.client import tls_context


def platform_address(base_url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of `api.base_url` (already checked by agent.platform.client)."""
    parts = urlsplit(base_url)
    tls = parts.scheme == "https"
    return parts.hostname or "", parts.port or (443 if tls else 80), tls


async def probe(base_url: str, timeout_s: float, ca_file: str | None = None) -> str | None:
    """None when a connection (and TLS handshake for https) to the platform opens within
    `timeout_s`, else what failed (never the token: none is sent)."""
    host, port, tls = platform_address(base_url)
    context = tls_context(ca_file) if tls else None
    where = f"{host}:{port}"
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context,
                                    server_hostname=host if tls else None), timeout_s)
    except TimeoutError:
        return f"no connection to {where} within {timeout_s:g} s"
    except OSError as exc:  # refused, unreachable, name not resolved, TLS refused (SSLError)
        return f"{where}: {type(exc).__name__}: {exc}"[:300]
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):  # the answer is known: do not wait long
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    return None
