# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Split virtqueues over guest memory, Cython kernel.

Same classes, results and error reasons as the pure twin ``passtcore_py.virtq``,
whose docstring explains the design. Here the regions are raw pointers into
buffers held for the lifetime of the ``GuestMemory`` object, every guest
address and length is checked against one region before it is dereferenced
(with 64-bit arithmetic that cannot wrap), the avail index is read with an
acquire fence and the used index published after a release fence (the guest
runs on another CPU), and no Python object is created per descriptor. While
logging, a write is marked after it is made, with an atomic OR (the front end
harvests the log concurrently: the bit never becomes visible before the data).
"""
cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.buffer cimport PyBUF_WRITE
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from passtcore_py.virtq import (AVAIL_F_NO_INTERRUPT, DESC_F_INDIRECT, DESC_F_NEXT,
                                DESC_F_WRITE, MAX_QUEUE_SIZE, MAX_REGIONS, NET_HDR_LEN,
                                VirtqError)

__all__ = ["GuestMemory", "Virtqueue", "VirtqError", "DESC_F_NEXT", "DESC_F_WRITE",
           "DESC_F_INDIRECT", "AVAIL_F_NO_INTERRUPT", "NET_HDR_LEN", "MAX_REGIONS",
           "MAX_QUEUE_SIZE"]

cdef extern from *:
    """
    static inline void pc_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
    static inline void pc_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
    static inline void pc_full(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
    static inline uint16_t pc_le16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
    static inline uint32_t pc_le32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
    static inline uint64_t pc_le64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
    static inline void pc_put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
    static inline void pc_put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
    static inline void pc_or8(uint8_t *p, uint8_t v) { __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
    """
    void pc_acquire() noexcept nogil
    void pc_release() noexcept nogil
    void pc_full() noexcept nogil
    uint16_t pc_le16(const uint8_t* p) noexcept nogil
    uint32_t pc_le32(const uint8_t* p) noexcept nogil
    uint64_t pc_le64(const uint8_t* p) noexcept nogil
    void pc_put16(uint8_t* p, uint16_t v) noexcept nogil
    void pc_put32(uint8_t* p, uint32_t v) noexcept nogil
    void pc_or8(uint8_t* p, uint8_t v) noexcept nogil

cdef enum:
    F_NEXT = 1
    F_WRITE = 2
    F_INDIRECT = 4
    F_NO_INTERRUPT = 1
    QMAX = 32768
    FRAME_MAX = 65536 + 14
    ETH_ZLEN = 60
    LOG_PAGE_SHIFT = 12     # VHOST_LOG_PAGE: a bit of the dirty log per 4 KiB page

# chain walk results (< 0: malformed, the reason's index)
cdef enum:
    R_BAD_HEAD = -1
    R_BAD_INDIRECT = -2
    R_BAD_ADDRESS = -3
    R_WRONG_DIRECTION = -4
    R_BAD_NEXT = -5
    R_DESC_LOOP = -6

_REASONS = {R_BAD_HEAD: "bad-head", R_BAD_INDIRECT: "bad-indirect",
            R_BAD_ADDRESS: "bad-address", R_WRONG_DIRECTION: "wrong-direction",
            R_BAD_NEXT: "bad-next", R_DESC_LOOP: "desc-loop"}


@cython.final
cdef class GuestMemory:
    """The guest's memory regions (see the twin): ``add(gpa, size, uva, buf)``."""

    def __cinit__(self):
        self.n = 0
        self._views = []
        self._log = NULL
        self._log_len = 0
        self._log_held = False

    def __dealloc__(self):
        self._release()

    cdef void _release(self) noexcept:
        cdef int i
        for i in range(self.n):
            PyBuffer_Release(&self._bufs[i])
        self.n = 0
        self._log_release()

    cdef void _log_release(self) noexcept:
        if self._log_held:
            self._log = NULL      # the hot path stops looking before the buffer goes
            self._log_len = 0
            self._log_held = False
            PyBuffer_Release(&self._logbuf)

    def add(self, gpa, size, uva, buf):
        cdef Py_buffer v
        if self.n >= NREG:
            raise VirtqError(f"at most {MAX_REGIONS} memory regions")
        if size <= 0 or gpa < 0 or uva < 0 or gpa + size > (1 << 64) or uva + size > (1 << 64):
            raise VirtqError("a memory region's size does not fit its mapping")
        try:
            PyObject_GetBuffer(buf, &v, PyBUF_SIMPLE | PyBUF_WRITABLE)
        except BufferError:
            raise VirtqError("a memory region must be writable") from None
        if <uint64_t>v.len < <uint64_t>size:
            PyBuffer_Release(&v)
            raise VirtqError("a memory region's size does not fit its mapping")
        self._bufs[self.n] = v
        self._base[self.n] = <uint8_t*>v.buf
        self._gpa[self.n] = gpa
        self._size[self.n] = size
        self._uva[self.n] = uva
        self.n += 1
        self._views.append(memoryview(buf).cast("B")[:size])

    def clear(self):
        self._release()
        self._views = []

    def __len__(self):
        return self.n

    # -- dirty-page log (VHOST_F_LOG_ALL) ------------------------------------------
    def set_log(self, buf):
        """Mark every write into guest memory in ``buf`` (a writable buffer of any
        size, the front end's log: bit ``page % 8`` of byte ``page // 8`` for each
        4 KiB guest-physical page), or stop logging with None."""
        cdef Py_buffer v
        if buf is not None:
            try:
                PyObject_GetBuffer(buf, &v, PyBUF_SIMPLE | PyBUF_WRITABLE)
            except BufferError:
                raise VirtqError("the dirty log must be writable") from None
        self._log_release()       # after the new one is held: a refused log changes nothing
        if buf is not None:
            self._logbuf = v
            self._log_held = True
            self._log = <uint8_t*>v.buf
            self._log_len = <uint64_t>v.len

    property logging:
        def __get__(self):
            return self._log_held

    def log_write(self, gpa, length):
        """Mark the pages of guest-physical [gpa, gpa + length) (cut at 2**64;
        pages past the end of the log are not marked)."""
        if gpa < 0 or length < 0:
            raise ValueError("gpa and length must be >= 0")
        if not length or gpa >= (1 << 64):
            return
        last = min(gpa + length, 1 << 64) - 1
        self._log_pages(<uint64_t>(gpa >> LOG_PAGE_SHIFT), <uint64_t>(last >> LOG_PAGE_SHIFT))

    cdef void _log_pages(self, uint64_t first, uint64_t last) noexcept nogil:
        """Mark pages first..last (inclusive), a byte at a time, within the log."""
        cdef uint64_t npages, b, lb
        cdef uint8_t m
        if self._log_len > (<uint64_t>1 << 61):
            npages = <uint64_t>-1
        else:
            npages = self._log_len << 3
        if first >= npages or first > last:
            return
        if last >= npages:
            last = npages - 1
        b = first >> 3
        lb = last >> 3
        m = <uint8_t>(0xFF << (first & 7))
        while True:
            if b == lb:
                m &= <uint8_t>(0xFF >> (7 - (last & 7)))
            pc_or8(self._log + b, m)
            if b == lb:
                return
            b += 1
            m = 0xFF

    cdef void log_ptr(self, const uint8_t* p, uint64_t length) noexcept nogil:
        """Mark ``length`` bytes written at ``p`` (inside a region); when not
        logging, one test."""
        if self._log_len and length:
            self._log_host(p, length)

    cdef void _log_host(self, const uint8_t* p, uint64_t length) noexcept nogil:
        cdef int i
        cdef uint64_t off
        for i in range(self.n):   # the region whose mapping holds p: its gpa
            if p >= self._base[i] and <uint64_t>(p - self._base[i]) < self._size[i]:
                off = <uint64_t>(p - self._base[i])
                if length > self._size[i] - off:
                    length = self._size[i] - off
                self._log_pages((self._gpa[i] + off) >> LOG_PAGE_SHIFT,
                                (self._gpa[i] + off + length - 1) >> LOG_PAGE_SHIFT)
                return

    cdef uint8_t* at_gpa(self, uint64_t addr, uint64_t length) noexcept nogil:
        cdef int i
        cdef uint64_t off
        for i in range(self.n):
            if addr >= self._gpa[i]:
                off = addr - self._gpa[i]
                if off <= self._size[i] and length <= self._size[i] - off:
                    return self._base[i] + off
        return NULL

    cdef uint8_t* at_uva(self, uint64_t addr, uint64_t length) noexcept nogil:
        cdef int i
        cdef uint64_t off
        for i in range(self.n):
            if addr >= self._uva[i]:
                off = addr - self._uva[i]
                if off <= self._size[i] and length <= self._size[i] - off:
                    return self._base[i] + off
        return NULL

    def gpa(self, addr, length):
        """The bytes at guest-physical ``addr``, ``length`` long, or None."""
        return self._view(addr, length, False)

    def uva(self, addr, length):
        """The bytes at front-end virtual ``addr`` (ring addresses), or None."""
        return self._view(addr, length, True)

    cdef object _view(self, addr, length, bint virt):
        cdef int i
        if addr < 0 or length < 0 or addr >= (1 << 64) or length >= (1 << 64):
            return None
        for i in range(self.n):
            base = self._uva[i] if virt else self._gpa[i]
            off = addr - base
            if 0 <= off and off + length <= self._size[i]:
                return self._views[i][off:off + length]
        return None


@cython.final
cdef class Virtqueue:
    """One split virtqueue of ``num`` entries (see the twin)."""

    def __cinit__(self, GuestMemory mem not None, int num, desc, avail, used,
                  bint event_idx=False, int last_avail=0):
        if num <= 0 or num > QMAX or num & (num - 1):
            raise VirtqError(f"queue size {num} is not a power of two up to {MAX_QUEUE_SIZE}")
        self.mem = mem
        self.num = num
        self.event_idx = event_idx
        if desc < 0 or avail < 0 or used < 0 or max(desc, avail, used) >= (1 << 64):
            raise VirtqError("a ring of the queue is outside guest memory")
        self.desc = mem.at_uva(desc, 16 * <uint64_t>num)
        self.avail = mem.at_uva(avail, 6 + 2 * <uint64_t>num)
        self.used = mem.at_uva(used, 6 + 8 * <uint64_t>num)
        if self.desc == NULL or self.avail == NULL or self.used == NULL:
            raise VirtqError("a ring of the queue is outside guest memory")
        self._last_avail = <uint16_t>(last_avail & 0xFFFF)
        self._used_idx = pc_le16(self.used + 2)
        self._signalled = self._used_idx
        self._used_since_call = False
        self.errors = {}
        self.broken = False
        self._segp = <uint8_t**>malloc((num + 1) * sizeof(uint8_t*))
        self._segl = <uint32_t*>malloc((num + 1) * sizeof(uint32_t))
        self._heads = <int*>malloc((num + 1) * sizeof(int))
        self._rv_head = <int*>malloc((num + 1) * sizeof(int))
        self._rv_chain_seg = <int*>malloc((num + 2) * sizeof(int))
        self._rv_chain_cap = <uint64_t*>malloc((num + 1) * sizeof(uint64_t))
        self._rv_frames = self._rv_chains = self._rv_segs = 0
        if (self._segp == NULL or self._segl == NULL or self._heads == NULL
                or self._rv_head == NULL or self._rv_chain_seg == NULL
                or self._rv_chain_cap == NULL):
            raise MemoryError()

    def __dealloc__(self):
        free(self._segp)
        free(self._segl)
        free(self._heads)
        free(self._rv_head)
        free(self._rv_chain_seg)
        free(self._rv_chain_cap)

    property last_avail:
        def __get__(self):
            return self._last_avail

        def __set__(self, int value):
            self._last_avail = <uint16_t>(value & 0xFFFF)

    property used_idx:
        def __get__(self):
            return self._used_idx

    # -- shared ----------------------------------------------------------------
    cdef void _err(self, str reason) except *:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def avail_idx(self):
        return pc_le16(self.avail + 2)

    cpdef int pending(self) except -1:
        """Chains the guest made available that we have not taken (0 if broken)."""
        cdef uint16_t n
        if self.broken:
            return 0
        n = <uint16_t>(pc_le16(self.avail + 2) - self._last_avail)
        pc_acquire()   # the ring entries below the index are read after it
        if n > self.num:
            self.broken = True
            self._err("avail-overrun")
            return 0
        return n

    cdef int _next_head(self) noexcept nogil:
        cdef int slot = self._last_avail & (self.num - 1)
        self._last_avail = <uint16_t>(self._last_avail + 1)
        return pc_le16(self.avail + 4 + 2 * slot)

    cdef int _chain(self, int head, bint writable, uint64_t* total) noexcept nogil:
        """Walk the chain at ``head`` into _segp/_segl: the number of buffers, or a
        R_* reason (< 0)."""
        cdef const uint8_t* table = self.desc
        cdef uint32_t size = self.num
        cdef uint32_t i = head
        cdef bint indirect = False
        cdef int nseg = 0, step
        cdef uint64_t addr
        cdef uint32_t length
        cdef uint16_t flags, nxt
        cdef uint8_t* p
        total[0] = 0
        if head >= self.num:
            return R_BAD_HEAD
        for step in range(self.num + 1):
            addr = pc_le64(table + 16 * i)
            length = pc_le32(table + 16 * i + 8)
            flags = pc_le16(table + 16 * i + 12)
            nxt = pc_le16(table + 16 * i + 14)
            if flags & F_INDIRECT:
                if indirect or flags & F_NEXT:
                    return R_BAD_INDIRECT
                if length == 0 or length % 16 or length // 16 > QMAX:
                    return R_BAD_INDIRECT
                p = self.mem.at_gpa(addr, length)
                if p == NULL:
                    return R_BAD_ADDRESS
                table = p
                size = length // 16
                i = 0
                indirect = True
                continue
            if (flags & F_WRITE != 0) != writable:
                return R_WRONG_DIRECTION
            p = self.mem.at_gpa(addr, length)
            if p == NULL:
                return R_BAD_ADDRESS
            if length:
                self._segp[nseg] = p
                self._segl[nseg] = length
                nseg += 1
                total[0] += length
            if not flags & F_NEXT:
                return nseg
            if nxt >= size:
                return R_BAD_NEXT
            i = nxt
        return R_DESC_LOOP

    cdef void _put_used(self, int head, uint32_t length) noexcept nogil:
        cdef int slot = self._used_idx & (self.num - 1)
        pc_put32(self.used + 4 + 8 * slot, <uint32_t>head)
        pc_put32(self.used + 8 + 8 * slot, length)
        self.mem.log_ptr(self.used + 4 + 8 * slot, 8)
        self._used_idx = <uint16_t>(self._used_idx + 1)
        self._used_since_call = True

    cdef void _publish(self) noexcept nogil:
        pc_release()   # the used entries are visible before the index that covers them
        pc_put16(self.used + 2, self._used_idx)
        self.mem.log_ptr(self.used + 2, 2)
        if self.event_idx:
            pc_put16(self.used + 4 + 8 * self.num, self._last_avail)
            self.mem.log_ptr(self.used + 4 + 8 * self.num, 2)
            # store -> load: the guest may have added buffers before it saw avail_event
            # and will not kick for them; the caller re-reads the avail index (pending())
            pc_full()

    cdef void _log_chain(self, int chain, uint64_t length) noexcept nogil:
        """Mark the first ``length`` bytes of reserved chain ``chain``."""
        cdef int s
        cdef uint64_t take
        if not self.mem._log_len:
            return
        for s in range(self._rv_chain_seg[chain], self._rv_chain_seg[chain + 1]):
            if not length:
                return
            take = length if length < self._rv_segl[s] else self._rv_segl[s]
            self.mem.log_ptr(self._rv_segp[s], take)
            length -= take

    def need_call(self):
        """Whether the guest asked to be interrupted for the entries used since the
        last call (and forget them)."""
        cdef uint16_t event, new, old
        if not self._used_since_call:
            return False
        self._used_since_call = False
        if self.event_idx:
            event = pc_le16(self.avail + 4 + 2 * self.num)
            new = self._used_idx
            old = self._signalled
            self._signalled = new
            return <uint16_t>(new - event - 1) < <uint16_t>(new - old)
        return not (pc_le16(self.avail) & F_NO_INTERRUPT)

    # -- guest -> host ------------------------------------------------------------
    def pop_tx(self, out, offsets, lengths, Py_ssize_t max_frames, Py_ssize_t hdr_len=NET_HDR_LEN):
        """See the twin: available frames copied into ``out``; the number copied."""
        cdef int64_t[::1] offs = offsets
        cdef int64_t[::1] lens = lengths
        cdef Py_buffer v
        cdef uint8_t* dst
        cdef Py_ssize_t cap = max_frames, pos = 0, n = 0, start
        cdef int k, head, nseg, j, avail_n
        cdef uint64_t total, skip, take
        cdef int64_t flen
        if offs.shape[0] < cap:
            cap = offs.shape[0]
        if lens.shape[0] < cap:
            cap = lens.shape[0]
        if hdr_len < 0:
            raise ValueError("hdr_len must be >= 0")
        PyObject_GetBuffer(out, &v, PyBUF_SIMPLE | PyBUF_WRITABLE)
        dst = <uint8_t*>v.buf
        try:
            avail_n = self.pending()
            for k in range(avail_n):
                if n >= cap:
                    break
                head = self._next_head()
                nseg = self._chain(head, False, &total)
                if nseg < 0:
                    self._err(_REASONS[nseg])
                    if head < self.num:
                        self._put_used(head, 0)
                    continue
                flen = <int64_t>total - hdr_len
                if flen < 14 or flen > FRAME_MAX:
                    self._err("bad-frame-length")
                    self._put_used(head, 0)
                    continue
                if pos + flen > v.len:
                    self._last_avail = <uint16_t>(self._last_avail - 1)   # no room: next call
                    break
                skip = hdr_len
                start = pos
                for j in range(nseg):
                    if skip >= self._segl[j]:
                        skip -= self._segl[j]
                        continue
                    take = self._segl[j] - skip
                    memcpy(dst + pos, self._segp[j] + skip, take)
                    pos += take
                    skip = 0
                offs[n] = start
                lens[n] = flen
                n += 1
                self._put_used(head, 0)
            self._publish()
        finally:
            PyBuffer_Release(&v)
        return n

    # -- host -> guest ----------------------------------------------------------------
    def push_rx(self, frames, offsets, lengths, Py_ssize_t count, bint mergeable=True,
                hdr=bytes(NET_HDR_LEN), hdrs=None):
        """See the twin: frames copied into the guest's receive buffers; how many."""
        cdef const int64_t[::1] offs = offsets
        cdef const int64_t[::1] lens = lengths
        cdef const uint8_t[::1] h = hdr
        cdef const uint8_t[::1] hs
        cdef const uint8_t* hp
        cdef Py_buffer v
        cdef const uint8_t* src
        cdef Py_ssize_t i, done = 0
        cdef int r
        if count > offs.shape[0] or count > lens.shape[0]:
            raise ValueError("count exceeds the offsets/lengths arrays")
        if h.shape[0] > 64:
            raise ValueError("the virtio-net header is at most 64 bytes")
        if hdrs is not None:
            hs = hdrs
            if hs.shape[0] < count * h.shape[0]:
                raise ValueError("hdrs holds fewer headers than frames")
        PyObject_GetBuffer(frames, &v, PyBUF_SIMPLE)
        src = <const uint8_t*>v.buf
        try:
            for i in range(count):
                if offs[i] < 0 or lens[i] < 0 or offs[i] > v.len - lens[i]:
                    self._err("bad-source-frame")
                    done += 1
                    continue
                if h.shape[0] == 0:
                    hp = NULL
                elif hdrs is None:
                    hp = &h[0]
                else:
                    hp = &hs[i * h.shape[0]]
                r = self._rx_one(src + offs[i], lens[i], hp, h.shape[0], mergeable)
                if r == 0:
                    break
                done += 1
            self._publish()
        finally:
            PyBuffer_Release(&v)
        return done

    cdef int _rx_one(self, const uint8_t* frame, Py_ssize_t flen, const uint8_t* hdr,
                     Py_ssize_t hdr_len, bint mergeable) except -1:
        """1: done with the frame (delivered, or dropped and counted); 0: not enough
        room yet (nothing taken)."""
        cdef Py_ssize_t pad = ETH_ZLEN - flen if flen < ETH_ZLEN else 0
        cdef uint64_t need = hdr_len + flen + pad, room = 0, total
        cdef uint16_t save = self._last_avail
        cdef int* heads = self._heads
        cdef int ntaken = 0, head, nseg, k, j
        cdef uint8_t hbuf[64]
        cdef Py_ssize_t pos, piece, off
        cdef uint32_t used
        # First pass: claim enough buffers (their chains are walked again to copy).
        for k in range(self.num + 1):
            if room >= need:
                break
            if not self.pending():
                self._last_avail = save
                return 0
            head = self._next_head()
            nseg = self._chain(head, True, &total)
            if nseg >= 0 and ntaken == 0 and total < <uint64_t>hdr_len:
                nseg = -100
            if nseg < 0:
                self._err("rx-buffer-too-small" if nseg == -100 else _REASONS[nseg])
                if head < self.num:
                    self._put_used(head, 0)
                for j in range(ntaken):
                    self._put_used(heads[j], 0)
                return 1
            heads[ntaken] = head
            ntaken += 1
            room += total
            if not mergeable and room < need:
                self._err("rx-buffer-too-small")
                for j in range(ntaken):
                    self._put_used(heads[j], 0)
                return 1
        if room < need:
            self._last_avail = save
            return 0
        if hdr_len:
            memcpy(hbuf, hdr, hdr_len)
            if hdr_len >= 12:
                pc_put16(hbuf + 10, <uint16_t>ntaken)
        # Second pass: copy header, frame and padding across the claimed buffers.
        pos = 0   # position in the virtual [header | frame | padding]
        for k in range(ntaken):
            nseg = self._chain(heads[k], True, &total)   # the guest may have changed it:
            if nseg < 0:                                  # what is copied stays in bounds
                nseg = 0
            used = 0
            for j in range(nseg):
                off = 0
                while off < self._segl[j] and pos < <Py_ssize_t>need:
                    if pos < hdr_len:
                        piece = min(hdr_len - pos, self._segl[j] - off)
                        memcpy(self._segp[j] + off, hbuf + pos, piece)
                    elif pos < hdr_len + flen:
                        piece = min(hdr_len + flen - pos, self._segl[j] - off)
                        memcpy(self._segp[j] + off, frame + (pos - hdr_len), piece)
                    else:
                        piece = min(<Py_ssize_t>need - pos, self._segl[j] - off)
                        memset(self._segp[j] + off, 0, piece)
                    off += piece
                    pos += piece
                    used += <uint32_t>piece
                self.mem.log_ptr(self._segp[j], <uint64_t>off)
            self._put_used(heads[k], used)
        return 1

    # -- host -> guest without a copy: a reservation ------------------------------
    cpdef int rx_reserve(self, int nframes, uint64_t frame_cap, uint64_t head_room,
                         bint mergeable) except -1:
        """See the twin: receive buffers for up to ``nframes`` frames of
        ``frame_cap`` bytes each (header included); the number of frames."""
        cdef int f, head, nseg, j
        cdef uint64_t total, room
        cdef bint stop = False
        if self._rv_frames or self._rv_chains:
            raise VirtqError("a reservation is still open")
        if nframes > RV_MAX_FRAMES:
            nframes = RV_MAX_FRAMES
        self._rv_save = self._last_avail
        self._rv_mergeable = mergeable
        self._rv_segs = 0
        self._rv_chain_seg[0] = 0
        for f in range(nframes):
            self._rv_frame_chain[f] = self._rv_chains
            room = 0
            while room < frame_cap:
                if self._rv_chains >= self.num or not self.pending():
                    stop = True
                    break
                head = self._next_head()
                nseg = self._chain(head, True, &total)
                if (nseg <= 0 or self._rv_segs + nseg > RV_MAX_SEG
                        or (room == 0 and (self._segl[0] < head_room or total <= head_room))):
                    # malformed, too small or too many pieces: not ours to judge
                    # here; the copy path takes (and counts) it
                    self._last_avail = <uint16_t>(self._last_avail - 1)
                    stop = True
                    break
                for j in range(nseg):
                    self._rv_segp[self._rv_segs + j] = self._segp[j]
                    self._rv_segl[self._rv_segs + j] = self._segl[j]
                self._rv_head[self._rv_chains] = head
                self._rv_chain_cap[self._rv_chains] = total
                self._rv_segs += nseg
                self._rv_chains += 1
                self._rv_chain_seg[self._rv_chains] = self._rv_segs
                room += total
                if not mergeable:
                    break     # one chain per frame: as large as the guest made it
            if stop and room > head_room:
                # the buffers ran out in the middle of a frame: a shorter last one
                self._rv_frame_cap[f] = room
                self._rv_frames += 1
                break
            if stop:
                # a frame half reserved is given back with the rest
                if self._rv_chains > self._rv_frame_chain[f]:
                    self._last_avail = <uint16_t>(self._last_avail
                                                 - (self._rv_chains - self._rv_frame_chain[f]))
                    self._rv_chains = self._rv_frame_chain[f]
                    self._rv_segs = self._rv_chain_seg[self._rv_chains]
                break
            self._rv_frame_cap[f] = room if room < frame_cap else frame_cap
            self._rv_frames += 1
        self._rv_frame_chain[self._rv_frames] = self._rv_chains
        if not self._rv_frames:
            self._last_avail = self._rv_save
            self._rv_chains = self._rv_segs = 0
        return self._rv_frames

    def rx_capacity(self, int frame):
        """The bytes reserved frame ``frame`` can hold (header included)."""
        if frame < 0 or frame >= self._rv_frames:
            raise IndexError("no such reserved frame")
        return self._rv_frame_cap[frame]

    def rx_buffers(self, int frame):
        """The writable segments of reserved frame ``frame`` (memoryviews)."""
        cdef int s
        if frame < 0 or frame >= self._rv_frames:
            raise IndexError("no such reserved frame")
        views = []
        for s in range(self._rv_chain_seg[self._rv_frame_chain[frame]],
                       self._rv_chain_seg[self._rv_frame_chain[frame + 1]]):
            views.append(<object>PyMemoryView_FromMemory(<char*>self._rv_segp[s],
                                                         self._rv_segl[s], PyBUF_WRITE))
        return views

    def rx_finish(self, int nused, lengths, Py_ssize_t hdr_len=NET_HDR_LEN):
        """See the twin: the first ``nused`` reserved frames, of ``lengths`` bytes
        after the header, are used; the rest of the reservation is given back."""
        cdef const int64_t[::1] lens = lengths
        if nused > lens.shape[0]:
            raise ValueError("nused exceeds lengths")
        return self.rx_finish_c(nused, &lens[0] if lens.shape[0] else NULL, hdr_len)

    cdef int rx_finish_c(self, int nused, const int64_t* lengths, Py_ssize_t hdr_len) except -1:
        cdef int f, ch, last, end = 0
        cdef uint64_t need, take
        cdef Py_ssize_t pad
        cdef uint8_t* p
        if nused < 0 or nused > self._rv_frames:
            raise ValueError("nused exceeds the reservation")
        for f in range(nused):
            ch = self._rv_frame_chain[f]
            last = self._rv_frame_chain[f + 1]
            pad = 0
            if lengths[f] < ETH_ZLEN:
                # short frames are padded in place: the first segment holds the
                # whole frame then (rx_reserve's head_room)
                pad = ETH_ZLEN - lengths[f]
                p = self._rv_segp[self._rv_chain_seg[ch]]
                if hdr_len + ETH_ZLEN <= self._rv_segl[self._rv_chain_seg[ch]]:
                    memset(p + hdr_len + lengths[f], 0, pad)
                else:
                    pad = 0
            need = <uint64_t>(hdr_len + lengths[f] + pad)
            end = ch
            while end < last and need:
                take = need if need < self._rv_chain_cap[end] else self._rv_chain_cap[end]
                self._log_chain(end, take)   # the caller's bytes and our padding
                self._put_used(self._rv_head[end], <uint32_t>take)
                need -= take
                end += 1
            if end == ch:   # an empty frame still takes its first buffer
                self._put_used(self._rv_head[end], 0)
                end += 1
            while f < nused - 1 and end < last:
                # only the last frame may be short; a caller that breaks that rule
                # hands the guest empty buffers, never a gap in the ring
                self._put_used(self._rv_head[end], 0)
                end += 1
            if hdr_len >= 12:
                pc_put16(self._rv_segp[self._rv_chain_seg[ch]] + 10, <uint16_t>(end - ch))
                # marked again now it is written: a harvest since _log_chain missed it
                self.mem.log_ptr(self._rv_segp[self._rv_chain_seg[ch]] + 10, 2)
        # what was reserved past the last buffer used goes back to the ring
        self._last_avail = <uint16_t>(self._last_avail - (self._rv_chains - end))
        self._rv_frames = self._rv_chains = self._rv_segs = 0
        self._publish()
        return nused
