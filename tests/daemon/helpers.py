"""Test helpers for the daemon: a QEMU-style stream client and frame builders."""
from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

GUEST_MAC = bytes.fromhex("525400123456")


def arp_request(target: bytes, sender: bytes = bytes([192, 0, 2, 50]),
                mac: bytes = GUEST_MAC) -> bytes:
    """An Ethernet who-has ``target`` tell ``sender`` (42 bytes)."""
    return (b"\xff" * 6 + mac + b"\x08\x06"
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + sender + b"\0" * 6 + target)


def target_of_reply(frame: bytes) -> bytes:
    """The sender IP of an ARP reply = the address that was asked for."""
    return frame[28:32]


def frame_target(i: int) -> bytes:
    """A distinct IPv4 address per index (198.51.100.0/24 and onwards, never 192.0.2.2)."""
    return bytes([10, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF])


def pack(frame: bytes) -> bytes:
    return len(frame).to_bytes(4, "big") + frame


class StreamClient:
    """Plays QEMU: connects to the daemon's socket, sends/receives length-framed frames."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.buf = bytearray()

    @classmethod
    def from_socket(cls, sock: socket.socket) -> StreamClient:
        self = cls.__new__(cls)
        self.sock = sock
        self.buf = bytearray()
        return self

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, frame: bytes) -> None:
        self.sock.sendall(pack(frame))

    def recv_frames(self, count: int, timeout: float = 10.0) -> list[bytes]:
        """Exactly ``count`` frames (fails on timeout, on a torn or bad length)."""
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            while len(self.buf) >= 4:
                n = int.from_bytes(self.buf[:4], "big")
                assert 14 <= n <= 65535, f"bad length {n} in the stream"
                if len(self.buf) < 4 + n:
                    break
                out.append(bytes(self.buf[4:4 + n]))
                del self.buf[:4 + n]
                if len(out) == count:
                    return out
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"got {len(out)} of {count} frames")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                raise TimeoutError(f"got {len(out)} of {count} frames") from None
            if not data:
                raise EOFError(f"daemon closed the stream after {len(out)} of {count} frames")
            self.buf += data
        return out

    def quiet_for(self, seconds: float) -> bytes:
        """Whatever arrives within ``seconds`` (expected: nothing)."""
        self.sock.settimeout(seconds)
        try:
            return self.sock.recv(65536)
        except socket.timeout:
            return b""

    def close(self) -> None:
        self.sock.close()


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` has exited (gone or a zombie), within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.02)
    return False
