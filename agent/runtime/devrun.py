"""Running the real daemon as a child process and watching it: for the demo and e2e tests.

The daemon is started exactly as systemd would (`gate-agent run --config ...`), with JSON log
lines on stderr; a thread parses them so callers can wait for "ready", for a decision, or for
any log record, instead of sleeping. The status endpoint's address is read from the state
directory (`status.addr`), since the demo and the tests let the daemon pick a free port.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

Record = dict[str, Any]


@functools.cache
def _one_tls_context() -> ssl.SSLContext:
    """httpx makes an SSL context for each request sent without a client, plain http too, and
    loads the CA bundle into it: about 30 ms of CPU. The tests and the demo poll /status every
    50 ms while they wait, so that alone took a third of a core: one context serves them all."""
    return httpx.create_ssl_context()


class DaemonProcess:
    def __init__(self, config_path: Path, store_dir: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, user: int | None = None,
                 python: str | None = None, groups: list[int] | None = None):
        """`user`: run the daemon as this uid (and its gid = uid), as systemd's `User=` would,
        with `groups` as its supplementary groups (`SupplementaryGroups=`);
        `python`: an interpreter that uid may run (default: this one)."""
        self.config_path = config_path
        self.python = python or sys.executable
        self.user = user
        self.groups = list(groups or [])
        self.store_dir = store_dir
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None
        self.records: list[Record] = []
        self.raw_lines: list[str] = []
        self._new: queue.Queue[Record] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> DaemonProcess:
        (self.store_dir / "status.addr").unlink(missing_ok=True)
        self.records.clear()
        self.raw_lines.clear()
        as_user: dict[str, Any] = ({"user": self.user, "group": self.user,
                                    "extra_groups": self.groups}
                                   if self.user is not None else {})
        self.proc = subprocess.Popen(
            [self.python, "-m", "agent", "run", "--config", str(self.config_path),
             "--log-format", "json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env=self.env, cwd=self.cwd, **as_user)
        self._thread = threading.Thread(target=self._pump, daemon=True, name="daemon log")
        self._thread.start()
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.raw_lines.append(line)
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = {"msg": line.rstrip(), "level": "raw"}
            self.records.append(record)
            self._new.put(record)

    # -- waiting --------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[Record], bool], timeout: float = 15.0,
                 what: str = "a log record") -> Record:
        """The first record, old or new, that matches; raises TimeoutError naming `what`."""
        for record in list(self.records):
            if predicate(record):
                return record
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                tail = "".join(self.raw_lines[-15:])
                raise TimeoutError(f"daemon: no {what} within {timeout} s; last lines:\n{tail}")
            try:
                record = self._new.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.proc is not None and self.proc.poll() is not None and self._new.empty():
                    tail = "".join(self.raw_lines[-15:])
                    raise RuntimeError(f"daemon exited ({self.proc.returncode}):\n{tail}") \
                        from None
                continue
            if predicate(record):
                return record

    def wait_ready(self, timeout: float = 20.0) -> str:
        self.wait_for(lambda r: r.get("msg", "").startswith("gate-agent ") and " ready: " in
                      r.get("msg", ""), timeout, "ready message")
        return self.status_url

    def decisions(self) -> list[Record]:
        return [r for r in self.records if r.get("logger") == "gate_agent.decisions"]

    def wait_decisions(self, count: int, timeout: float = 15.0) -> list[Record]:
        deadline = time.monotonic() + timeout
        while len(self.decisions()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"daemon: {len(self.decisions())} of {count} decisions")
            try:
                self._new.get(timeout=0.1)
            except queue.Empty:
                pass
        return self.decisions()

    # -- status ---------------------------------------------------------------------------

    @property
    def status_url(self) -> str:
        address = (self.store_dir / "status.addr").read_text().strip()
        return f"http://{address}"

    def get(self, path: str, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(self.status_url + path, headers=headers, timeout=10.0,
                         verify=_one_tls_context())

    def status(self) -> dict[str, Any]:
        return self.get("/status").json()

    # -- stopping -------------------------------------------------------------------------

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code (kills after `timeout`)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._join()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._join()

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
