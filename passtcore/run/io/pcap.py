"""``--pcap FILE``: classic libpcap capture of every guest-facing frame.

Format as passt writes it (passt-reference 9.1): little-endian global header,
magic 0xa1b2c3d4 (microsecond timestamps), version 2.4, snaplen 65535,
linktype 1 (Ethernet); one 16-byte record header per frame, never truncated.
The file is opened O_TRUNC, mode 0600, before privileges are dropped. Write
errors are counted, never fatal: capture must not take the data path down.
"""
from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterable

GLOBAL_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
_REC = struct.Struct("<IIII")


class PcapWriter:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self.errors = 0
        os.write(self.fd, GLOBAL_HEADER)

    def write(self, frame: bytes | bytearray | memoryview) -> None:
        now = time.time()
        sec = int(now)
        n = len(frame)
        try:
            os.writev(self.fd, (_REC.pack(sec, int((now - sec) * 1e6), n, n), frame))
        except OSError:
            self.errors += 1

    def write_many(self, frames: Iterable[bytes | bytearray | memoryview]) -> None:
        for frame in frames:
            self.write(frame)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read_pcap(path: str) -> list[bytes]:
    """The frames of a capture written by ``PcapWriter`` (for tests)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:24] != GLOBAL_HEADER:
        raise ValueError("not a passt-style pcap file")
    frames, off = [], 24
    while off + 16 <= len(data):
        _, _, caplen, _ = _REC.unpack_from(data, off)
        off += 16
        frames.append(data[off:off + caplen])
        off += caplen
    return frames
