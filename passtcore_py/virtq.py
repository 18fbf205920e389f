"""Split virtqueues over guest memory (virtio 1.x, 2.7), pure-Python twin of
``passtcore._virtq``.

vhost-user hands the back end the guest's RAM as up to 8 regions (memfd
mappings) and, per queue, the addresses of its descriptor table, available
ring and used ring. This module is the back end's side of one queue:

* ``GuestMemory`` maps addresses to bytes. Descriptor addresses are guest
  physical (``gpa``); ring addresses are the front end's virtual addresses
  (``uva``). Every translation is bounds-checked against one region: an
  address or length that does not fit entirely in a region is an error, never
  a read or write outside it.
* ``Virtqueue.pop_tx`` takes the chains the guest made available (frames to
  send), copies each (after the ``hdr_len``-byte virtio-net header) into a
  caller's buffer, and returns them used (length 0). ``Virtqueue.push_rx``
  copies frames into the buffers the guest made available to receive, with a
  virtio-net header in front (``num_buffers`` = 1, or spread over several
  buffers when MRG_RXBUF is on).
* A chain is walked at most ``num`` descriptors deep (a cycle ends there);
  indirect tables (``VIRTQ_DESC_F_INDIRECT``) are followed once, never nested.
  A malformed chain (bad address or length, cycle, a readable buffer where a
  writable one is needed or the reverse, a frame too short or too long) is
  returned used with length 0 and counted in ``errors`` by reason; the
  queue goes on.
* Indices are free-running 16-bit counters (``last_avail``, ``used_idx``),
  as the spec has them; a guest whose avail index runs more than ``num``
  ahead is malformed ("avail-overrun") and the queue stops taking from it.
* ``need_call()``: whether the guest wants an interrupt for what was just
  used (``VIRTQ_AVAIL_F_NO_INTERRUPT``; with EVENT_IDX, the ``used_event``
  rule). With EVENT_IDX the guest kicks only when it passes ``avail_event``,
  which a call publishes: whoever drains a queue checks ``pending()`` once more
  after the call returns (the Cython kernel orders that read after the store).

The Cython kernel publishes used entries before the used index with a
release fence and reads the avail index with an acquire fence (the guest runs
on another CPU); this twin, under the GIL and on x86's ordered stores, needs
none.
"""
from __future__ import annotations

import struct
from typing import Any

__all__ = ["GuestMemory", "Virtqueue", "VirtqError", "DESC_F_NEXT", "DESC_F_WRITE",
           "DESC_F_INDIRECT", "AVAIL_F_NO_INTERRUPT", "NET_HDR_LEN", "MAX_REGIONS",
           "MAX_QUEUE_SIZE"]

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1
NET_HDR_LEN = 12            # virtio_net_hdr_mrg_rxbuf (VERSION_1)
MAX_REGIONS = 8
MAX_QUEUE_SIZE = 32768
FRAME_MAX = 65536 + 14      # the largest frame taken from the guest (TSO: 64 KiB + Ethernet)
ETH_ZLEN = 60


class VirtqError(ValueError):
    """A queue that cannot be set up as asked (sizes, addresses)."""


class GuestMemory:
    """The guest's memory regions: ``add(gpa, size, uva, buf)``; ``buf`` is any
    writable buffer of at least ``size`` bytes (an mmap of the region's memfd)."""

    def __init__(self) -> None:
        self.regions: list[tuple[int, int, int, memoryview]] = []

    def add(self, gpa: int, size: int, uva: int, buf: Any) -> None:
        if len(self.regions) >= MAX_REGIONS:
            raise VirtqError(f"at most {MAX_REGIONS} memory regions")
        view = memoryview(buf).cast("B")
        if view.readonly:
            raise VirtqError("a memory region must be writable")
        if size <= 0 or size > len(view) or gpa < 0 or uva < 0:
            raise VirtqError("a memory region's size does not fit its mapping")
        if gpa + size > 1 << 64 or uva + size > 1 << 64:
            raise VirtqError("a memory region wraps the address space")
        self.regions.append((gpa, size, uva, view[:size]))

    def clear(self) -> None:
        self.regions = []

    def __len__(self) -> int:
        return len(self.regions)

    def gpa(self, addr: int, length: int) -> memoryview | None:
        """The bytes at guest-physical ``addr``, ``length`` long, or None."""
        for gpa, size, _uva, view in self.regions:
            off = addr - gpa
            if 0 <= off and length >= 0 and off + length <= size:
                return view[off:off + length]
        return None

    def uva(self, addr: int, length: int) -> memoryview | None:
        """The bytes at front-end virtual ``addr`` (ring addresses), or None."""
        for _gpa, size, uva, view in self.regions:
            off = addr - uva
            if 0 <= off and length >= 0 and off + length <= size:
                return view[off:off + length]
        return None


