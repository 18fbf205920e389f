# cython: language_level=3
# The virtqueue kernel's C layout, shared with the kernels that cimport it.
#
# The data-plane fast path (_fastpath.pyx) peeks host TCP data straight into
# the guest's receive buffers: it reserves buffers with Virtqueue.rx_reserve,
# reads the reservation's segments (_rv_*) to build its iovecs, writes the
# headers itself and hands the frames back with rx_finish. Everything else
# about the queue (design, bounds checks, ordering) is in _virtq.pyx.
#
# While the front end migrates the guest (VHOST_F_LOG_ALL), every write into
# guest memory is marked in its dirty log: GuestMemory.log_ptr(p, n) for a
# pointer into a region; rx_finish_c marks what the used entries cover, so a
# caller that writes into a reservation marks nothing itself.
cimport cython
from cpython.buffer cimport Py_buffer
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    NREG = 8
    RV_MAX_SEG = 1024       # segments of one reservation (the kernel's UIO_MAXIOV)
    RV_MAX_FRAMES = 64      # frames of one reservation


@cython.final
cdef class GuestMemory:
    cdef int n
    cdef uint64_t _gpa[NREG]
    cdef uint64_t _size[NREG]
    cdef uint64_t _uva[NREG]
    cdef uint8_t* _base[NREG]
    cdef Py_buffer _bufs[NREG]
    cdef list _views
    cdef Py_buffer _logbuf     # the dirty log (set_log), held while _log_held
    cdef uint8_t* _log
    cdef uint64_t _log_len     # 0 when not logging: the hot path's one test
    cdef bint _log_held

    cdef void _release(self) noexcept
    cdef void _log_release(self) noexcept
    cdef void _log_pages(self, uint64_t first, uint64_t last) noexcept nogil
    cdef void _log_host(self, const uint8_t* p, uint64_t length) noexcept nogil
    cdef void log_ptr(self, const uint8_t* p, uint64_t length) noexcept nogil
    cdef uint8_t* at_gpa(self, uint64_t addr, uint64_t length) noexcept nogil
    cdef uint8_t* at_uva(self, uint64_t addr, uint64_t length) noexcept nogil
    cdef object _view(self, addr, length, bint virt)


@cython.final
cdef class Virtqueue:
    cdef GuestMemory mem
    cdef readonly int num
    cdef public bint event_idx
    cdef uint8_t* desc
    cdef uint8_t* avail
    cdef uint8_t* used
    cdef uint16_t _last_avail, _used_idx, _signalled
    cdef bint _used_since_call
    cdef public dict errors
    cdef public bint broken
    cdef uint8_t** _segp       # the chain being walked: buffer pointers ...
    cdef uint32_t* _segl       # ... and lengths (num + 1 at most)
    cdef int* _heads           # the receive buffers claimed for one frame
    # a reservation of receive buffers (rx_reserve .. rx_finish): per frame its
    # first chain; per chain its head, first segment and capacity; the segments
    cdef int _rv_frames, _rv_chains, _rv_segs
    cdef bint _rv_mergeable
    cdef uint16_t _rv_save
    cdef int _rv_frame_chain[RV_MAX_FRAMES + 1]
    cdef uint64_t _rv_frame_cap[RV_MAX_FRAMES + 1]
    cdef int* _rv_head
    cdef int* _rv_chain_seg
    cdef uint64_t* _rv_chain_cap
    cdef uint8_t* _rv_segp[RV_MAX_SEG]
    cdef uint32_t _rv_segl[RV_MAX_SEG]

    cpdef int pending(self) except -1
    cdef void _err(self, str reason) except *
    cdef int _next_head(self) noexcept nogil
    cdef int _chain(self, int head, bint writable, uint64_t* total) noexcept nogil
    cdef void _put_used(self, int head, uint32_t length) noexcept nogil
    cdef void _publish(self) noexcept nogil
    cdef void _log_chain(self, int chain, uint64_t length) noexcept nogil
    cdef int _rx_one(self, const uint8_t* frame, Py_ssize_t flen, const uint8_t* hdr,
                     Py_ssize_t hdr_len, bint mergeable) except -1
    cpdef int rx_reserve(self, int nframes, uint64_t frame_cap, uint64_t head_room,
                         bint mergeable) except -1
    cdef int rx_finish_c(self, int nused, const int64_t* lengths, Py_ssize_t hdr_len) except -1
