"""A user-space "netem" guest NIC: tap in the guest namespace <-> the daemon's
stream socket (the QEMU framing: 32-bit big-endian length + frame).

The test kernel has no sch_netem, so the impairments of
``tc qdisc add dev eth0 root netem loss L% reorder R% duplicate D% delay Dms``
are applied here to what the guest sends (the tap's egress), with netem's
semantics: every frame is delayed by DELAY except the R% sent at once (which
reorders them), L% are lost and D% duplicated. ``--both`` also impairs the
daemon -> guest direction.

Usage: python impair.py SOCKET IFNAME LOSS REORDER DUP DELAY_MS [--both]
"""
from __future__ import annotations

import fcntl
import heapq
import os
import random
import select
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


class Impair:
    def __init__(self, loss: float, reorder: float, dup: float, delay: float, seed: int) -> None:
        self.loss, self.reorder, self.dup, self.delay = loss, reorder, dup, delay
        self.rnd = random.Random(seed)
        self.heap: list[tuple[float, int, bytes]] = []
        self.n = 0
        self.stats = {"lost": 0, "dup": 0, "reordered": 0}

    def push(self, frame: bytes, now: float) -> None:
        r = self.rnd.random
        if r() < self.loss:
            self.stats["lost"] += 1
            return
        copies = 2 if r() < self.dup else 1
        if copies == 2:
            self.stats["dup"] += 1
        for _ in range(copies):
            due = now + self.delay
            if r() < self.reorder:
                due = now
                self.stats["reordered"] += 1
            self.n += 1
            heapq.heappush(self.heap, (due, self.n, frame))

    def due(self, now: float) -> list[bytes]:
        out = []
        while self.heap and self.heap[0][0] <= now:
            out.append(heapq.heappop(self.heap)[2])
        return out

    def timeout(self, now: float) -> float | None:
        return max(0.0, self.heap[0][0] - now) if self.heap else None


def main(argv: list[str]) -> None:
    path, ifname = argv[0], argv[1]
    loss, reorder, dup = (float(x) / 100 for x in argv[2:5])
    delay = float(argv[5]) / 1000
    both = "--both" in argv
    tap = open_tap(ifname)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    print("READY", flush=True)
    up = Impair(loss, reorder, dup, delay, 1)
    down = Impair(loss, reorder, dup, delay, 2) if both else Impair(0, 0, 0, 0, 2)
    rbuf = bytearray()
    poll = select.poll()
    poll.register(tap, select.POLLIN)
    poll.register(sock, select.POLLIN)
    while True:
        now = time.monotonic()
        waits = [t for t in (up.timeout(now), down.timeout(now)) if t is not None]
        events = poll.poll(min(waits) * 1000 if waits else 1000)
        now = time.monotonic()
        for fd, _ in events:
            if fd == tap:
                for _ in range(64):
                    try:
                        frame = os.read(tap, 65536)
                    except BlockingIOError:
                        break
                    up.push(frame, now)
            else:
                data = sock.recv(1 << 20)
                if not data:
                    return
                rbuf += data
                while len(rbuf) >= 4:
                    n = int.from_bytes(rbuf[:4], "big")
                    if len(rbuf) < 4 + n:
                        break
                    down.push(bytes(rbuf[4:4 + n]), now)
                    del rbuf[:4 + n]
        for frame in up.due(now):
            sock.sendall(len(frame).to_bytes(4, "big") + frame)
        for frame in down.due(now):
            try:
                os.write(tap, frame)
            except BlockingIOError:
                pass


if __name__ == "__main__":
    main(sys.argv[1:])
