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
* Without a copy: ``rx_reserve(n, frame_cap, head_room, mergeable)`` takes
  the receive buffers for up to ``n`` frames of ``frame_cap`` bytes (one
  chain each, or as many as it takes with MRG_RXBUF), each frame's first
  segment at least ``head_room`` long; ``rx_buffers(k)`` are frame ``k``'s
  writable segments, into which the caller reads host data and writes the
  headers; ``rx_finish(used, lengths)`` returns the first ``used`` frames
  used (``num_buffers`` filled in, short frames padded) and gives the rest of
  the reservation back to the ring; ``rx_capacity(k)`` is what frame ``k``
  can hold: ``frame_cap``, or less for a frame the guest's buffers did not
  fill (the last one when they ran out, or any without MRG_RXBUF whose one
  chain is smaller). A malformed buffer, or one that cannot hold
  ``head_room``, ends a reservation where it is (the copy path then takes
  and counts it).
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
* Dirty-page logging (VHOST_F_LOG_ALL, for the front end's live migration):
  ``GuestMemory.set_log(buf)`` hands over the front end's log (an mmap of its
  log fd; None stops), a bit per 4 KiB page of guest-physical address (bit
  ``page % 8`` of byte ``page // 8``); pages past its end are not marked.
  While it is set, every write a queue makes into guest memory is marked after
  it is made: used entries, the used index, ``avail_event``, and in received
  buffers what the used entry says was written (header, frame, padding; with a
  reservation, the caller's bytes too). Rings are marked at the guest-physical
  address of the region that holds them. ``log_write(gpa, length)`` marks a
  range by hand.

The Cython kernel publishes used entries before the used index with a
release fence and reads the avail index with an acquire fence (the guest runs
on another CPU); this twin, under the GIL and on x86's ordered stores, needs
none. The kernel sets log bits with an atomic OR; this twin's read-modify-write
can at worst mark again a bit the front end just harvested (a page sent twice),
never lose one, since no one but the back end sets bits.
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
RV_MAX_SEG = 1024           # segments of one reservation (the kernel's UIO_MAXIOV)
RV_MAX_FRAMES = 64
LOG_PAGE_SHIFT = 12         # VHOST_LOG_PAGE: a bit of the dirty log per 4 KiB page


class VirtqError(ValueError):
    """A queue that cannot be set up as asked (sizes, addresses)."""


class GuestMemory:
    """The guest's memory regions: ``add(gpa, size, uva, buf)``; ``buf`` is any
    writable buffer of at least ``size`` bytes (an mmap of the region's memfd)."""

    def __init__(self) -> None:
        self.regions: list[tuple[int, int, int, memoryview]] = []
        self._log: memoryview | None = None

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
        self._log = None

    # -- dirty-page log (VHOST_F_LOG_ALL) ------------------------------------------
    def set_log(self, buf: Any) -> None:
        """Mark every write into guest memory in ``buf`` (a writable buffer of any
        size, the front end's log), or stop logging with None."""
        if buf is None:
            self._log = None
            return
        view = memoryview(buf).cast("B")
        if view.readonly:
            raise VirtqError("the dirty log must be writable")
        self._log = view

    @property
    def logging(self) -> bool:
        return self._log is not None

    def log_write(self, gpa: int, length: int) -> None:
        """Mark the pages of guest-physical [gpa, gpa + length) (cut at 2**64;
        pages past the end of the log are not marked)."""
        if gpa < 0 or length < 0:
            raise ValueError("gpa and length must be >= 0")
        if not length or gpa >= 1 << 64:
            return
        self._mark(gpa, min(gpa + length, 1 << 64) - gpa)

    def _mark(self, gpa: int, length: int) -> None:
        """``log_write`` for a range known to be in guest memory (length > 0)."""
        log = self._log
        if log is None:
            return
        first, last = gpa >> LOG_PAGE_SHIFT, (gpa + length - 1) >> LOG_PAGE_SHIFT
        npages = 8 * len(log)
        if first >= npages:
            return
        last = min(last, npages - 1)
        b, lb = first >> 3, last >> 3
        m = (0xFF << (first & 7)) & 0xFF
        if b == lb:
            log[b] |= m & (0xFF >> (7 - (last & 7)))
            return
        log[b] |= m
        log[b + 1:lb] = b"\xff" * (lb - b - 1)    # whole bytes: every bit set either way
        log[lb] |= 0xFF >> (7 - (last & 7))

    def _uva_gpa(self, addr: int, length: int) -> int:
        """The guest-physical address of front-end virtual ``addr`` (a ring's,
        already found in a region by ``uva``: the same region)."""
        for gpa, size, uva, _view in self.regions:
            off = addr - uva
            if 0 <= off and off + length <= size:
                return gpa + off
        raise VirtqError("address outside guest memory")

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
        self._used_gpa = mem._uva_gpa(used, 6 + 8 * num)   # where used-ring writes are logged
        self._seg_gpa: list[int] = []        # the gpas of the last chain walked
        self.last_avail = last_avail & 0xFFFF
        self.used_idx = struct.unpack_from("<H", u, 2)[0]
        self.errors: dict[str, int] = {}
        self.broken = False
        self._signalled_used = self.used_idx
        self._used_since_call = False
        self._rv: list[Any] = []
        self._rv_frames = 0
        self._rv_save = 0

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
        gpas: list[int] = []
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
                gpas.append(addr)
            if not flags & DESC_F_NEXT:
                self._seg_gpa = gpas
                return out
            if nxt >= size:
                return "bad-next"
            i = nxt
        return "desc-loop"

    def _put_used(self, head: int, length: int) -> None:
        slot = self.used_idx % self.num
        struct.pack_into("<II", self.used, 4 + 8 * slot, head, length)
        self.mem._mark(self._used_gpa + 4 + 8 * slot, 8)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self._used_since_call = True

    def _publish(self) -> None:
        struct.pack_into("<H", self.used, 2, self.used_idx)
        self.mem._mark(self._used_gpa + 2, 2)
        if self.event_idx:   # avail_event: tell the guest when to kick us next
            struct.pack_into("<H", self.used, 4 + 8 * self.num, self.last_avail)
            self.mem._mark(self._used_gpa + 4 + 8 * self.num, 2)

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
        for head, _ in taken:
            # walked again, as the kernel does: the guest's buffers may overlap its
            # own descriptors, and what was copied into the ones before (or the used
            # entries written) may have changed this chain; a chain now malformed
            # takes nothing, the rest of the frame goes on in the next buffers
            chain = self._chain(head, writable=True)
            if isinstance(chain, str):
                chain = []
            used = 0
            for b, gpa in zip(chain, self._seg_gpa):
                k = min(len(b), len(data) - pos)
                if k <= 0:
                    break
                b[:k] = data[pos:pos + k]
                self.mem._mark(gpa, k)
                pos += k
                used += k
            self._put_used(head, used)
        return True

    # -- host -> guest without a copy: a reservation ------------------------------
    def rx_reserve(self, nframes: int, frame_cap: int, head_room: int, mergeable: bool) -> int:
        """Receive buffers for up to ``nframes`` frames of ``frame_cap`` bytes
        (header included); the number of frames reserved (see the module)."""
        if self._rv_frames:
            raise VirtqError("a reservation is still open")
        nframes = min(nframes, RV_MAX_FRAMES)
        self._rv_save = self.last_avail
        frames: list[list[tuple[int, list[memoryview], int, list[int]]]] = []
        caps: list[int] = []
        segs = 0
        for _ in range(nframes):
            chains: list[tuple[int, list[memoryview], int, list[int]]] = []
            room = 0
            ok = True
            while room < frame_cap:
                if sum(len(f) for f in frames) + len(chains) >= self.num or not self.pending():
                    ok = False
                    break
                head = self._next_head()
                chain = self._chain(head, writable=True)
                total = 0 if isinstance(chain, str) else sum(len(b) for b in chain)
                if (isinstance(chain, str) or not chain or segs + len(chain) > RV_MAX_SEG
                        or (room == 0 and (len(chain[0]) < head_room or total <= head_room))):
                    self.last_avail = (self.last_avail - 1) & 0xFFFF
                    ok = False
                    break
                chains.append((head, chain, total, self._seg_gpa))
                segs += len(chain)
                room += total
                if not mergeable:
                    break       # one chain per frame: as large as the guest made it
            if not ok and room > head_room:
                frames.append(chains)      # buffers ran out mid-frame: a shorter last one
                caps.append(room)
                break
            if not ok:
                self.last_avail = (self.last_avail - len(chains)) & 0xFFFF
                break
            frames.append(chains)
            caps.append(min(room, frame_cap))
        if not frames:
            self.last_avail = self._rv_save
        self._rv = frames
        self._rv_caps = caps
        self._rv_frames = len(frames)
        return len(frames)

    def rx_capacity(self, frame: int) -> int:
        """The bytes reserved frame ``frame`` can hold (header included)."""
        if not 0 <= frame < self._rv_frames:
            raise IndexError("no such reserved frame")
        return self._rv_caps[frame]

    def rx_buffers(self, frame: int) -> list[memoryview]:
        """The writable segments of reserved frame ``frame``."""
        if not 0 <= frame < self._rv_frames:
            raise IndexError("no such reserved frame")
        return [b for _h, chain, _t, _g in self._rv[frame] for b in chain]

    def rx_finish(self, nused: int, lengths: Any, hdr_len: int = NET_HDR_LEN) -> int:
        """The first ``nused`` reserved frames are used, of ``lengths[i]`` bytes
        after the header; the rest of the reservation goes back to the ring."""
        if not 0 <= nused <= self._rv_frames or nused > len(lengths):
            raise ValueError("nused exceeds the reservation")
        given_back = sum(len(f) for f in self._rv[nused:])
        for f in range(nused):
            chains = self._rv[f]
            n = lengths[f]
            first = chains[0][1][0]
            if n < ETH_ZLEN and hdr_len + ETH_ZLEN <= len(first):
                first[hdr_len + n:hdr_len + ETH_ZLEN] = bytes(ETH_ZLEN - n)
                n = ETH_ZLEN
            need = hdr_len + n
            used = 0
            for head, chain, total, gpas in chains:
                if not need and used and f == nused - 1:
                    break
                take = min(need, total)
                # logged: what the entry says was written (the caller's bytes and
                # our padding)
                left = take if self.mem.logging else 0
                for b, gpa in zip(chain, gpas):
                    if not left:
                        break
                    self.mem._mark(gpa, min(left, len(b)))
                    left -= min(left, len(b))
                self._put_used(head, take)
                need -= take
                used += 1
            given_back += len(chains) - used
            if hdr_len >= 12:
                struct.pack_into("<H", first, 10, used)
                # marked again now it is written: a harvest since the loop missed it
                self.mem._mark(chains[0][3][0] + 10, 2)
        self.last_avail = (self.last_avail - given_back) & 0xFFFF
        self._rv, self._rv_frames = [], 0
        self._publish()
        return nused
