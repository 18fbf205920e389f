"""A fake vhost-user front end: plays QEMU on passtcore-run's --vhost-user socket.

The guest memory is one memfd (handed over by SET_MEM_TABLE, fd over
SCM_RIGHTS) that the client maps too; it lays out the split rings in it the
way a guest driver does and uses them from the driver's side: post receive
buffers, make transmit chains available, kick, read used entries. Descriptor
addresses are guest-physical (``GPA + offset``), ring addresses the front
end's virtual ones (``UVA + offset``): two different bases, so that a mix-up
of the two address spaces fails. Every socket operation has a timeout.

    c = VhostClient(daemon.socket_path)
    c.start()                       # handshake, memory table, RX and TX rings running
    c.post_rx(16)
    c.send_frame(arp_request)       # one readable descriptor: 12-byte header + frame
    frames = c.recv_frames()        # what the daemon put in the RX buffers (header off)
"""
from __future__ import annotations

import mmap
import os
import select
import socket
import struct
import time

# requests (QEMU docs/interop/vhost-user.rst)
GET_FEATURES, SET_FEATURES, SET_OWNER, SET_MEM_TABLE = 1, 2, 3, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL = 12, 13
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, SET_VRING_ENABLE = 15, 16, 18
VERSION, F_REPLY, F_NEED_REPLY = 0x1, 0x4, 0x8
HDR = struct.Struct("<III")
REGION = struct.Struct("<QQQQ")     # guest_phys_addr, memory_size, userspace_addr, mmap_offset
VRING_NOFD = 0x100

F_MRG_RXBUF = 1 << 15
F_INDIRECT_DESC = 1 << 28
F_PROTOCOL_FEATURES = 1 << 30
F_VERSION_1 = 1 << 32
PROTOCOL_F_REPLY_ACK = 1 << 3
FEATURES = F_VERSION_1 | F_MRG_RXBUF | F_INDIRECT_DESC | F_PROTOCOL_FEATURES

DESC_F_NEXT, DESC_F_WRITE, DESC_F_INDIRECT = 1, 2, 4
RX, TX = 0, 1
NET_HDR_LEN = 12
GPA = 0x4000_0000
UVA = 0x7F00_0000_0000
MEM_SIZE = 4 << 20


def msg(request: int, payload: bytes = b"", flags: int = VERSION) -> bytes:
    return HDR.pack(request, flags, len(payload)) + payload


def mem_table(regions: list[tuple[int, int, int, int]], nregions: int | None = None) -> bytes:
    """A SET_MEM_TABLE payload for (gpa, size, uva, mmap_offset) regions."""
    n = len(regions) if nregions is None else nregions
    return struct.pack("<II", n, 0) + b"".join(REGION.pack(*r) for r in regions)


class VhostError(AssertionError):
    """A reply the protocol does not allow."""


