"""Security of what the gate holds: the token (where it is read from, refused when exposed),
files at rest (mode 0600, no e-mail/passport/national id in the cache), and TLS (a server the
system does not trust is refused unless `api.ca_file` names its CA)."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import shutil
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.core.model import parse_entry_page
from agent.errors import ConfigError, Transport, redact
from agent.platform.client import PlatformClient, check_base_url
from agent.platform.governor import Governor
from agent.platform.token import InsecureTokenFile, load_token
from agent.runtime import bindings
from agent.runtime.daemon import Daemon
from agent.store.cache import TicketCache
from tests.conftest import DemoSite, run_cli

API = {"token_env": "GATE_AGENT_TOKEN", "token_file": "/nonexistent/token"}
SECRET = "tok-sec-0a1b2c3d4e5f6789"


# -- the token -----------------------------------------------------------------------------------

def _token_file(path: Path, mode: int, text: str = SECRET + "\n") -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666, 0o700 | 0o010])
def test_any_group_or_other_bit_refuses_the_token_file(tmp_path: Path, mode: int) -> None:
    path = _token_file(tmp_path / "token", mode)
    with pytest.raises(InsecureTokenFile) as info:
        load_token({**API, "token_file": str(path)}, environ={})
    assert f"chmod 600 {path}" in str(info.value) and SECRET not in str(info.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_token_file_is_read(tmp_path: Path, mode: int) -> None:
    path = _token_file(tmp_path / "token", mode)
    assert load_token({**API, "token_file": str(path)}, environ={}) == SECRET


def test_credentials_directory_then_env_then_file_and_empty_sources_fall_through(
        tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "gate-agent-token").write_text("\n")  # present but empty: next source
    file = _token_file(tmp_path / "token", 0o600, "file-token-1111\n")
    api = {**API, "token_file": str(file)}
    env = {"CREDENTIALS_DIRECTORY": str(creds), "GATE_AGENT_TOKEN": "  "}
    assert load_token(api, environ=env) == "file-token-1111"
    env["GATE_AGENT_TOKEN"] = "env-token-2222"
    assert load_token(api, environ=env) == "env-token-2222"
    (creds / "gate-agent-token").write_text("cred-token-3333\n")
    os.chmod(creds / "gate-agent-token", 0o644)  # systemd's copy: its mode is not ours to judge
    assert load_token(api, environ=env) == "cred-token-3333"
    # the env var named by api.token_env, not a fixed name
    assert load_token({**api, "token_env": "MY_TOKEN"}, environ={"MY_TOKEN": "named-4444"}) == \
        "named-4444"


def test_a_token_with_blanks_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = _token_file(tmp_path / "token", 0o600, "Bearer " + SECRET + "\n")
    with pytest.raises(ConfigError) as info:
        load_token({**API, "token_file": str(path)}, environ={})
    assert "blanks" in str(info.value) and SECRET not in str(info.value)


def test_daemon_refuses_to_start_with_an_exposed_token(site: DemoSite) -> None:
    token = _token_file(site.root / "token", 0o644)
    text = site.config_path.read_text().replace(
        'company_id = 1', f'company_id = 1\ntoken_file = "{token}"\ntoken_env = ""')
    site.config_path.write_text(text)
    done = run_cli("run", "--config", str(site.config_path), "--log-format", "json",
                   env={**os.environ, "GATE_AGENT_TOKEN": ""}, timeout=30)
    assert done.returncode == 2, done.stderr
    assert f"chmod 600 {token}" in done.stderr and SECRET not in done.stderr + done.stdout
    # an absent token only turns the platform link off (the gate works offline)
    token.unlink()
    daemon = Daemon(parse_config({"api": {"token_file": str(token), "token_env": ""},
                                  "store": {"dir": str(site.config.store_dir)}}))
    daemon.setup_platform()
    assert daemon.client is None and "does not exist" in (daemon.platform_disabled or "")


# -- files at rest ------------------------------------------------------------------------------

def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_file_in_store_dir_is_private(site: DemoSite) -> None:
    """cache, journal, their WAL/SHM files, devices.json — created 0600 under a lax umask.
    status.addr is written by the running daemon: checked in test_secrets_e2e.py."""
    old = os.umask(0o022)
    try:
        store = site.config.store_dir
        bindings.pair(store, "north-in", "sim:north", "reader")
        cache = TicketCache(store / "cache.db")  # open: -wal and -shm exist now
        cache.conn.execute("BEGIN IMMEDIATE")
        cache.conn.execute("INSERT INTO meta VALUES ('k', 'v')")
        cache.conn.execute("COMMIT")
        files = sorted(p for p in store.iterdir() if p.is_file())
        names = {p.name for p in files}
        assert {"cache.db", "cache.db-wal", "cache.db-shm", "journal.db", "devices.json"} <= names
        assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}
        assert _mode(store) & 0o077 == 0
        cache.close()
    finally:
        os.umask(old)


PERSONAL = {"customerEmail": "ada.hidden@example.org", "passport": "PX9988776655",
            "nationalId": "NID-5566778899"}


def _item_with_personal_data() -> dict:
    return {"id": 4242, "const": {"barcode": "PD-4242"}, "variable": [],
            "stable": {"customerName": "Ada Visible", **PERSONAL,
                       "dataCaptureAnswers": [{"id": 1, "answer": "vegetarian"}]}}


@pytest.mark.parametrize("keep", [False, True])
def test_personal_data_never_reaches_the_cache_file(tmp_path: Path, keep: bool) -> None:
    path = tmp_path / "cache.db"
    cache = TicketCache(path, keep_personal_data=keep)
    page = parse_entry_page({"content": [_item_with_personal_data()]})
    with cache.transaction():
        cache.put_items(1, page.items)
    hit = cache.find_barcode("PD-4242")[0].item
    assert hit.customer_name == "Ada Visible"  # what a steward sees is kept
    raw_bytes = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # db, -wal, -shm
    cache.close()
    raw_bytes += path.read_bytes()  # and after the WAL was folded back
    for value in PERSONAL.values():
        assert (value.encode() in raw_bytes) is keep, value
    assert b"Ada Visible" in raw_bytes  # the grep finds what is there


# -- TLS -------------------------------------------------------------------------------------------

OPENSSL = shutil.which("openssl")
# The TLS tests make their own CA with the openssl command: a stated precondition, not a failure.
needs_openssl = pytest.mark.skipif(
    OPENSSL is None, reason="the openssl command is not installed (needed to make a test CA)")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL or "openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _make_server_cert(d: Path, ca: str, name: str, san: str) -> None:
    (d / f"{name}.ext").write_text(
        f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
             cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _make_ca(d, "ca")
    _make_ca(d, "other-ca")
    _make_server_cert(d, "ca", "server", "IP:127.0.0.1")
    _make_server_cert(d, "ca", "wrong-name", "DNS:platform.example")
    return d


class _Handler(http.server.BaseHTTPRequestHandler):
    seen_auth: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        _Handler.seen_auth.append(self.headers.get("Authorization", ""))
        body = json.dumps([{"id": 501, "name": "TLS Fest"}]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_server(pki: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    cert = getattr(request, "param", "server")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    _Handler.seen_auth = []
    yield f"https://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _events(url: str, ca_file: str | None) -> list:
    async def call() -> list:
        client = PlatformClient(url, SECRET, 1, "en", 5.0, Governor(1000), ca_file,
                                max_retries=0)
        async with client:
            return await client.activated_events()
    return asyncio.run(call())


@needs_openssl
def test_https_to_loopback_is_an_accepted_base_url(https_server: str) -> None:
    assert check_base_url(https_server) == https_server
    with pytest.raises(ConfigError, match="api.base_url"):
        check_base_url(https_server.replace("https://127.0.0.1", "http://10.1.2.3"))


@needs_openssl
def test_untrusted_server_is_refused_and_the_token_never_sent(https_server: str,
                                                              pki: Path) -> None:
    for ca in (None, str(pki / "other-ca.pem")):
        with pytest.raises(Transport) as info:
            _events(https_server, ca)
        assert "TLS verification failed" in str(info.value) and "api.ca_file" in str(info.value)
        assert SECRET not in str(info.value)
    assert _Handler.seen_auth == []  # no request got through the handshake


@needs_openssl
def test_its_ca_in_api_ca_file_is_trusted(https_server: str, pki: Path) -> None:
    events = _events(https_server, str(pki / "ca.pem"))
    assert [e.name for e in events] == ["TLS Fest"]
    assert _Handler.seen_auth == [f"Bearer {SECRET}"]


@needs_openssl
@pytest.mark.parametrize("https_server", ["wrong-name"], indirect=True)
def test_a_trusted_ca_does_not_excuse_a_wrong_host_name(https_server: str, pki: Path) -> None:
    with pytest.raises(Transport, match="TLS verification failed"):
        _events(https_server, str(pki / "ca.pem"))


def test_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    for path in (str(bad), str(tmp_path / "absent.pem")):
        with pytest.raises(ConfigError) as info:
            _events("https://127.0.0.1:9/v1", path)
        assert info.value.key == "api.ca_file"


def test_redact_covers_a_token_in_any_text() -> None:
    load_token(API, environ={"GATE_AGENT_TOKEN": SECRET})
    assert SECRET not in redact(f"GET /x?token={SECRET} Authorization: Bearer {SECRET}")
