# cython: language_level=3
# SipHash-2-4 (Aumasson & Bernstein), nogil, for the Cython kernels.
#
# Standard SipHash-2-4: the 16-byte key is read as two little-endian 64-bit
# words, message words are little-endian, the result is the 64-bit value
# v0 ^ v1 ^ v2 ^ v3.  Loads are written byte by byte so the result does not
# depend on the host's byte order (the compiler turns them into one load on
# little-endian machines).  The pure twin is passtcore_py.flowtable.siphash24.
from libc.stdint cimport uint8_t, uint64_t


cdef inline uint64_t sip_load_le64(const uint8_t* p) noexcept nogil:
    return (<uint64_t>p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16)
            | (<uint64_t>p[3] << 24) | (<uint64_t>p[4] << 32) | (<uint64_t>p[5] << 40)
            | (<uint64_t>p[6] << 48) | (<uint64_t>p[7] << 56))


cdef inline uint64_t sip_rotl(uint64_t x, int b) noexcept nogil:
    return (x << b) | (x >> (64 - b))


ctypedef struct SipState:
    uint64_t v0, v1, v2, v3


cdef inline void sip_rounds(SipState* s, int n) noexcept nogil:
    """n SipRounds.  Inlined with constant n, so the state stays in registers."""
    cdef int r
    for r in range(n):
        s.v0 += s.v1; s.v1 = sip_rotl(s.v1, 13); s.v1 ^= s.v0; s.v0 = sip_rotl(s.v0, 32)
        s.v2 += s.v3; s.v3 = sip_rotl(s.v3, 16); s.v3 ^= s.v2
        s.v0 += s.v3; s.v3 = sip_rotl(s.v3, 21); s.v3 ^= s.v0
        s.v2 += s.v1; s.v1 = sip_rotl(s.v1, 17); s.v1 ^= s.v2; s.v2 = sip_rotl(s.v2, 32)


cdef inline void sip_compress(SipState* s, uint64_t m) noexcept nogil:
    """Absorb one message word (c = 2 rounds)."""
    s.v3 ^= m
    sip_rounds(s, 2)
    s.v0 ^= m


cdef inline uint64_t siphash24_raw(uint64_t k0, uint64_t k1,
                                   const uint8_t* data, size_t n) noexcept nogil:
    cdef SipState s
    cdef uint64_t m
    cdef size_t off = 0
    cdef size_t end = n - (n & 7)
    cdef size_t t
    s.v0 = k0 ^ 0x736f6d6570736575ULL
    s.v1 = k1 ^ 0x646f72616e646f6dULL
    s.v2 = k0 ^ 0x6c7967656e657261ULL
    s.v3 = k1 ^ 0x7465646279746573ULL
    while off < end:
        sip_compress(&s, sip_load_le64(data + off))
        off += 8
    # last block: remaining bytes, message length in the top byte
    m = (<uint64_t>(n & 0xff)) << 56
    t = n & 7
    while t > 0:
        t -= 1
        m |= (<uint64_t>data[end + t]) << (8 * t)
    sip_compress(&s, m)
    # finalisation: d = 4 rounds
    s.v2 ^= 0xff
    sip_rounds(&s, 4)
    return s.v0 ^ s.v1 ^ s.v2 ^ s.v3
