"""[venue] settings the bus connects with: the credentials file is a secret (0600 enforced,
like the token file), and the daemon refuses to start when others may read it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.errors import ConfigError
from agent.venue.bus import connect_options, device_name
from tests.conftest import run_cli

CREDS = """-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.sig
------END NATS USER JWT------
"""


def _venue(**extra: object) -> dict:
    config = parse_config({"venue": {"name": "hall", "servers": ["nats://127.0.0.1:4222"],
                                     **extra}})
    assert config.venue is not None
    return config.venue


def test_credentials_must_be_private(tmp_path: Path) -> None:
    creds = tmp_path / "gate.creds"
    creds.write_text(CREDS)
    os.chmod(creds, 0o644)
    with pytest.raises(ConfigError) as info:
        connect_options(_venue(credentials=str(creds)), "c.toml")
    assert "c.toml: venue.credentials:" in str(info.value) and "chmod 600" in str(info.value)
    assert "eyJ0" not in str(info.value)  # the secret is never in the message
    os.chmod(creds, 0o600)
    assert connect_options(_venue(credentials=str(creds)))["user_credentials"] == str(creds)
    seed = tmp_path / "gate.nk"
    fd = os.open(seed, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU\n")
    os.close(fd)
    assert connect_options(_venue(credentials=str(seed)))["nkeys_seed"] == str(seed)
    with pytest.raises(ConfigError, match="venue.credentials"):
        connect_options(_venue(credentials=str(tmp_path / "missing.creds")))


def test_tls_servers_get_a_verifying_context(tmp_path: Path) -> None:
    opts = connect_options(_venue(servers=["tls://127.0.0.1:4222"]))
    assert opts["tls"].verify_mode.name == "CERT_REQUIRED"
    assert "tls" not in connect_options(_venue())


def test_device_defaults_to_a_subject_safe_host_name() -> None:
    assert device_name(_venue(device="north-1")) == "north-1"
    name = device_name(_venue())
    assert name and all(c.isalnum() or c in "-_" for c in name)


def test_daemon_refuses_to_start_with_exposed_credentials(tmp_path: Path) -> None:
    creds = tmp_path / "gate.creds"
    creds.write_text(CREDS)
    os.chmod(creds, 0o640)
    config = tmp_path / "c.toml"
    config.write_text(f"""
[api]
offline = true
[store]
dir = "{tmp_path / 'state'}"
[status]
listen = "127.0.0.1:0"
[venue]
name = "hall"
servers = ["nats://127.0.0.1:9"]
credentials = "{creds}"
""")
    out = run_cli("run", "--config", str(config), "--log-format", "text", timeout=30)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "venue.credentials" in out.stderr and "chmod 600" in out.stderr
    assert "eyJ0" not in out.stderr
