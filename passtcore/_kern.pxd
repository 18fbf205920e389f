# cython: language_level=3
# Shared nogil core of the packet kernels (_csum, _headers, _batch): the
# checksum loop, buffer access and the bounds-checked frame parser.
#
# Everything here is inline / static, compiled into each module that cimports
# it, so the three extensions stay independent (no cross-module C API).
#
# Checksum design: one's-complement sums do not depend on byte order (RFC 1071
# section 2(B)), so we sum the data as native little-endian words and swap the
# folded 16-bit result once.  The words are accumulated exactly (zero-extended
# 32-bit lanes into 64-bit AVX2 accumulators, or 64-bit words into 128-bit
# scalar accumulators, four independent chains) and folded at the end; because
# the sums are exact, "zero only for all-zero data" holds, which makes the
# canonical 16-bit value identical to the pure twin's.  The AVX2 variant is
# compiled with __attribute__((target("avx2"))) and picked at run time with
# __builtin_cpu_supports, so the extension still runs on any x86-64.
#
# Parser design: a plain C struct (PInfo) filled by cdef inline functions that
# return 0 or a reason code (index + 1 into passtcore_py.headers.REASONS);
# every read is checked against the window end and against the lengths the
# headers announce, so a bogus frame can never cause an out-of-range read.
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    #include <immintrin.h>
    #define PC_HAVE_X86 1
    #else
    #define PC_HAVE_X86 0
    #endif

    static inline uint64_t pc_add64(uint64_t a, uint64_t b) {
        uint64_t s = a + b;
        return s + (s < a);          /* end-around carry */
    }

    /* Reduce to 16 bits with end-around carries; nonzero stays nonzero. */
    static inline uint32_t pc_fold(uint64_t s) {
        s = (s & 0xffffffffULL) + (s >> 32);
        s = (s & 0xffffffffULL) + (s >> 32);
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        return (uint32_t)s;
    }

    static inline uint64_t pc_fold128(unsigned __int128 a) {
        return pc_add64((uint64_t)a, (uint64_t)(a >> 64));
    }

    /* Native-endian sum of p[0..n), end-around carried into 64 bits. */
    static inline uint64_t pc_sum_scalar(const uint8_t *p, size_t n) {
        unsigned __int128 a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        uint64_t w0, w1, w2, w3, s;
        while (n >= 32) {
            memcpy(&w0, p, 8); memcpy(&w1, p + 8, 8);
            memcpy(&w2, p + 16, 8); memcpy(&w3, p + 24, 8);
            a0 += w0; a1 += w1; a2 += w2; a3 += w3;
            p += 32; n -= 32;
        }
        while (n >= 8) {
            memcpy(&w0, p, 8);
            a0 += w0;
            p += 8; n -= 8;
        }
        s = pc_add64(pc_add64(pc_fold128(a0), pc_fold128(a1)),
                     pc_add64(pc_fold128(a2), pc_fold128(a3)));
        if (n >= 4) { uint32_t w; memcpy(&w, p, 4); s = pc_add64(s, w); p += 4; n -= 4; }
        if (n >= 2) { uint16_t w; memcpy(&w, p, 2); s = pc_add64(s, w); p += 2; n -= 2; }
        if (n) {
    #if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            s = pc_add64(s, p[0]);
    #else
            s = pc_add64(s, (uint64_t)p[0] << 8);
    #endif
        }
        return s;
    }

    #if PC_HAVE_X86
    /* n is a multiple of 128 and at most 2**30 (lanes cannot overflow). */
    __attribute__((target("avx2")))
    static uint64_t pc_sum_avx2(const uint8_t *p, size_t n) {
        const __m256i z = _mm256_setzero_si256();
        __m256i a0 = z, a1 = z, a2 = z, a3 = z, a4 = z, a5 = z, a6 = z, a7 = z;
        while (n) {
            __m256i v0 = _mm256_loadu_si256((const __m256i *)p);
            __m256i v1 = _mm256_loadu_si256((const __m256i *)(p + 32));
            __m256i v2 = _mm256_loadu_si256((const __m256i *)(p + 64));
            __m256i v3 = _mm256_loadu_si256((const __m256i *)(p + 96));
            a0 = _mm256_add_epi64(a0, _mm256_unpacklo_epi32(v0, z));
            a1 = _mm256_add_epi64(a1, _mm256_unpackhi_epi32(v0, z));
            a2 = _mm256_add_epi64(a2, _mm256_unpacklo_epi32(v1, z));
            a3 = _mm256_add_epi64(a3, _mm256_unpackhi_epi32(v1, z));
            a4 = _mm256_add_epi64(a4, _mm256_unpacklo_epi32(v2, z));
            a5 = _mm256_add_epi64(a5, _mm256_unpackhi_epi32(v2, z));
            a6 = _mm256_add_epi64(a6, _mm256_unpacklo_epi32(v3, z));
            a7 = _mm256_add_epi64(a7, _mm256_unpackhi_epi32(v3, z));
            p += 128; n -= 128;
        }
        /* each lane < 2**57: these additions are exact */
        a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
        a4 = _mm256_add_epi64(_mm256_add_epi64(a4, a5), _mm256_add_epi64(a6, a7));
        a0 = _mm256_add_epi64(a0, a4);
        uint64_t l[4];
        _mm256_storeu_si256((__m256i *)l, a0);
        return pc_add64(pc_add64(l[0], l[1]), pc_add64(l[2], l[3]));
    }

    static int pc_avx2 = -1;
    static inline int pc_use_avx2(void) {
        if (pc_avx2 < 0) {
            __builtin_cpu_init();
            pc_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
        }
        return pc_avx2;
    }
    #else
    static inline int pc_use_avx2(void) { return 0; }
    static uint64_t pc_sum_avx2(const uint8_t *p, size_t n) { (void)p; (void)n; return 0; }
    #endif

    /* 0 = auto, 1 = force scalar (for benchmarks and differential tests). */
    static int pc_force_scalar = 0;

    /* Canonical one's-complement sum of p[0..n) (big-endian words) plus init. */
    static inline uint32_t pc_csum(const uint8_t *p, size_t n, uint64_t init) {
        uint64_t s = 0;
        if (n >= 256 && !pc_force_scalar && pc_use_avx2()) {
            size_t done = n & ~(size_t)127;
            while (done) {
                size_t chunk = done > ((size_t)1 << 30) ? ((size_t)1 << 30) : done;
                s = pc_add64(s, pc_sum_avx2(p, chunk));
                p += chunk; n -= chunk; done -= chunk;
            }
        }
        s = pc_add64(s, pc_sum_scalar(p, n));
        uint32_t f = pc_fold(s);
    #if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        f = ((f & 0xff) << 8) | (f >> 8);
    #endif
        return init ? pc_fold(pc_add64(f, init)) : f;
    }

    static inline uint32_t pc_load16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }
    static inline uint32_t pc_load32(const uint8_t *p) {
        return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    }
    static inline void pc_store16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
    static inline void pc_store32(uint8_t *p, uint32_t v) {
        p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
    }

    /* RFC 1624 eq. 3 over an even-length field: HC' = ~(~HC + sum(~m) + sum(m')). */
    static inline uint32_t pc_update_bytes(uint32_t ck, const uint8_t *old, const uint8_t *new_, size_t n) {
        uint64_t s = (~ck) & 0xffff;
        size_t i;
        for (i = 0; i + 1 < n; i += 2) {
            s += (~pc_load16(old + i)) & 0xffff;
            s += pc_load16(new_ + i);
        }
        return (~pc_fold(s)) & 0xffff;
    }
    static inline uint32_t pc_update16(uint32_t ck, uint32_t old, uint32_t new_) {
        uint64_t s = (uint64_t)((~ck) & 0xffff) + ((~old) & 0xffff) + (new_ & 0xffff);
        return (~pc_fold(s)) & 0xffff;
    }
    static inline uint32_t pc_update32(uint32_t ck, uint32_t old, uint32_t new_) {
        uint64_t s = (uint64_t)((~ck) & 0xffff) + ((~(old >> 16)) & 0xffff) + ((~old) & 0xffff)
                     + (new_ >> 16) + (new_ & 0xffff);
        return (~pc_fold(s)) & 0xffff;
    }
    """
    uint64_t pc_add64(uint64_t a, uint64_t b) nogil
    uint32_t pc_fold(uint64_t s) nogil
    uint32_t pc_csum(const uint8_t* p, size_t n, uint64_t init) nogil
    uint64_t pc_sum_scalar(const uint8_t* p, size_t n) nogil
    int pc_use_avx2() nogil
    int pc_force_scalar
    uint32_t pc_load16(const uint8_t* p) nogil
    uint32_t pc_load32(const uint8_t* p) nogil
    void pc_store16(uint8_t* p, uint32_t v) nogil
    void pc_store32(uint8_t* p, uint32_t v) nogil
    uint32_t pc_update_bytes(uint32_t ck, const uint8_t* old, const uint8_t* new_, size_t n) nogil
    uint32_t pc_update16(uint32_t ck, uint32_t old, uint32_t new_) nogil
    uint32_t pc_update32(uint32_t ck, uint32_t old, uint32_t new_) nogil


# -- reason codes (index + 1 into passtcore_py.headers.REASONS; keep in sync) ----------
cdef enum:
    E_OK = 0
    E_BAD_BOUNDS = 1
    E_TRUNC_ETH = 2
    E_TRUNC_VLAN = 3
    E_TRUNC_ARP = 4
    E_BAD_ARP = 5
    E_TRUNC_IPV4 = 6
    E_BAD_IP_VERSION = 7
    E_BAD_IHL = 8
    E_BAD_IP_LENGTH = 9
    E_TRUNC_IPV6 = 10
    E_TRUNC_IPV6_EXT = 11
    E_BAD_IPV6_EXT = 12
    E_TRUNC_TCP = 13
    E_BAD_TCP_OFFSET = 14
    E_BAD_TCP_OPTION = 15
    E_TRUNC_UDP = 16
    E_BAD_UDP_LENGTH = 17
    E_TRUNC_ICMP = 18
    E_BAD_ADDRESS = 19
    E_NOT_IP = 20


ctypedef struct PInfo:
    Py_ssize_t eth_off          # frame start (MACs)
    int ethertype
    int vlan
    Py_ssize_t l3_offset
    int ip_version
    Py_ssize_t addr_off         # offset of the source address (-1: none)
    int addr_len                # 4 or 16 (0: none)
    int ttl
    Py_ssize_t l3_len
    int is_fragment
    int l4_proto
    Py_ssize_t l4_offset
    Py_ssize_t l4_len
    int sport
    int dport
    Py_ssize_t payload_offset
    Py_ssize_t payload_len
    uint32_t tcp_seq
    uint32_t tcp_ack
    int tcp_flags
    int tcp_window
    int tcp_mss
    int tcp_wscale
    int tcp_sack_ok
    int64_t tcp_ts_val
    int64_t tcp_ts_ecr
    int icmp_type
    int icmp_code
    int icmp_id
    int icmp_seq
    int arp_op


cdef inline bint window_ok(Py_ssize_t size, Py_ssize_t offset, Py_ssize_t* length) noexcept nogil:
    """The window rule of the single-buffer kernels: ``*length == -1`` means "to the end
    of the buffer" (resolved in place); True when [offset, offset + *length) fits in size.
    (Batches have no -1 rule: _batch checks its explicit lengths itself.)"""
    if length[0] == -1:
        length[0] = size - offset
    return not (offset < 0 or length[0] < 0 or offset > size or length[0] > size - offset)


cdef inline void pinfo_init(PInfo* i) noexcept nogil:
    i.eth_off = -1
    i.ethertype = 0
    i.vlan = -1
    i.l3_offset = -1
    i.ip_version = 0
    i.addr_off = -1
    i.addr_len = 0
    i.ttl = 0
    i.l3_len = 0
    i.is_fragment = 0
    i.l4_proto = -1
    i.l4_offset = -1
    i.l4_len = 0
    i.sport = 0
    i.dport = 0
    i.payload_offset = -1
    i.payload_len = 0
    i.tcp_seq = 0
    i.tcp_ack = 0
    i.tcp_flags = 0
    i.tcp_window = 0
    i.tcp_mss = -1
    i.tcp_wscale = -1
    i.tcp_sack_ok = 0
    i.tcp_ts_val = -1
    i.tcp_ts_ecr = -1
    i.icmp_type = 0
    i.icmp_code = 0
    i.icmp_id = 0
    i.icmp_seq = 0
    i.arp_op = 0


cdef inline int p_ethernet(const uint8_t* b, Py_ssize_t off, Py_ssize_t end, PInfo* i) noexcept nogil:
    cdef int et
    if end - off < 14:
        return E_TRUNC_ETH
    i.eth_off = off
    et = pc_load16(b + off + 12)
    i.l3_offset = off + 14
    if et == 0x8100 or et == 0x88A8:
        if end - off < 18:
            return E_TRUNC_VLAN
        i.vlan = pc_load16(b + off + 14) & 0x0FFF
        et = pc_load16(b + off + 16)
        i.l3_offset = off + 18
    i.ethertype = et
    return E_OK


cdef inline int p_arp(const uint8_t* b, Py_ssize_t off, Py_ssize_t end, PInfo* i) noexcept nogil:
    if end - off < 28:
        return E_TRUNC_ARP
    if pc_load16(b + off) != 1 or pc_load16(b + off + 2) != 0x0800 or b[off + 4] != 6 or b[off + 5] != 4:
        return E_BAD_ARP
    i.l3_offset = off
    i.l3_len = 28
    i.arp_op = pc_load16(b + off + 6)
    return E_OK


cdef inline int p_ipv4(const uint8_t* b, Py_ssize_t off, Py_ssize_t end, PInfo* i) noexcept nogil:
    cdef Py_ssize_t avail = end - off
    cdef Py_ssize_t ihl, tot
    if avail < 20:
        return E_TRUNC_IPV4
    if b[off] >> 4 != 4:
        return E_BAD_IP_VERSION
    ihl = (b[off] & 0x0F) * 4
    if ihl < 20:
        return E_BAD_IHL
    if ihl > avail:
        return E_TRUNC_IPV4
    tot = pc_load16(b + off + 2)
    if tot < ihl or tot > avail:
        return E_BAD_IP_LENGTH
    i.l3_offset = off
    i.ip_version = 4
    i.addr_off = off + 12
    i.addr_len = 4
    i.ttl = b[off + 8]
    i.l3_len = tot
    i.is_fragment = (pc_load16(b + off + 6) & 0x3FFF) != 0
    i.l4_proto = b[off + 9]
    i.l4_offset = off + ihl
    i.l4_len = tot - ihl
    i.payload_offset = i.l4_offset
    i.payload_len = i.l4_len
    return E_OK


cdef inline int p_ipv6(const uint8_t* b, Py_ssize_t off, Py_ssize_t end, PInfo* i) noexcept nogil:
    cdef Py_ssize_t avail = end - off
    cdef Py_ssize_t plen, pend, p, hl
    cdef int nh, n, frag = 0
    if avail < 40:
        return E_TRUNC_IPV6
    if b[off] >> 4 != 6:
        return E_BAD_IP_VERSION
    plen = pc_load16(b + off + 4)
    if 40 + plen > avail:
        return E_BAD_IP_LENGTH
    i.l3_offset = off
    i.ip_version = 6
    i.addr_off = off + 8
    i.addr_len = 16
    i.ttl = b[off + 7]
    i.l3_len = 40 + plen
    nh = b[off + 6]
    pend = off + 40 + plen
    p = off + 40
    n = 0
    while True:
        if nh == 0 or nh == 43 or nh == 60:
            if n == 8:
                return E_BAD_IPV6_EXT
            if nh == 0 and n != 0:
                return E_BAD_IPV6_EXT
            if p + 2 > pend:
                return E_TRUNC_IPV6_EXT
            hl = (<Py_ssize_t>b[p + 1] + 1) * 8
            if p + hl > pend:
                return E_TRUNC_IPV6_EXT
            nh = b[p]
            p += hl
        elif nh == 44:
            if n == 8:
                return E_BAD_IPV6_EXT
            if p + 8 > pend:
                return E_TRUNC_IPV6_EXT
            nh = b[p]
            hl = pc_load16(b + p + 2)
            p += 8
            if hl & 0xFFF9:
                frag = 1
                break
        else:
            break
        n += 1
    i.is_fragment = frag
    i.l4_proto = nh
    i.l4_offset = p
    i.l4_len = pend - p
    i.payload_offset = p
    i.payload_len = pend - p
    return E_OK


cdef inline int p_tcp_options(const uint8_t* b, Py_ssize_t off, Py_ssize_t end, PInfo* i) noexcept nogil:
    cdef Py_ssize_t p = off
    cdef int kind, olen
    while p < end:
        kind = b[p]
        if kind == 0:
            break
        if kind == 1:
            p += 1
            continue
        if p + 1 >= end:
            return E_BAD_TCP_OPTION
        olen = b[p + 1]
        if olen < 2 or p + olen > end:
            return E_BAD_TCP_OPTION
        if kind == 2:
            if olen != 4:
                return E_BAD_TCP_OPTION
            i.tcp_mss = pc_load16(b + p + 2)
        elif kind == 3:
            if olen != 3:
                return E_BAD_TCP_OPTION
            i.tcp_wscale = b[p + 2]
        elif kind == 4:
            if olen != 2:
                return E_BAD_TCP_OPTION
            i.tcp_sack_ok = 1
        elif kind == 8:
            if olen != 10:
                return E_BAD_TCP_OPTION
            i.tcp_ts_val = pc_load32(b + p + 2)
            i.tcp_ts_ecr = pc_load32(b + p + 6)
        p += olen
    return E_OK


cdef inline int p_tcp(const uint8_t* b, Py_ssize_t off, Py_ssize_t end, PInfo* i) noexcept nogil:
    cdef Py_ssize_t l4len = end - off
    cdef Py_ssize_t hl
    cdef int rc
    if l4len < 20:
        return E_TRUNC_TCP
    hl = (b[off + 12] >> 4) * 4
    if hl < 20:
        return E_BAD_TCP_OFFSET
    if hl > l4len:
        return E_TRUNC_TCP
    rc = p_tcp_options(b, off + 20, off + hl, i)
    if rc:
        return rc
    i.l4_offset = off
    i.l4_len = l4len
    i.sport = pc_load16(b + off)
    i.dport = pc_load16(b + off + 2)
    i.tcp_seq = pc_load32(b + off + 4)
    i.tcp_ack = pc_load32(b + off + 8)
    i.tcp_flags = b[off + 13]
    i.tcp_window = pc_load16(b + off + 14)
    i.payload_offset = off + hl
    i.payload_len = l4len - hl
    return E_OK


cdef inline int p_udp(const uint8_t* b, Py_ssize_t off, Py_ssize_t end, PInfo* i) noexcept nogil:
    cdef Py_ssize_t l4len = end - off
    cdef Py_ssize_t ulen
    if l4len < 8:
        return E_TRUNC_UDP
    ulen = pc_load16(b + off + 4)
    if ulen < 8 or ulen > l4len:
        return E_BAD_UDP_LENGTH
    i.l4_offset = off
    i.l4_len = ulen
    i.sport = pc_load16(b + off)
    i.dport = pc_load16(b + off + 2)
    i.payload_offset = off + 8
    i.payload_len = ulen - 8
    return E_OK


cdef inline int p_icmp(const uint8_t* b, Py_ssize_t off, Py_ssize_t end, PInfo* i, int ver) noexcept nogil:
    cdef Py_ssize_t l4len = end - off
    cdef int t
    if l4len < 8:
        return E_TRUNC_ICMP
    t = b[off]
    i.l4_offset = off
    i.l4_len = l4len
    i.icmp_type = t
    i.icmp_code = b[off + 1]
    i.icmp_id = pc_load16(b + off + 4)
    i.icmp_seq = pc_load16(b + off + 6)
    if (ver == 4 and (t == 0 or t == 8)) or (ver == 6 and (t == 128 or t == 129)):
        i.sport = i.icmp_id
    i.payload_offset = off + 8
    i.payload_len = l4len - 8
    return E_OK


cdef inline int p_l4(const uint8_t* b, PInfo* i) noexcept nogil:
    """L4 of an already parsed IP header (skipped for fragments)."""
    cdef int p = i.l4_proto
    cdef Py_ssize_t o = i.l4_offset
    if i.is_fragment:
        return E_OK
    if p == 6:
        return p_tcp(b, o, o + i.l4_len, i)
    if p == 17:
        return p_udp(b, o, o + i.l4_len, i)
    if (p == 1 and i.ip_version == 4) or (p == 58 and i.ip_version == 6):
        return p_icmp(b, o, o + i.l4_len, i, i.ip_version)
    return E_OK


cdef inline int p_frame(const uint8_t* b, Py_ssize_t off, Py_ssize_t end, PInfo* i) noexcept nogil:
    cdef int rc
    pinfo_init(i)
    rc = p_ethernet(b, off, end, i)
    if rc:
        return rc
    if i.ethertype == 0x0800:
        rc = p_ipv4(b, i.l3_offset, end, i)
    elif i.ethertype == 0x86DD:
        rc = p_ipv6(b, i.l3_offset, end, i)
    elif i.ethertype == 0x0806:
        return p_arp(b, i.l3_offset, end, i)
    else:
        return E_OK
    if rc:
        return rc
    return p_l4(b, i)


cdef inline int p_ip(const uint8_t* b, Py_ssize_t off, Py_ssize_t end, PInfo* i) noexcept nogil:
    """IP header at off (version from its first nibble), to the window end."""
    pinfo_init(i)
    if off < 0 or off >= end:
        return E_BAD_BOUNDS
    if b[off] >> 4 == 4:
        return p_ipv4(b, off, end, i)
    if b[off] >> 4 == 6:
        return p_ipv6(b, off, end, i)
    return E_BAD_IP_VERSION


# -- checksums over a parsed frame -----------------------------------------------------

cdef inline int l4_csum_off(const PInfo* i) noexcept nogil:
    """Offset of the L4 checksum field inside the L4 header, -1 if none."""
    cdef int p = i.l4_proto
    if i.is_fragment or i.ip_version == 0:
        return -1
    if p == 6:
        return 16 if i.l4_len >= 20 else -1
    if p == 17:
        return 6 if i.l4_len >= 8 else -1
    if (p == 1 and i.ip_version == 4) or (p == 58 and i.ip_version == 6):
        return 2 if i.l4_len >= 4 else -1
    return -1


cdef inline uint32_t pseudo_sum(const uint8_t* b, const PInfo* i) noexcept nogil:
    """Pseudo-header partial sum for the parsed frame (0 for ICMPv4)."""
    cdef uint64_t s
    cdef uint32_t l4len = <uint32_t>i.l4_len
    if i.l4_proto == 1 and i.ip_version == 4:
        return 0
    s = pc_csum(b + i.addr_off, 2 * i.addr_len, 0)
    s += (l4len >> 16) + (l4len & 0xFFFF) + <uint32_t>i.l4_proto
    return pc_fold(s)


cdef inline int ip_l4_fill(uint8_t* b, const PInfo* i, bint do_l4) noexcept nogil:
    """Recompute the IPv4 header and (if do_l4) the L4 checksum in place."""
    cdef Py_ssize_t l3 = i.l3_offset
    cdef int co
    cdef uint32_t c
    if i.ip_version == 4:
        b[l3 + 10] = 0
        b[l3 + 11] = 0
        c = (~pc_csum(b + l3, (b[l3] & 0x0F) * 4, 0)) & 0xFFFF
        pc_store16(b + l3 + 10, c)
    if not do_l4:
        return 0
    co = l4_csum_off(i)
    if co < 0:
        return 0
    b[i.l4_offset + co] = 0
    b[i.l4_offset + co + 1] = 0
    c = (~pc_csum(b + i.l4_offset, i.l4_len, pseudo_sum(b, i))) & 0xFFFF
    if c == 0 and i.l4_proto == 17:
        c = 0xFFFF
    pc_store16(b + i.l4_offset + co, c)
    return 0


cdef inline bint frame_ok(const uint8_t* b, const PInfo* i) noexcept nogil:
    """IPv4 header + L4 checksums of a parsed frame verify."""
    cdef Py_ssize_t l3 = i.l3_offset
    cdef int co
    if i.ip_version == 4:
        if pc_csum(b + l3, (b[l3] & 0x0F) * 4, 0) != 0xFFFF:
            return False
    co = l4_csum_off(i)
    if co < 0:
        return True
    if i.l4_proto == 17 and i.ip_version == 4 and b[i.l4_offset + 6] == 0 and b[i.l4_offset + 7] == 0:
        return True
    return pc_csum(b + i.l4_offset, i.l4_len, pseudo_sum(b, i)) == 0xFFFF


# -- in-place rewrites shared by _headers and _batch -------------------------------------

cdef inline uint8_t* wbuf(object buf, Py_buffer* v) except NULL:
    """Acquire a writable buffer; TypeError for read-only ones (like the twin)."""
    PyObject_GetBuffer(buf, v, PyBUF_SIMPLE)
    if v.readonly:
        PyBuffer_Release(v)
        raise TypeError("buffer is read-only")
    return <uint8_t*>v.buf


cdef inline Py_ssize_t pseudo_l4_field(const PInfo* i) noexcept nogil:
    """Absolute offset of an L4 checksum covering the pseudo-header (TCP, UDP,
    ICMPv6; lengths from the IP header only), or -1."""
    cdef int p = i.l4_proto
    if i.is_fragment:
        return -1
    if p == 6 and i.l4_len >= 20:
        return i.l4_offset + 16
    if p == 17 and i.l4_len >= 8:
        return i.l4_offset + 6
    if p == 58 and i.ip_version == 6 and i.l4_len >= 4:
        return i.l4_offset + 2
    return -1


cdef inline void update_field(uint8_t* b, Py_ssize_t coff, const uint8_t* old, const uint8_t* new,
                              Py_ssize_t n, bint udp) noexcept nogil:
    """RFC 1624 update of the checksum at coff for a field old -> new (n bytes).
    UDP: a zero checksum ("none") stays zero, a computed zero becomes 0xFFFF."""
    cdef uint32_t ck = pc_load16(b + coff)
    if udp and ck == 0:
        return
    ck = pc_update_bytes(ck, old, new, n)
    if udp and ck == 0:
        ck = 0xFFFF
    pc_store16(b + coff, ck)


cdef inline void rewrite_addr(uint8_t* b, const PInfo* i, Py_ssize_t o, const uint8_t* a) noexcept nogil:
    """Replace the address at o (source or destination of the IP header parsed
    into i) by a, updating the IPv4 header and pseudo-header L4 checksums."""
    cdef int alen = i.addr_len
    cdef Py_ssize_t coff = pseudo_l4_field(i)
    if alen == 4:
        pc_store16(b + i.l3_offset + 10,
                   pc_update_bytes(pc_load16(b + i.l3_offset + 10), b + o, a, 4))
    if coff >= 0:
        update_field(b, coff, b + o, a, alen, i.l4_proto == 17)
    memcpy(b + o, a, alen)


# numpy is imported on first use, not at import time: the daemon loads the
# kernels but never calls an array API, and numpy would cost it ~15 MB resident
# (tests/daemon/test_idle_memory.py). Typed memoryviews do not need it. Called
# once per array-API call (never per packet), so the import is a sys.modules hit.
cdef inline object numpy_module():
    import numpy
    return numpy
