"""The tap device of namespace mode (like pasta), with the kernel's offloads.

The device is opened (``IFF_TAP | IFF_NO_PI``) from a thread that has entered
the target namespace (``passtcore.netns.call_in``), so it lives there while
the daemon stays in the host namespace. Reads fill RX slots, one frame each,
until the device is drained or a batch is full, then the batch goes to the
dispatcher in one call; committed TX slots are written one ``write()`` each.

**Offloads** (beyond passt, which uses none): the tap is opened with
``IFF_VNET_HDR`` and ``TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)``,
so the namespace's stack hands us TCP segments of up to 64 KiB whatever its
MTU (checksum partial: the pseudo-header sum only, which nothing here needs),
and takes 64 KiB segments from us: each frame carries a 10-byte virtio-net
header in front (``struct virtio_net_hdr``: flags, gso_type, hdr_len,
gso_size, csum_start, csum_offset, native byte order). A TCP burst committed
with ``gso_size`` (the guest's MSS) gets, per frame longer than one segment,
``GSO_TCPV4/6`` with that size and ``NEEDS_CSUM`` (the TCP checksum field then
holds the pseudo-header sum: the kernel completes it, no pass over the
payload here). One read or write then moves 64 KiB at MTU 1500 instead of
1.5 KB. Where the kernel refuses the offloads (or ``--no-tap-offload``), the
plain path above serves, frame for frame.
"""
from __future__ import annotations

import fcntl
from array import array
import logging
import mmap
import os
import struct
from collections.abc import Callable, Sequence
from typing import Any

import passtcore
from passtcore.run.counters import Counters
from passtcore.run.io.frontend import ETH_HLEN, SLOT_SIZE, Frontend, OnBatch, new_index_arrays
from passtcore.run.io.loop import Loop

log = logging.getLogger("passtcore.run")

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6

from passtcore.run.io import vnet
from passtcore.run.io.vnet import GSO_NONE, GSO_TCPV4, GSO_TCPV6, VNET_HDR, VNET_HDR_LEN  # noqa: F401

READ_BATCH = 16          # frames per batch (16 x 64 KiB of buffer, resident once used)
BATCHES_PER_WAKEUP = 16  # then yield to other descriptors (256 frames)
RSLOT = 65536 + 128      # a read: the virtio-net header and a 64 KiB segment fit


def open_tap(ifname: str, offload: bool = True) -> tuple[int, bool]:
    """Open (creating if needed) tap ``ifname`` in the calling thread's netns.
    Returns ``(fd, offloads on)``: with ``offload``, the virtio-net header and the
    checksum/TSO offloads are asked for, and the plain device is the fallback."""
    if offload:
        fd = _open(ifname, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS)
            return fd, True
        except OSError as exc:
            log.info("tap %s: no checksum/TSO offloads (%s): plain frames", ifname, exc)
            os.close(fd)
    return _open(ifname, IFF_TAP | IFF_NO_PI), False


def _open(ifname: str, flags: int) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), flags))
    except OSError:
        os.close(fd)
        raise
    return fd


class TapFrontend(Frontend):
    """A tap device file descriptor as a front end (``offload``: opened by
    ``open_tap`` with the virtio-net header)."""

    def __init__(self, fd: int, loop: Loop, counters: Counters, on_batch: OnBatch | None = None,
                 on_exit: Callable[[], Any] | None = None, offload: bool = False) -> None:
        self.HEADROOM = VNET_HDR_LEN if offload else 0
        super().__init__(counters, on_batch)
        self.tso = offload
        self.fd = fd
        os.set_blocking(fd, False)
        self.loop = loop
        self.on_exit = on_exit or (lambda: loop.stop(0))
        self.rbuf = mmap.mmap(-1, READ_BATCH * RSLOT, mmap.MAP_PRIVATE)
        self.rview = memoryview(self.rbuf)
        self.offsets, self.lengths = new_index_arrays(READ_BATCH)
        self.closed = False
        fp = passtcore.fastpath
        self._read_frames, self._write_frames, self._io = (fp.read_frames, fp.write_frames,
                                                           fp.IoResult())

    def start(self) -> None:
        self.loop.add_reader(self.fd, self._readable)

    @property
    def connected(self) -> bool:
        return not self.closed

    def _readable(self) -> None:
        counters, offsets, lengths = self.counters, self.offsets, self.lengths
        read_frames, res = self._read_frames, self._io
        values = counters.values
        for _ in range(BATCHES_PER_WAKEUP):
            # one kernel call per batch: a read() per frame, no Python per frame
            count = read_frames(self.fd, self.rview, RSLOT, self.HEADROOM, READ_BATCH,
                                offsets, lengths, res)
            if res.runts:
                counters.drop("runt-frame", res.runts)
            if res.gso:
                counters.inc("tap_gso_in", res.gso)   # segments beyond the MTU
            if count:
                values["frames_in"] += count
                values["bytes_in"] += res.nbytes
                self.on_batch(self.rview, offsets, lengths, count)
            if res.error:
                log.error("tap read failed: %s; exiting", os.strerror(res.error))
                self.close()
                self.on_exit()
                return
            if res.drained or self.closed:
                return

    def _vnet_header(self, i: int, n: int, gso_size: int) -> None:
        """The virtio-net header before slot ``i`` (a frame of ``n`` bytes)."""
        hdr = vnet.gso_header(self._slots[i], n, gso_size)
        if hdr is not vnet.PLAIN:
            self.counters.inc("tap_gso_out")
        base = i * self.stride
        self.txview[base:base + VNET_HDR_LEN] = hdr

    def _transmit(self, lengths: Sequence[int], gso_size: int = 0) -> int:
        if self.closed:
            self.counters.drop("no-guest", len(lengths))
            return 0
        head = self.HEADROOM
        n = len(lengths)
        if head:
            if gso_size:
                for i in range(n):   # GSO headers: frames of 64 KiB, few per burst
                    self._vnet_header(i, lengths[i], gso_size)
            else:
                for i in range(n):
                    base = i * self.stride
                    self.txview[base:base + VNET_HDR_LEN] = vnet.PLAIN
        lens = lengths if isinstance(lengths, array) else array("q", lengths)
        res = self._io
        sent = self._write_frames(self.fd, self.txview, head, self.stride, lens, n, head, res)
        if res.failed:
            self.counters.drop("tap-full", res.failed)   # full or refused: TCP resends
        values = self.counters.values
        values["frames_out"] += sent
        values["bytes_out"] += res.nbytes
        return sent

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