class Vring:
    """The driver's side of one split ring in the client's memory."""

    def __init__(self, client: VhostClient, index: int, num: int) -> None:
        self.c, self.index, self.num = client, index, num
        self.desc = client.alloc(16 * num, 4096)          # offsets in the memfd
        self.avail = client.alloc(6 + 2 * num, 64)
        self.used = client.alloc(6 + 8 * num, 64)
        self.kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.avail_idx = 0          # the driver's shadow of avail->idx
        self.last_used = 0          # used entries already read
        self.next_desc = 0          # descriptors are handed out round-robin
        self.bufs: dict[int, tuple[int, int]] = {}   # RX head -> (gpa, length)

    def reset(self) -> None:
        """Zero the ring's memory and the driver's indices (a device reset)."""
        mem = self.c.mem
        for off, n in ((self.desc, 16 * self.num), (self.avail, 6 + 2 * self.num),
                       (self.used, 6 + 8 * self.num)):
            mem[off:off + n] = bytes(n)
        self.avail_idx = self.last_used = self.next_desc = 0
        self.bufs.clear()

    def addrs(self) -> tuple[int, int, int]:
        """(desc, used, avail) as the front end's virtual addresses."""
        return UVA + self.desc, UVA + self.used, UVA + self.avail

    def alloc_desc(self) -> int:
        i = self.next_desc
        self.next_desc = (i + 1) % self.num
        return i

    def set_desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0,
                 table: int | None = None) -> None:
        """Descriptor ``i`` of the ring's table, or of the indirect table at memfd
        offset ``table``."""
        struct.pack_into("<QIHH", self.c.mem, (self.desc if table is None else table) + 16 * i,
                         addr, length, flags, nxt)

    def make_avail(self, *heads: int) -> None:
        for head in heads:
            struct.pack_into("<H", self.c.mem, self.avail + 4 + 2 * (self.avail_idx % self.num),
                             head & 0xFFFF)
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.set_avail_idx(self.avail_idx)

    def set_avail_idx(self, idx: int) -> None:
        struct.pack_into("<H", self.c.mem, self.avail + 2, idx & 0xFFFF)

    def kick(self) -> None:
        os.eventfd_write(self.kick_fd, 1)

    def used_idx(self) -> int:
        return struct.unpack_from("<H", self.c.mem, self.used + 2)[0]

    def wait_used(self, count: int = 1, timeout: float = 5.0) -> list[tuple[int, int]]:
        """At least ``count`` new used entries (id, len), all of those there are; fewer
        after ``timeout`` seconds (no exception: tests assert on what came)."""
        deadline = time.monotonic() + timeout
        while ((self.used_idx() - self.last_used) & 0xFFFF) < count \
                and time.monotonic() < deadline:
            if select.select([self.call_fd], [], [], 0.01)[0]:   # the daemon's interrupt
                try:
                    os.eventfd_read(self.call_fd)
                except BlockingIOError:
                    pass
        out = []
        while self.last_used != self.used_idx():
            out.append(struct.unpack_from("<II", self.c.mem,
                                          self.used + 4 + 8 * (self.last_used % self.num)))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    def close(self) -> None:
        for fd in (self.kick_fd, self.call_fd):
            os.close(fd)


