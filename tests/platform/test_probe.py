"""The platform probe (agent.platform.probe) against real sockets: a listener is reachable and
is sent nothing (no request, so no budget spent); a closed port, a host that does not resolve
and an untrusted TLS certificate are not reachable, and say why."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

from agent.platform.probe import platform_address, probe
from agent.venue.node import free_ports
from tests.hostile.test_security import _Handler, https_server, needs_openssl, pki  # noqa: F401


def test_a_listening_port_is_reachable_and_is_sent_nothing() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received: list[bytes] = []

    def accept() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            while chunk := conn.recv(1024):  # until the probe closes its side
                received.append(chunk)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        assert asyncio.run(probe(f"http://127.0.0.1:{port}/v1", 2.0)) is None
        thread.join(5)
        assert not thread.is_alive()
        assert received == []  # not a byte: no HTTP request, nothing of the budget
    finally:
        listener.close()


def test_a_closed_port_is_not_reachable() -> None:
    (port,) = free_ports(1)
    error = asyncio.run(probe(f"http://127.0.0.1:{port}/v1", 2.0))
    assert error is not None and f"127.0.0.1:{port}" in error and "Refused" in error


def test_a_name_that_does_not_resolve_is_not_reachable() -> None:
    error = asyncio.run(probe("https://platform.invalid/v1", 2.0))
    assert error is not None and "platform.invalid:443" in error


@needs_openssl
def test_tls_is_checked_as_the_client_checks_it(https_server: str, pki: Path) -> None:  # noqa: F811
    assert asyncio.run(probe(https_server, 2.0, str(pki / "ca.pem"))) is None
    untrusted = asyncio.run(probe(https_server, 2.0, str(pki / "other-ca.pem")))
    assert untrusted is not None and "CERTIFICATE_VERIFY_FAILED" in untrusted
    assert _Handler.seen_auth == []  # the handshake only: no request reached the server


def test_the_address_comes_from_api_base_url() -> None:
    assert platform_address("https://api.example.com/v1") == ("api.example.com", 443, True)
    assert platform_address("http://127.0.0.1:8080/v1") == ("127.0.0.1", 8080, False)
