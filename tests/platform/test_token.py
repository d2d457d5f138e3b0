"""Token loading: systemd credential first, then the env var, then a private file."""

from __future__ import annotations

import os

import pytest

from agent.errors import ConfigError, redact
from agent.platform.token import load_token

API = {"token_env": "GATE_AGENT_TOKEN", "token_file": "/nonexistent/token"}


def test_systemd_credential_wins(tmp_path):
    (tmp_path / "gate-agent-token").write_text("cred-token-1234\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path), "GATE_AGENT_TOKEN": "env-token-5678"}
    assert load_token(API, environ=env) == "cred-token-1234"


def test_env_var_then_file(tmp_path):
    assert load_token(API, environ={"GATE_AGENT_TOKEN": " env-token-5678 "}) == "env-token-5678"
    path = tmp_path / "token"
    path.write_text("file-token-abcd\n")
    os.chmod(path, 0o600)
    assert load_token({**API, "token_file": str(path)}, environ={}) == "file-token-abcd"


def test_loaded_token_is_redacted_everywhere(tmp_path):
    token = load_token(API, environ={"GATE_AGENT_TOKEN": "secret-redact-me-42"})
    assert redact(f"failed with {token} in url?token={token}") == \
        "failed with *** in url?token=***"


def test_group_readable_token_file_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "token"
    path.write_text("file-token-abcd\n")
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError) as info:
        load_token({**API, "token_file": str(path)}, environ={})
    assert f"chmod 600 {path}" in str(info.value)
    assert info.value.key == "api.token_file"
    assert "file-token-abcd" not in str(info.value)


def test_missing_token_names_the_config_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_token({**API, "token_file": str(tmp_path / "absent")}, environ={})
    assert info.value.key == "api.token_file"
    (tmp_path / "empty").write_text("")
    os.chmod(tmp_path / "empty", 0o600)
    with pytest.raises(ConfigError, match="no platform token"):
        load_token({**API, "token_file": str(tmp_path / "empty")}, environ={})


def _unit_default_credential() -> bytes:
    """What the shipped unit's `SetCredential=gate-agent-token:...` puts in the credential when
    /etc/gate-agent/token is missing (systemd C-unescapes the value)."""
    from tests.conftest import PROJECT_ROOT

    unit = (PROJECT_ROOT / "systemd" / "gate-agent.service").read_text()
    values = [line.split(":", 1)[1] for line in unit.splitlines()
              if line.startswith("SetCredential=gate-agent-token:")]
    assert len(values) == 1, "the unit must give the token credential a default"
    return values[0].encode().decode("unicode_escape").encode()


def test_the_units_default_credential_means_no_token(tmp_path):
    """An offline gate without /etc/gate-agent/token: the empty default the unit hands over is
    "no token" (the platform link off, status no_token), and a token from the other sources
    still counts."""
    (tmp_path / "gate-agent-token").write_bytes(_unit_default_credential())
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    with pytest.raises(ConfigError, match="no platform token|does not exist"):
        load_token(API, environ=env)
    assert load_token(API, environ={**env, "GATE_AGENT_TOKEN": "env-token-5678"}) == \
        "env-token-5678"