class VhostClient:
    """One vhost-user connection and its guest memory (see the module docstring)."""

    def __init__(self, path: str, size: int = MEM_SIZE, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.memfd = os.memfd_create("vhost-client-guest", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, size)
        self.size = size
        self.mem = mmap.mmap(self.memfd, size)
        self.brk = 0
        self.reply_ack = False
        self.rings: dict[int, Vring] = {}

    # -- framing -------------------------------------------------------------
    def send(self, request: int, payload: bytes = b"", fds: list[int] | tuple[int, ...] = (),
             need_reply: bool = False) -> None:
        data = msg(request, payload, VERSION | (F_NEED_REPLY if need_reply else 0))
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.sendall(data)

    def recv(self) -> tuple[int, int, bytes]:
        head = self._exact(HDR.size)
        request, flags, size = HDR.unpack(head)
        if not flags & F_REPLY:
            raise VhostError(f"not a reply: {request} {flags:#x}")
        return request, flags, self._exact(size)

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except ConnectionResetError:      # closed with our message unread
                chunk = b""
            if not chunk:
                raise EOFError("the daemon closed the connection")
            data += chunk
        return data

    def request(self, request: int, payload: bytes = b"", fds: list[int] | tuple[int, ...] = ()
                ) -> int:
        """Send with NEED_REPLY (REPLY_ACK negotiated): the u64 status, 0 = success."""
        assert self.reply_ack
        self.send(request, payload, fds, need_reply=True)
        req, _flags, body = self.recv()
        if req != request or len(body) != 8:
            raise VhostError(f"bad ack for {request}: {req} {body!r}")
        return struct.unpack("<Q", body)[0]

    def _get(self, request: int, payload: bytes = b"") -> bytes:
        self.send(request, payload)
        req, _flags, body = self.recv()
        if req != request:
            raise VhostError(f"reply to {req}, not {request}")
        return body

    # -- messages --------------------------------------------------------------
    def get_features(self) -> int:
        return struct.unpack("<Q", self._get(GET_FEATURES))[0]

    def set_features(self, features: int) -> int:
        return self._set(SET_FEATURES, struct.pack("<Q", features))

    def get_protocol_features(self) -> int:
        return struct.unpack("<Q", self._get(GET_PROTOCOL_FEATURES))[0]

    def set_protocol_features(self, features: int) -> None:
        self.send(SET_PROTOCOL_FEATURES, struct.pack("<Q", features))
        self.reply_ack = bool(features & PROTOCOL_F_REPLY_ACK)

    def set_owner(self) -> int:
        return self._set(SET_OWNER)

    def set_mem_table(self, regions: list[tuple[int, int, int, int]] | None = None,
                      fds: list[int] | None = None) -> int:
        """Default: the whole memfd as one region (offset 0)."""
        if regions is None:
            regions = [(GPA, self.size, UVA, 0)]
        if fds is None:
            fds = [self.memfd] * len(regions)
        return self._set(SET_MEM_TABLE, mem_table(regions), fds)

    def set_vring_num(self, index: int, num: int) -> int:
        return self._set(SET_VRING_NUM, struct.pack("<II", index, num))

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int) -> int:
        return self._set(SET_VRING_ADDR, struct.pack("<IIQQQQ", index, 0, desc, used, avail, 0))

    def set_vring_base(self, index: int, base: int) -> int:
        return self._set(SET_VRING_BASE, struct.pack("<II", index, base))

    def get_vring_base(self, index: int) -> int:
        idx, base = struct.unpack("<II", self._get(GET_VRING_BASE, struct.pack("<II", index, 0)))
        assert idx == index
        return base

    def set_vring_kick(self, index: int, fd: int | None) -> int:
        return self._vring_fd(SET_VRING_KICK, index, fd)

    def set_vring_call(self, index: int, fd: int | None) -> int:
        return self._vring_fd(SET_VRING_CALL, index, fd)

    def set_vring_enable(self, index: int, on: bool = True) -> int:
        return self._set(SET_VRING_ENABLE, struct.pack("<II", index, int(on)))

    def _vring_fd(self, request: int, index: int, fd: int | None) -> int:
        value = index | (VRING_NOFD if fd is None else 0)
        return self._set(request, struct.pack("<Q", value), [] if fd is None else [fd])

    def _set(self, request: int, payload: bytes = b"", fds: list[int] | tuple[int, ...] = ()
             ) -> int:
        """With REPLY_ACK the daemon's status, else 0 (fire and forget)."""
        if self.reply_ack:
            return self.request(request, payload, fds)
        self.send(request, payload, fds)
        return 0

    # -- set-up ------------------------------------------------------------------
    def handshake(self, features: int = FEATURES, mem: bool = True) -> None:
        """Features, REPLY_ACK, owner and (``mem``) the memory table: what QEMU does first."""
        offered = self.get_features()
        assert offered & features == features, f"{features:#x} not in {offered:#x}"
        assert self.get_protocol_features() & PROTOCOL_F_REPLY_ACK
        self.set_protocol_features(PROTOCOL_F_REPLY_ACK)
        assert self.set_features(features) == 0
        assert self.set_owner() == 0
        if mem:
            assert self.set_mem_table() == 0

    def setup_ring(self, index: int, num: int = 256, base: int = 0) -> Vring:
        """Lay out ring ``index`` in memory and start it (NUM, ADDR, BASE, KICK, CALL, ENABLE)."""
        ring = self.rings.get(index)
        if ring is None or ring.num != num:
            ring = self.rings[index] = Vring(self, index, num)
        self.start_ring(ring, base)
        return ring

    def start_ring(self, ring: Vring, base: int = 0,
                   addrs: tuple[int, int, int] | None = None) -> None:
        """NUM, ADDR (``addrs``: (desc, used, avail) instead of the ring's), BASE, KICK,
        CALL, ENABLE."""
        i = ring.index
        assert self.set_vring_num(i, ring.num) == 0
        assert self.set_vring_addr(i, *(addrs or ring.addrs())) == 0
        assert self.set_vring_base(i, base) == 0
        assert self.set_vring_kick(i, ring.kick_fd) == 0
        assert self.set_vring_call(i, ring.call_fd) == 0
        assert self.set_vring_enable(i, True) == 0

    def start(self, num: int = 256, features: int = FEATURES) -> VhostClient:
        self.handshake(features)
        self.setup_ring(RX, num)
        self.setup_ring(TX, num)
        return self

    # -- memory -------------------------------------------------------------------
    def alloc(self, n: int, align: int = 16) -> int:
        """``n`` bytes of the memfd (zeroed): their offset."""
        off = -(-self.brk // align) * align
        if off + n > self.size:
            raise MemoryError("the client's guest memory is full")
        self.brk = off + n
        self.mem[off:off + n] = bytes(n)
        return off

    def buf(self, data: bytes) -> int:
        """``data`` copied into memory: its guest-physical address."""
        off = self.alloc(len(data))
        self.mem[off:off + len(data)] = data
        return GPA + off

    def read(self, gpa: int, n: int) -> bytes:
        return bytes(self.mem[gpa - GPA:gpa - GPA + n])

    # -- data path ------------------------------------------------------------------
    def post_rx(self, count: int = 16, size: int = 2048) -> list[int]:
        """``count`` writable buffers made available on RX: their heads."""
        ring = self.rings[RX]
        heads = []
        for _ in range(count):
            gpa = GPA + self.alloc(size)
            head = ring.alloc_desc()
            ring.set_desc(head, gpa, size, DESC_F_WRITE)
            ring.bufs[head] = (gpa, size)
            heads.append(head)
        ring.make_avail(*heads)
        return heads

    def send_frame(self, frame: bytes, hdr: bytes = bytes(NET_HDR_LEN), kick: bool = True) -> int:
        """One readable descriptor (header + frame) made available on TX: its head."""
        ring = self.rings[TX]
        head = ring.alloc_desc()
        ring.set_desc(head, self.buf(hdr + frame), len(hdr) + len(frame))
        ring.make_avail(head)
        if kick:
            ring.kick()
        return head

    def recv_frames(self, count: int = 1, timeout: float = 5.0) -> list[bytes]:
        """Frames the daemon delivered on RX (virtio-net header removed; MRG_RXBUF:
        a frame's ``num_buffers`` entries joined); at least ``count`` unless
        ``timeout`` passes first. Entries of length 0 (dropped frames) are skipped."""
        ring = self.rings[RX]
        frames: list[bytes] = []
        pending: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout
        while len(frames) < count and time.monotonic() < deadline:
            pending += ring.wait_used(1, max(0.0, deadline - time.monotonic()))
            while pending:
                head, length = pending[0]
                if length == 0:
                    pending.pop(0)
                    continue
                gpa, size = ring.bufs[head]
                nbuf = struct.unpack("<H", self.read(gpa + 10, 2))[0]
                if len(pending) < nbuf:
                    break                     # the rest of this frame is not used yet
                data = b"".join(self.read(ring.bufs[h][0], n) for h, n in pending[:nbuf])
                del pending[:nbuf]
                frames.append(data[NET_HDR_LEN:])
        return frames

    def close(self) -> None:
        self.sock.close()
        for ring in self.rings.values():
            ring.close()
        self.rings.clear()
        try:
            self.mem.close()
        except BufferError:
            pass
        os.close(self.memfd)

    def __enter__(self) -> VhostClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
