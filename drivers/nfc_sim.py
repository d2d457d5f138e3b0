"""A simulated NFC Forum Type 2 tag on the far end of nfcpy's UDP driver (`nfc:udp:HOST:PORT`).

nfcpy's UDP driver sends each frame as one datagram `"<brty> <hex>"` (e.g. `"106A 26"`) from
an ephemeral port to HOST:PORT and reads the answer in the same form; `RFOFF` means the reader
switched its field off. This responder answers what a tag answers: SENS_REQ/ALL_REQ with
SENS_RES, anticollision (SDD_REQ) and SELECT per cascade level, and READ (4 pages). While the
tag is "removed" it stays silent, exactly as a real tag outside the field.

It lives outside the tests because the hardware benchmark drives it too (bench/hw_bench.py).
For timing, `present()` answers the reader's poll that is still waiting: nfcpy's UDP driver
waits a whole second for each unanswered poll, where a real reader polls every few
milliseconds, so without this a measurement would mostly show where in that second the tag
happened to arrive.
"""

from __future__ import annotations

import functools
import operator
import socket
import threading
import time


def _bcc(data: bytes) -> int:
    return functools.reduce(operator.xor, data, 0)


def tt2_memory(uid: bytes, ndef_message: bytes = b"") -> bytes:
    """Pages 0..15 of an NFC Forum Type 2 tag with a 7-byte UID and an optional NDEF message."""
    assert len(uid) == 7
    head = bytes([uid[0], uid[1], uid[2], 0x88 ^ _bcc(uid[0:3])]) + uid[3:7]
    head += bytes([_bcc(uid[3:7]), 0x48, 0x00, 0x00])  # BCC1, internal, lock bytes
    head += bytes([0xE1, 0x10, 0x06, 0x00])  # capability container: 48 data bytes, read/write
    tlv = bytes([0x03, len(ndef_message)]) + ndef_message + b"\xfe" if ndef_message else b"\xfe"
    data = tlv.ljust(48, b"\x00")
    assert len(data) == 48, "NDEF message too long for this small tag"
    return head + data


# nfcpy's UDP driver gives up on a SENS_REQ after 1.0 s; answer only polls clearly younger.
_POLL_STILL_WAITING_S = 0.9


class Type2TagSimulator:
    """Listens on 127.0.0.1:<port>; `present` says whether the tag is in the reader's field.

    Setting `present = True` brings the tag in at the reader's next poll; `present_now()`
    also answers the poll the reader is waiting on (see the module docstring). `polls` counts
    SENS_REQ/ALL_REQ received, present or not: it rises once the reader has noticed a removal
    and polls again. `set_uid` swaps in another tag while the tag is out of the field.
    """

    def __init__(self, uid: bytes, ndef_message: bytes = b"") -> None:
        self.uid = uid
        self.memory = tt2_memory(uid, ndef_message)
        self.present = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.selects = 0
        self.polls = 0
        self._lock = threading.Lock()
        self._waiting: tuple[bytes, tuple[str, int], float] | None = None  # unanswered poll
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="tt2 sim", daemon=True)
        self._thread.start()

    def set_uid(self, uid: bytes, ndef_message: bytes = b"") -> None:
        """Another tag (only while none is in the field: a reader never sees a UID change)."""
        assert not self.present, "remove the tag first"
        with self._lock:
            self.uid = uid
            self.memory = tt2_memory(uid, ndef_message)

    def waiting_poll_age(self) -> float | None:
        """Seconds since the reader's unanswered poll arrived; None when it is not waiting."""
        with self._lock:
            return None if self._waiting is None else time.monotonic() - self._waiting[2]

    def present_now(self) -> bool:
        """Bring the tag in and answer the reader's waiting poll at once; True if there was one."""
        with self._lock:
            self.present = True
            waiting, self._waiting = self._waiting, None
            if waiting is None or time.monotonic() - waiting[2] > _POLL_STILL_WAITING_S:
                return False
            brty, addr, _ = waiting
            answer = self._answer(b"\x26")
            assert answer is not None
            self.sock.sendto(brty + b" " + answer.hex().encode(), addr)
            return True

    @property
    def url(self) -> str:
        return f"nfc:udp:127.0.0.1:{self.port}?targets=106A"

    def close(self) -> None:
        """Stop answering. Closing the socket alone does not wake a thread blocked in its
        recvfrom (Linux), so `close` used to wait out its whole join timeout (2 s a tag): the
        serving thread is woken by a datagram of its own and ends before the socket closes."""
        self._closing = True
        try:
            self.sock.sendto(b"", ("127.0.0.1", self.port))
        except OSError:
            pass  # closed already: the thread has ended
        self._thread.join(2)
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                datagram, addr = self.sock.recvfrom(1024)
            except OSError:
                return
            if self._closing:
                return
            with self._lock:
                self._handle(datagram, addr)

    def _handle(self, datagram: bytes, addr: tuple[str, int]) -> None:
        if datagram.startswith(b"RFOFF"):
            self._waiting = None
            return
        try:
            brty, hexdata = datagram.split()
            cmd = bytes.fromhex(hexdata.decode())
        except ValueError:
            return
        if cmd in (b"\x26", b"\x52"):
            self.polls += 1
            self._waiting = None if self.present else (brty, addr, time.monotonic())
        if not self.present:
            return
        answer = self._answer(cmd)
        if answer is not None:
            self.sock.sendto(brty + b" " + answer.hex().encode(), addr)

    def _answer(self, cmd: bytes) -> bytes | None:
        uid = self.uid
        cl1 = b"\x88" + uid[0:3]
        cl2 = uid[3:7]
        if cmd in (b"\x26", b"\x52"):
            return b"\x44\x00"  # SENS_RES: double-size UID, not Type 1
        if cmd == b"\x93\x20":
            return cl1 + bytes([_bcc(cl1)])
        if cmd == b"\x95\x20":
            return cl2 + bytes([_bcc(cl2)])
        if cmd[:2] == b"\x93\x70" and cmd[2:6] == cl1:
            return b"\x04"  # SAK: UID not complete
        if cmd[:2] == b"\x95\x70" and cmd[2:6] == cl2:
            self.selects += 1
            return b"\x00"  # SAK: Type 2 tag
        if len(cmd) == 2 and cmd[0] == 0x30:
            page = cmd[1]
            if page * 4 >= len(self.memory):
                return b"\x00"  # NAK
            return (self.memory + self.memory)[page * 4 : page * 4 + 16]
        return None  # unsupported command: a Type 2 tag goes mute