class Virtqueue:
    """One split virtqueue of ``num`` entries (see the module docstring)."""

    def __init__(self, mem: GuestMemory, num: int, desc: int, avail: int, used: int,
                 event_idx: bool = False, last_avail: int = 0) -> None:
        if num <= 0 or num > MAX_QUEUE_SIZE or num & (num - 1):
            raise VirtqError(f"queue size {num} is not a power of two up to {MAX_QUEUE_SIZE}")
        self.mem = mem
        self.num = num
        self.event_idx = bool(event_idx)
        d = mem.uva(desc, 16 * num)
        a = mem.uva(avail, 6 + 2 * num)
        u = mem.uva(used, 6 + 8 * num)
        if d is None or a is None or u is None:
            raise VirtqError("a ring of the queue is outside guest memory")
        self.desc, self.avail, self.used = d, a, u
        self.last_avail = last_avail & 0xFFFF
        self.used_idx = struct.unpack_from("<H", u, 2)[0]
        self.errors: dict[str, int] = {}
        self.broken = False
        self._signalled_used = self.used_idx
        self._used_since_call = False

    # -- shared ----------------------------------------------------------------
    def _err(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def avail_idx(self) -> int:
        return struct.unpack_from("<H", self.avail, 2)[0]

    def pending(self) -> int:
        """Chains the guest made available that we have not taken (0 if broken)."""
        if self.broken:
            return 0
        n = (self.avail_idx() - self.last_avail) & 0xFFFF
        if n > self.num:
            self.broken = True
            self._err("avail-overrun")
            return 0
        return n

    def _next_head(self) -> int:
        slot = self.last_avail % self.num
        head = struct.unpack_from("<H", self.avail, 4 + 2 * slot)[0]
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return head

    def _chain(self, head: int, writable: bool) -> list[memoryview] | str:
        """The buffers of the chain at ``head``: all readable or all writable, or the
        reason it is malformed."""
        if head >= self.num:
            return "bad-head"
        table, size, i = self.desc, self.num, head
        indirect = False
        out: list[memoryview] = []
        for _ in range(self.num + 1):   # bounded: a cycle ends here
            addr, length, flags, nxt = struct.unpack_from("<QIHH", table, 16 * i)
            if flags & DESC_F_INDIRECT:
                if indirect or flags & DESC_F_NEXT:
                    return "bad-indirect"
                if length == 0 or length % 16 or length // 16 > MAX_QUEUE_SIZE:
                    return "bad-indirect"
                t = self.mem.gpa(addr, length)
                if t is None:
                    return "bad-address"
                table, size, i, indirect = t, length // 16, 0, True
                continue
            if bool(flags & DESC_F_WRITE) != writable:
                return "wrong-direction"
            buf = self.mem.gpa(addr, length)
            if buf is None:
                return "bad-address"
            if length:
                out.append(buf)
            if not flags & DESC_F_NEXT:
                return out
            if nxt >= size:
                return "bad-next"
            i = nxt
        return "desc-loop"

    def _put_used(self, head: int, length: int) -> None:
        slot = self.used_idx % self.num
        struct.pack_into("<II", self.used, 4 + 8 * slot, head, length)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self._used_since_call = True

    def _publish(self) -> None:
        struct.pack_into("<H", self.used, 2, self.used_idx)
        if self.event_idx:   # avail_event: tell the guest when to kick us next
            struct.pack_into("<H", self.used, 4 + 8 * self.num, self.last_avail)

    def need_call(self) -> bool:
        """Whether the guest asked to be interrupted for the entries used since the
        last call (and forget them)."""
        if not self._used_since_call:
            return False
        self._used_since_call = False
        if self.event_idx:
            event = struct.unpack_from("<H", self.avail, 4 + 2 * self.num)[0]
            new, old = self.used_idx, self._signalled_used
            self._signalled_used = new
            return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        return not struct.unpack_from("<H", self.avail, 0)[0] & AVAIL_F_NO_INTERRUPT

    # -- guest -> host ------------------------------------------------------------
    def pop_tx(self, out: Any, offsets: Any, lengths: Any, max_frames: int,
               hdr_len: int = NET_HDR_LEN) -> int:
        """Copy up to ``max_frames`` available frames (minus their ``hdr_len``-byte
        header) into ``out`` one after the other; their offsets and lengths go to
        ``offsets``/``lengths`` (int64). Every chain taken is returned used. The
        number of frames copied (malformed chains are counted, not copied)."""
        dst = memoryview(out).cast("B")
        cap = min(max_frames, len(offsets), len(lengths))
        pos = 0
        n = 0
        for _ in range(self.pending()):
            if n >= cap:
                break
            head = self._next_head()
            chain = self._chain(head, writable=False)
            if isinstance(chain, str):
                self._err(chain)
                if head < self.num:   # a head out of range has no used entry to give back
                    self._put_used(head, 0)
                continue
            total = sum(len(b) for b in chain)
            flen = total - hdr_len
            if flen < 14 or flen > FRAME_MAX:
                self._err("bad-frame-length")
                self._put_used(head, 0)
                continue
            if pos + flen > len(dst):
                self.last_avail = (self.last_avail - 1) & 0xFFFF   # no room: next call
                break
            skip = hdr_len
            start = pos
            for b in chain:
                if skip >= len(b):
                    skip -= len(b)
                    continue
                k = len(b) - skip
                dst[pos:pos + k] = b[skip:]
                pos += k
                skip = 0
            offsets[n], lengths[n] = start, flen
            n += 1
            self._put_used(head, 0)
        self._publish()
        return n

    # -- host -> guest ----------------------------------------------------------------
    def push_rx(self, frames: Any, offsets: Any, lengths: Any, count: int,
                mergeable: bool = True, hdr: bytes = bytes(NET_HDR_LEN),
                hdrs: Any = None) -> int:
        """Copy ``count`` frames (``frames[offsets[i]:][:lengths[i]]``) into the
        guest's receive buffers, each after a copy of ``hdr`` (a virtio-net header
        whose ``num_buffers`` is filled in here) or, with ``hdrs``, of its own
        header (``hdrs[i * len(hdr):][:len(hdr)]``); frames shorter than 60 bytes
        are padded. Frames that do not fit in what the guest made available wait:
        the number delivered, in order."""
        src = memoryview(frames).cast("B")
        hdr_len = len(hdr)
        if hdrs is not None and len(hdrs) < count * hdr_len:
            raise ValueError("hdrs holds fewer headers than frames")
        done = 0
        for i in range(count):
            off, flen = offsets[i], lengths[i]
            if off < 0 or flen < 0 or off + flen > len(src):
                self._err("bad-source-frame")
                done += 1
                continue
            h = hdr if hdrs is None else bytes(hdrs[i * hdr_len:(i + 1) * hdr_len])
            if not self._rx_one(src[off:off + flen], h, hdr_len, mergeable):
                break
            done += 1
        self._publish()
        return done

    def _rx_one(self, frame: memoryview, hdr: bytes, hdr_len: int, mergeable: bool) -> bool:
        """One frame into one buffer (or several, ``mergeable``): True when it is
        done with (delivered, or dropped and counted), False when the guest has not
        made enough room yet (nothing taken)."""
        pad = max(0, ETH_ZLEN - len(frame))
        need = hdr_len + len(frame) + pad
        save = self.last_avail
        taken: list[tuple[int, list[memoryview]]] = []
        room = 0
        for _ in range(self.num + 1):     # bounded: at most num buffers per frame
            if room >= need:
                break
            if not self.pending():
                self.last_avail = save   # not enough yet: the buffers stay the guest's
                return False
            head = self._next_head()
            chain = self._chain(head, writable=True)
            reason = chain if isinstance(chain, str) else ""
            if not reason and not taken and sum(len(b) for b in chain) < hdr_len:
                reason = "rx-buffer-too-small"
            if reason:
                self._err(reason)            # the frame is dropped with what it took
                if head < self.num:
                    self._put_used(head, 0)
                for h, _c in taken:
                    self._put_used(h, 0)
                return True
            taken.append((head, chain))
            room += sum(len(b) for b in chain)
            if not mergeable and room < need:
                self._err("rx-buffer-too-small")   # one buffer per frame without MRG_RXBUF
                for h, _c in taken:
                    self._put_used(h, 0)
                return True
        if room < need:
            self.last_avail = save
            return False
        data = bytearray(hdr)
        if hdr_len >= 12:
            struct.pack_into("<H", data, 10, len(taken))
        data += frame
        data += bytes(pad)
        pos = 0
        for head, chain in taken:
            used = 0
            for b in chain:
                k = min(len(b), len(data) - pos)
                if k <= 0:
                    break
                b[:k] = data[pos:pos + k]
                pos += k
                used += k
            self._put_used(head, used)
        return True
