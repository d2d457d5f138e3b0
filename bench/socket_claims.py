"""Experiment (bench only, not used by the agent): a lane writing its claim and reading the ack
itself on a blocking socket of its own, without any asyncio loop — to measure what the bus
loop's two hand-overs cost a claimed scan. No auth, no TLS, no reconnect: loopback bench only.
`bench/claim_breakdown.py --ab socket` swaps it in for every other scan; run on its own it
prints the publish+ack floor on such a socket beside js.publish() from a loop."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.venue.claim_channel import ClaimAnswer, answer_from_reply  # noqa: E402


class SocketClaims:
    """One plain NATS connection driven by the calling (lane) thread."""

    def __init__(self, url: str):
        host, port = url.replace("nats://", "").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self._line()  # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,'
                          b'"no_responders":true,"protocol":1}\r\nSUB _SC.r.* 1\r\nPING\r\n')
        while self._line() != b"PONG":
            pass
        self.n = 0

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self.buf) < size + 2:
            self.buf += self.sock.recv(65536)
        data, self.buf = self.buf[:size], self.buf[size + 2:]
        return data

    def request(self, subject: str, body: bytes, headers: dict[str, str],
                timeout_s: float) -> ClaimAnswer:
        self.n += 1
        token = str(self.n)
        head = ("NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                + "\r\n").encode()
        self.sock.settimeout(timeout_s)
        self.sock.sendall(f"HPUB {subject} _SC.r.{token} {len(head)} {len(head) + len(body)}"
                          f"\r\n".encode() + head + body + b"\r\n")
        try:
            while True:
                line = self._line()
                if line == b"PING":
                    self.sock.sendall(b"PONG\r\n")
                    continue
                parts = line.split()
                if not parts or parts[0] not in (b"MSG", b"HMSG"):
                    continue
                if parts[0] == b"MSG":
                    data, status = self._exactly(int(parts[-1])), None
                else:
                    raw = self._exactly(int(parts[-1]))
                    hdr_len = int(parts[-2])
                    first = raw[:hdr_len].split(b"\r\n", 1)[0].split()
                    status = first[1].decode() if len(first) > 1 else None
                    data = raw[hdr_len:]
                if parts[1].decode().rsplit(".", 1)[-1] == token:
                    return answer_from_reply(data, status)
        except TimeoutError:
            return ClaimAnswer("unavailable", error="timeout")

    def close(self) -> None:
        self.sock.close()



def main() -> int:
    """Print the publish+ack floor on a blocking socket beside `js.publish()` from a loop
    (bench/venue_bench.py's floor), interleaved, paced 10 ms apart, on one real nats-server."""
    import tempfile
    import time
    from pathlib import Path

    from venue_bench import RawFloor, pct

    from agent.venue.node import start_venue

    with tempfile.TemporaryDirectory(prefix="socket-floor-") as tmp:
        node = start_venue(Path(tmp), 1)[0]
        try:
            floor = RawFloor(node.url)  # creates the stream FLOOR on floor.>
            plain = SocketClaims(node.url)
            on_socket: list[float] = []
            on_loop: list[float] = []
            for i in range(400):
                time.sleep(0.01)
                started = time.perf_counter()
                answer = plain.request(f"floor.{i % 50}", b"x" * 300, {"Nats-Msg-Id": f"s{i}"}, 2)
                on_socket.append(time.perf_counter() - started)
                assert answer.outcome == "granted", answer
                time.sleep(0.01)
                on_loop.append(floor.sample())
            plain.close()
            floor.close()
        finally:
            node.kill()
    for name, values in (("blocking socket", on_socket), ("js.publish on a loop", on_loop)):
        print(f"{name:22s} publish+ack p50 {pct(values, 0.5) * 1000:.3f} ms  "
              f"p99 {pct(values, 0.99) * 1000:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
