# cython: language_level=3
# The flow table's C layout, shared with the kernels that cimport it.
#
# The data-plane fast path (_fastpath.pyx) looks flows up from C, straight
# from a parsed frame, without a Python call: it cimports FlowTable and calls
# the inline probe below (_lookup) and stamps _seen[] itself. Everything else
# about the table (design, insert, removal, expiry) is in _flowtable.pyx.
cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from passtcore._siphash cimport siphash24_raw

cdef enum:
    KEY_LEN = 38        # canonical key bytes hashed


ctypedef struct FlowKey:
    uint64_t w[5]          # 38 key bytes + 2 zero bytes


ctypedef struct Bucket:
    uint32_t tag           # low 32 bits of the key's SipHash
    int32_t ref            # flow index + 1, 0 = empty


cdef inline bint key_eq(const FlowKey* a, const FlowKey* b) noexcept nogil:
    return ((a.w[0] ^ b.w[0]) | (a.w[1] ^ b.w[1]) | (a.w[2] ^ b.w[2])
            | (a.w[3] ^ b.w[3]) | (a.w[4] ^ b.w[4])) == 0


cdef inline void key_fill(FlowKey* k, uint8_t proto, uint8_t side, uint16_t sport,
                          uint16_t dport) noexcept nogil:
    cdef uint8_t* p = <uint8_t*>k
    k.w[4] = 0
    p[0] = proto
    p[1] = side
    p[2] = sport >> 8
    p[3] = sport & 0xff
    p[4] = dport >> 8
    p[5] = dport & 0xff


ctypedef struct KeyRows:
    Py_ssize_t n
    const uint8_t* protos
    const uint8_t* sides
    const uint8_t* saddrs      # n x 16
    const uint16_t* sports
    const uint8_t* daddrs      # n x 16
    const uint16_t* dports


@cython.final   # direct (inlinable) calls of the cdef methods, no vtable
cdef class FlowTable:
    cdef void* _mem            # one anonymous mapping holding every array below
    cdef size_t _mem_len
    cdef Bucket* _b
    cdef FlowKey* _keys
    cdef uint32_t* _tag
    cdef double* _seen
    cdef uint8_t* _used
    cdef int32_t* _free
    cdef Py_ssize_t _nfree     # entries on the _free stack (freed indices)
    cdef Py_ssize_t _fresh     # indices >= _fresh were never handed out
    cdef Py_ssize_t _capacity
    cdef Py_ssize_t _n
    cdef size_t _nbuckets
    cdef size_t _mask
    cdef uint64_t _k0, _k1
    cdef bytes _key
    cdef uint64_t _inserts, _removes, _expired, _lookups, _hits, _probe_total, _probe_max

    cdef void _reset(self) noexcept nogil
    cdef int32_t _insert(self, const FlowKey* k, double now) noexcept nogil
    cdef void _unlink(self, int32_t i) noexcept nogil
    cdef int32_t _check_index(self, i) except -1
    cdef int32_t _find_quiet(self, const FlowKey* k) noexcept nogil
    cdef void _indices(self, int64_t* o) noexcept nogil
    cdef Py_ssize_t _expire(self, double now, double timeout, int64_t* o,
                            Py_ssize_t limit) noexcept nogil
    cdef void _lookup_rows(self, const KeyRows* rows, int64_t* o) noexcept nogil
    cdef Py_ssize_t _insert_rows(self, const KeyRows* rows, double now, int64_t* o) noexcept nogil
    cdef size_t _max_displacement(self) noexcept nogil

    cdef inline uint32_t _hash(self, const FlowKey* k) noexcept nogil:
        return <uint32_t>siphash24_raw(self._k0, self._k1, <const uint8_t*>k, KEY_LEN)

    cdef inline int32_t _find(self, const FlowKey* k, uint32_t tag, size_t* bucket,
                              uint64_t* probes) noexcept nogil:
        """Flow index of k or -1; *bucket = its bucket or the empty one ending the probe."""
        cdef size_t b = tag & self._mask
        cdef uint64_t n = 1
        cdef int32_t r
        while True:
            r = self._b[b].ref
            if r == 0 or (self._b[b].tag == tag and key_eq(&self._keys[r - 1], k)):
                break
            b = (b + 1) & self._mask
            n += 1
        bucket[0] = b
        probes[0] = n
        return r - 1

    cdef inline int32_t _lookup(self, const FlowKey* k) noexcept nogil:
        return self._lookup_tagged(k, self._hash(k))

    cdef inline int32_t _lookup_tagged(self, const FlowKey* k, uint32_t tag) noexcept nogil:
        cdef size_t b
        cdef uint64_t probes
        cdef int32_t i = self._find(k, tag, &b, &probes)
        self._lookups += 1
        self._probe_total += probes
        if probes > self._probe_max:
            self._probe_max = probes
        if i >= 0:
            self._hits += 1
        return i
