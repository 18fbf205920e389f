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


cdef inline uint64_t siphash24_raw(uint64_t k0, uint64_t k1,
                                   const uint8_t* data, size_t n) noexcept nogil:
    cdef uint64_t v0 = k0 ^ 0x736f6d6570736575ULL
    cdef uint64_t v1 = k1 ^ 0x646f72616e646f6dULL
    cdef uint64_t v2 = k0 ^ 0x6c7967656e657261ULL
    cdef uint64_t v3 = k1 ^ 0x7465646279746573ULL
    cdef uint64_t m
    cdef size_t off = 0
    cdef size_t end = n - (n & 7)
    cdef size_t t
    cdef int r
    while off < end:
        m = sip_load_le64(data + off)
        v3 ^= m
        for r in range(2):
            v0 += v1; v1 = sip_rotl(v1, 13); v1 ^= v0; v0 = sip_rotl(v0, 32)
            v2 += v3; v3 = sip_rotl(v3, 16); v3 ^= v2
            v0 += v3; v3 = sip_rotl(v3, 21); v3 ^= v0
            v2 += v1; v1 = sip_rotl(v1, 17); v1 ^= v2; v2 = sip_rotl(v2, 32)
        v0 ^= m
        off += 8
    # last block: remaining bytes, message length in the top byte
    m = (<uint64_t>(n & 0xff)) << 56
    t = n & 7
    while t > 0:
        t -= 1
        m |= (<uint64_t>data[end + t]) << (8 * t)
    v3 ^= m
    for r in range(2):
        v0 += v1; v1 = sip_rotl(v1, 13); v1 ^= v0; v0 = sip_rotl(v0, 32)
        v2 += v3; v3 = sip_rotl(v3, 16); v3 ^= v2
        v0 += v3; v3 = sip_rotl(v3, 21); v3 ^= v0
        v2 += v1; v1 = sip_rotl(v1, 17); v1 ^= v2; v2 = sip_rotl(v2, 32)
    v0 ^= m
    v2 ^= 0xff
    for r in range(4):
        v0 += v1; v1 = sip_rotl(v1, 13); v1 ^= v0; v0 = sip_rotl(v0, 32)
        v2 += v3; v3 = sip_rotl(v3, 16); v3 ^= v2
        v0 += v3; v3 = sip_rotl(v3, 21); v3 ^= v0
        v2 += v1; v1 = sip_rotl(v1, 17); v1 ^= v2; v2 = sip_rotl(v2, 32)
    return v0 ^ v1 ^ v2 ^ v3
