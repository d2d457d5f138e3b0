"""Experiment (bench only, not used by the agent): a lane writing its claim and reading the ack
itself on a blocking socket of its own, without any asyncio loop — to measure what the bus
loop's two hand-overs cost a claimed scan. No auth, no TLS, no reconnect: loopback bench only.
`bench/claim_breakdown.py --ab socket` swaps it in for every other scan."""

from __future__ import annotations

import socket

from agent.venue.claim_channel import ClaimAnswer, answer_from_reply


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

