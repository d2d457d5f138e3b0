"""Start the sandbox for tests and demos: in a background thread, or as a subprocess.

    with start_sandbox(tickets=1000, rpm=60) as sb:       # thread, port 0
        sb.url, sb.token                                   # http://127.0.0.1:PORT/v1, token
        sb.set_faults(error_rate=0.5); sb.received()       # control helpers (HTTP)
        sb.state                                           # the live SandboxState (thread only)

    sb = start_sandbox_process(tickets=1000)               # `python -m agent.sandbox.harness`
    ...; sb.stop()

Both speak to the sandbox through its control API, so the helpers work the same either way.
"""

from __future__ import annotations

import argparse
import functools
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from agent.sandbox.app import build_app
from agent.sandbox.seed import generated_seed, load_seed
from agent.sandbox.state import SandboxState

BACKLOG = 2048  # uvicorn's own default: it listens again on the socket with it


def make_state(*, tickets: int = 1000, seed_file: str | Path | None = None,
               token: str = "sandbox-token", company_id: int = 1, rpm: int = 60,
               window_s: float = 60.0, async_delay_s: float = 0.3,
               control_token: str | None = None) -> SandboxState:
    """A fresh sandbox state from the generated seed or a JSON seed file."""
    seed = load_seed(seed_file, company_id) if seed_file else generated_seed(tickets, company_id)
    state = SandboxState(seed, token=token, rpm=rpm, window_s=window_s,
                         control_token=control_token)
    state.faults.async_delay_s = async_delay_s
    return state


@functools.cache
def _one_tls_context() -> ssl.SSLContext:
    """httpx makes an SSL context for each request sent without a client, plain http too, and
    loads the CA bundle into it (some 30 ms of CPU): the tests call the control API thousands
    of times (received(), set_faults() in their waits), so one context serves every call."""
    return httpx.create_ssl_context()


@dataclass
class Sandbox:
    """A running sandbox and helpers for its control API."""

    url: str
    token: str
    control_token: str
    company_id: int
    state: SandboxState | None = None
    _stop: Any = field(default=None, repr=False)

    @property
    def root(self) -> str:
        return self.url[: -len("/v1")]

    def control(self, method: str, action: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(method, f"{self.root}/_sandbox/{action}", json=body,
                                 headers={"X-Sandbox-Control": self.control_token}, timeout=10,
                                 verify=_one_tls_context())
        response.raise_for_status()
        return response.json()

    def info(self) -> dict[str, Any]:
        return self.control("GET", "info")

    def received(self) -> dict[str, Any]:
        return self.control("GET", "received")

    def reset_received(self) -> None:
        self.control("POST", "received/reset")

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        return self.control("POST", "faults", faults)

    def clear_faults(self) -> dict[str, Any]:
        return self.control("POST", "faults", {"clear": True})

    def advance_clock(self, seconds: float) -> None:
        self.control("POST", "clock", {"advance_s": seconds})

    def add_token(self, token: str | None = None) -> str:
        return self.control("POST", "tokens", {"token": token} if token else {})["token"]

    def revoke_token(self, token: str) -> None:
        self.control("POST", "tokens/revoke", {"token": token})

    def change_item(self, barcode: str, status: str) -> dict[str, Any]:
        return self.control("POST", "items", {"barcode": barcode, "status": status})

    def list_item(self, barcode: str, listed: bool) -> dict[str, Any]:
        """Take an item off the platform's listings (`False`), or put it back."""
        return self.control("POST", "items", {"barcode": barcode, "listed": listed})

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    """A bound socket that already listens: the subprocess sandbox prints its URL before its
    server runs, and a client that connected in between (a loaded machine) was refused. The
    kernel now queues such connections until the server accepts them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    return sock


def _url(host: str, sock: socket.socket) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{sock.getsockname()[1]}/v1"


def serve(state: SandboxState, sock: socket.socket, log_level: str = "warning") -> uvicorn.Server:
    """A uvicorn server for `state` on an already bound socket (call `.run(sockets=[sock])`)."""
    config = uvicorn.Config(build_app(state), log_level=log_level, date_header=False,
                            lifespan="off", access_log=False)
    return uvicorn.Server(config)


def start_sandbox(*, host: str = "127.0.0.1", port: int = 0, log_level: str = "critical",
                  **state_args: Any) -> Sandbox:
    """Run the sandbox in a daemon thread; returns once it accepts connections."""
    state = make_state(**state_args)
    sock = _bind(host, port)
    server = serve(state, sock, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="sandbox")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("sandbox did not start")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return Sandbox(_url(host, sock), state.default_token, state.control_token,
                   state.company_id, state, stop)


def start_sandbox_process(*, tickets: int = 1000, rpm: int = 60, window_s: float = 60.0,
                          token: str = "sandbox-token",
                          seed_file: str | Path | None = None) -> Sandbox:
    """Run the sandbox as `python -m agent.sandbox.harness` (a separate process, so a
    benchmark's timings do not share a GIL with the platform's answers)."""
    seed = ["--seed", str(seed_file)] if seed_file else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.sandbox.harness", "--tickets", str(tickets), "--rpm",
         str(rpm), "--window-s", str(window_s), "--token", token, *seed],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError("sandbox process did not start")
    info = json.loads(line)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    return Sandbox(info["url"], info["token"], info["controlToken"], info["companyId"],
                   None, stop)


def main(argv: list[str] | None = None) -> int:
    """Subprocess entry: print one JSON line {url, token, controlToken, companyId}, serve."""
    parser = argparse.ArgumentParser(prog="python -m agent.sandbox.harness")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tickets", type=int, default=1000)
    parser.add_argument("--rpm", type=int, default=60)
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--token", default="sandbox-token")
    parser.add_argument("--seed", help="seed file (default: the generated seed)")
    args = parser.parse_args(argv)
    state = make_state(tickets=args.tickets, rpm=args.rpm, window_s=args.window_s,
                       token=args.token, seed_file=args.seed)
    sock = _bind(args.host, args.port)
    server = serve(state, sock, "critical")
    sys.stdout.write(json.dumps({"url": _url(args.host, sock), "token": state.default_token,
                                 "controlToken": state.control_token,
                                 "companyId": state.company_id}) + "\n")
    sys.stdout.flush()
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
