"""The tap device of namespace mode (like pasta): one frame per read()/write().

The device is opened (``IFF_TAP | IFF_NO_PI``) from a thread that has entered
the target namespace (``passtcore.netns.call_in``), so it lives there while the
daemon stays in the host namespace. Reads fill RX slots, one frame each, until
the device is drained or a batch is full, then the batch goes to the
dispatcher in one call; committed TX slots are written one ``write()`` each.
"""
from __future__ import annotations

import fcntl
import logging
import mmap
import os
import struct
from collections.abc import Callable, Sequence
from typing import Any

from passtcore.run.counters import Counters
from passtcore.run.io.frontend import ETH_HLEN, SLOT_SIZE, Frontend, OnBatch, new_index_arrays
from passtcore.run.io.loop import Loop

log = logging.getLogger("passtcore.run")

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
READ_BATCH = 16          # frames per batch (16 x 64 KiB of buffer, resident once used)
BATCHES_PER_WAKEUP = 16  # then yield to other descriptors (256 frames, as before)


def open_tap(ifname: str) -> int:
    """Open (creating if needed) tap ``ifname`` in the calling thread's netns."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
    except OSError:
        os.close(fd)
        raise
    return fd


class TapFrontend(Frontend):
    """A tap device file descriptor as a front end."""

    def __init__(self, fd: int, loop: Loop, counters: Counters, on_batch: OnBatch | None = None,
                 on_exit: Callable[[], Any] | None = None) -> None:
        super().__init__(counters, on_batch)
        self.fd = fd
        os.set_blocking(fd, False)
        self.loop = loop
        self.on_exit = on_exit or (lambda: loop.stop(0))
        self.rbuf = mmap.mmap(-1, READ_BATCH * SLOT_SIZE, mmap.MAP_PRIVATE)
        self.rview = memoryview(self.rbuf)
        self.rslots = [self.rview[i * SLOT_SIZE:(i + 1) * SLOT_SIZE] for i in range(READ_BATCH)]
        self.offsets, self.lengths = new_index_arrays(READ_BATCH)
        self.closed = False

    def start(self) -> None:
        self.loop.add_reader(self.fd, self._readable)

    @property
    def connected(self) -> bool:
        return not self.closed

    def _readable(self) -> None:
        counters, offsets, lengths = self.counters, self.offsets, self.lengths
        for _ in range(BATCHES_PER_WAKEUP):
            count = 0
            drained = False
            while count < READ_BATCH:
                try:
                    n = os.readv(self.fd, (self.rslots[count],))
                except (BlockingIOError, InterruptedError):
                    drained = True
                    break
                except OSError as exc:
                    log.error("tap read failed: %s; exiting", exc)
                    self.close()
                    self.on_exit()
                    return
                if n < ETH_HLEN:
                    counters.drop("runt-frame")
                    continue
                counters.frame_in(n)
                offsets[count] = count * SLOT_SIZE
                lengths[count] = n
                count += 1
            if count:
                self.on_batch(self.rview, offsets, lengths, count)
            if drained or self.closed:
                return

    def _transmit(self, lengths: Sequence[int]) -> int:
        if self.closed:
            self.counters.drop("no-guest", len(lengths))
            return 0
        sent = 0
        for i, n in enumerate(lengths):
            try:
                os.write(self.fd, self._slots[i][:n])
            except (BlockingIOError, InterruptedError):
                self.counters.drop("tap-full")
                continue
            except OSError as exc:
                self.counters.drop("tap-error")
                log.debug("tap write failed: %s", exc)
                continue
            self.counters.frame_out(n)
            sent += 1
        return sent

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
