"""Where the platform token comes from, and keeping it secret.

Looked for in this order:
1. `$CREDENTIALS_DIRECTORY/gate-agent-token` — systemd's `LoadCredential=` (the unit's way);
2. the environment variable named by `api.token_env` (containers, development);
3. the file `api.token_file` — refused when group or others may read it, because a token is a
   personal access token valid until revoked.

Whatever is found is registered with `errors.register_secret` so no message can leak it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, register_secret

CREDENTIAL_NAME = "gate-agent-token"


class InsecureTokenFile(ConfigError):
    """The token file may be read by group or others: the daemon refuses to start (a missing
    token only turns the platform link off; a leaked one is a credential valid until revoked)."""


def _clean(raw: str) -> str:
    return raw.strip()


def _read_file(path: Path, *, check_mode: bool, key: str, config_path: str | None) -> str:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(
            f"token file {path} does not exist (put the platform token there, chmod 600, or set "
            "the environment variable named by api.token_env)", path=config_path, key=key,
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror}",
                          path=config_path, key=key) from None
    if check_mode and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InsecureTokenFile(
            f"token file {path} is readable by group or others; run: chmod 600 {path}",
            path=config_path, key=key,
        )
    try:
        return _clean(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read token file {path}: {exc}", path=config_path,
                          key=key) from None


def load_token(api: Mapping[str, Any], *, environ: Mapping[str, str] | None = None,
               config_path: str | None = None) -> str:
    """Return the API token from the first source that has one; ConfigError otherwise."""
    env = os.environ if environ is None else environ
    token = ""
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / CREDENTIAL_NAME).is_file():
        token = _read_file(Path(cred_dir) / CREDENTIAL_NAME, check_mode=False,
                           key="api.token_file", config_path=config_path)
    if not token and api.get("token_env"):
        token = _clean(env.get(api["token_env"], ""))
    if not token and api.get("token_file"):
        token = _read_file(Path(api["token_file"]).expanduser(), check_mode=True,
                           key="api.token_file", config_path=config_path)
    if not token:
        raise ConfigError(
            "no platform token found (looked in $CREDENTIALS_DIRECTORY/gate-agent-token, "
            f"${api.get('token_env') or 'GATE_AGENT_TOKEN'} and api.token_file)",
            path=config_path, key="api.token_file",
        )
    if any(ch.isspace() for ch in token):
        raise ConfigError("the token contains blanks or several lines; store only the token",
                          path=config_path, key="api.token_file")
    register_secret(token)
    return token
