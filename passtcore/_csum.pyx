# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Internet checksums (RFC 1071 / RFC 1624), Cython kernel.

Same API and results as the pure twin ``passtcore_py.csum`` (see its
docstring for the canonical partial-sum convention).  The summing loop lives
in ``_kern.pxd``: exact accumulation of native words (AVX2 lanes when the CPU
has them, else four 128-bit scalar chains), one fold and one byte swap at the
end.  Buffers are taken through the buffer protocol (bytes, bytearray, numpy
uint8, mmap, memoryview) with one ``PyObject_GetBuffer`` per call; the sum
itself runs without the GIL for large buffers.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from passtcore._kern cimport (
    E_OK, PInfo, frame_ok, ip_l4_fill, p_frame, pc_csum, pc_fold, pc_force_scalar,
    pc_update16, pc_update32, pc_update_bytes, pc_use_avx2, wbuf, window_ok,
)
from passtcore_py.headers import REASONS, ParseError

__all__ = [
    "csum_partial", "csum_fold", "inet_checksum", "pseudo_sum_v4", "pseudo_sum_v6",
    "ipv4_header_checksum", "l4_checksum", "fill_checksums", "verify_frame",
    "csum_update16", "csum_update32", "csum_update_bytes", "csum_add",
]


cdef inline Py_ssize_t _clip(Py_ssize_t n, Py_ssize_t offset, Py_ssize_t length) except -2:
    if not window_ok(n, offset, &length):
        raise ValueError(f"range out of bounds: offset={offset} length={length} size={n}")
    return length


cdef long long _partial(object buf, Py_ssize_t offset, Py_ssize_t length, uint64_t init) except -1:
    cdef Py_buffer v
    cdef uint32_t r
    PyObject_GetBuffer(buf, &v, PyBUF_SIMPLE)
    try:
        length = _clip(v.len, offset, length)
        if length > 16384:
            with nogil:
                r = pc_csum(<const uint8_t*>v.buf + offset, length, init)
        else:
            r = pc_csum(<const uint8_t*>v.buf + offset, length, init)
    finally:
        PyBuffer_Release(&v)
    return r


def csum_partial(buf, Py_ssize_t offset=0, Py_ssize_t length=-1, uint64_t init=0):
    """One's-complement sum of ``buf[offset:offset+length]`` plus ``init`` (not complemented)."""
    return _partial(buf, offset, length, init)


def csum_add(uint64_t a, uint64_t b):
    """One's-complement addition of two partial sums (canonical result)."""
    cdef uint64_t s = (a & 0xFFFFFFFF) + (a >> 32) + (b & 0xFFFFFFFF) + (b >> 32)
    return pc_fold(s)


def csum_fold(uint64_t sum32):
    """Fold a partial sum to 16 bits and complement it: the checksum field value."""
    return (~pc_fold(sum32)) & 0xFFFF


def inet_checksum(buf, Py_ssize_t offset=0, Py_ssize_t length=-1):
    """``csum_fold(csum_partial(buf, offset, length))``: the checksum field value."""
    return (~<uint32_t>_partial(buf, offset, length, 0)) & 0xFFFF


cdef inline const uint8_t* _addr(object a, Py_ssize_t n) except NULL:
    if not isinstance(a, bytes):
        raise TypeError("address must be bytes")
    if len(<bytes>a) != n:
        raise ValueError(f"address must be {n} bytes, got {len(<bytes>a)}")
    return <const uint8_t*><char*>a


cdef uint32_t _pseudo(const uint8_t* s, const uint8_t* d, int alen, uint32_t proto, uint32_t l4len) noexcept:
    cdef uint64_t x = pc_csum(s, alen, 0)
    x += pc_csum(d, alen, 0)
    if alen == 4:
        x += (proto & 0xFF) + (l4len & 0xFFFF)
    else:
        x += (proto & 0xFF) + (l4len >> 16) + (l4len & 0xFFFF)
    return pc_fold(x)


def pseudo_sum_v4(src, dst, int proto, long long l4len):
    """Partial sum of the IPv4 pseudo-header ``src dst 0 proto l4len``."""
    src = src if isinstance(src, bytes) else bytes(src)
    dst = dst if isinstance(dst, bytes) else bytes(dst)
    return _pseudo(_addr(src, 4), _addr(dst, 4), 4, <uint32_t>proto, <uint32_t>l4len)


def pseudo_sum_v6(src, dst, int proto, long long l4len):
    """Partial sum of the IPv6 pseudo-header ``src dst len32 0 0 0 nh``."""
    src = src if isinstance(src, bytes) else bytes(src)
    dst = dst if isinstance(dst, bytes) else bytes(dst)
    return _pseudo(_addr(src, 16), _addr(dst, 16), 16, <uint32_t>proto, <uint32_t>l4len)


def ipv4_header_checksum(buf, Py_ssize_t l3off):
    """IPv4 header checksum of the header at ``l3off``, the checksum field taken as 0."""
    cdef Py_buffer v
    cdef const uint8_t* b
    cdef Py_ssize_t ihl
    cdef uint32_t s
    PyObject_GetBuffer(buf, &v, PyBUF_SIMPLE)
    try:
        b = <const uint8_t*>v.buf
        if l3off < 0 or l3off + 20 > v.len:
            raise ValueError("truncated IPv4 header")
        ihl = (b[l3off] & 0x0F) * 4
        if b[l3off] >> 4 != 4 or ihl < 20 or l3off + ihl > v.len:
            raise ValueError("bad IPv4 header")
        s = pc_csum(b + l3off, 10, 0)
        s = pc_csum(b + l3off + 12, ihl - 12, s)
    finally:
        PyBuffer_Release(&v)
    return (~s) & 0xFFFF


def l4_checksum(buf, Py_ssize_t l3off, Py_ssize_t l4off, Py_ssize_t l4len, int proto):
    """Checksum of the L4 segment at ``l4off`` (its checksum field taken as 0); UDP 0 -> 0xFFFF."""
    cdef Py_buffer v
    cdef const uint8_t* b
    cdef int coff, ver
    cdef uint32_t s = 0, c
    PyObject_GetBuffer(buf, &v, PyBUF_SIMPLE)
    try:
        b = <const uint8_t*>v.buf
        _clip(v.len, l4off, l4len)
        if l4len == -1:
            raise ValueError("l4len must be given")
        if proto == 6:
            coff = 16
        elif proto == 17:
            coff = 6
        elif proto == 1 or proto == 58:
            coff = 2
        else:
            raise ValueError(f"no checksum for protocol {proto}")
        if l4len < coff + 2:
            raise ValueError("L4 segment too short for its checksum field")
        if proto != 1:
            if l3off < 0 or l3off >= v.len:
                raise ValueError("truncated IP header")
            ver = b[l3off] >> 4
            if ver == 4:
                if l3off + 20 > v.len:
                    raise ValueError("truncated IPv4 header")
                s = _pseudo(b + l3off + 12, b + l3off + 16, 4, proto, <uint32_t>l4len)
            elif ver == 6:
                if l3off + 40 > v.len:
                    raise ValueError("truncated IPv6 header")
                s = _pseudo(b + l3off + 8, b + l3off + 24, 16, proto, <uint32_t>l4len)
            else:
                raise ValueError(f"not an IP header (version {ver})")
        s = pc_csum(b + l4off, coff, s)
        s = pc_csum(b + l4off + coff + 2, l4len - coff - 2, s)
        c = (~s) & 0xFFFF
        if proto == 17 and c == 0:
            c = 0xFFFF
    finally:
        PyBuffer_Release(&v)
    return c


def fill_checksums(buf, Py_ssize_t offset=0, Py_ssize_t length=-1):
    """Set the IPv4 header checksum and the L4 checksum of the frame at ``offset`` in place."""
    cdef Py_buffer v
    cdef PInfo info
    cdef int rc
    wbuf(buf, &v)  # TypeError for read-only buffers, like the twin
    try:
        if not window_ok(v.len, offset, &length):
            raise ParseError("bad-bounds", f"offset={offset} length={length} size={v.len}")
        rc = p_frame(<const uint8_t*>v.buf, offset, offset + length, &info)
        if rc != E_OK:
            raise ParseError(REASONS[rc - 1])
        if info.ip_version:
            ip_l4_fill(<uint8_t*>v.buf, &info, True)
    finally:
        PyBuffer_Release(&v)


def verify_frame(buf, Py_ssize_t offset=0, Py_ssize_t length=-1):
    """True when the IPv4 header checksum and the L4 checksum of the frame are correct."""
    cdef Py_buffer v
    cdef PInfo info
    cdef bint ok
    PyObject_GetBuffer(buf, &v, PyBUF_SIMPLE)
    try:
        if not window_ok(v.len, offset, &length):
            return False
        if p_frame(<const uint8_t*>v.buf, offset, offset + length, &info) != E_OK:
            return False
        ok = frame_ok(<const uint8_t*>v.buf, &info) if info.ip_version else True
    finally:
        PyBuffer_Release(&v)
    return ok


def csum_update16(uint32_t csum, uint32_t old, uint32_t new):
    """RFC 1624 eq. 3: new checksum field after a 16-bit field changes ``old`` -> ``new``."""
    return pc_update16(csum & 0xFFFF, old & 0xFFFF, new & 0xFFFF)


def csum_update32(uint32_t csum, uint64_t old, uint64_t new):
    """RFC 1624 update for a 32-bit field (two 16-bit halves)."""
    return pc_update32(csum & 0xFFFF, <uint32_t>old, <uint32_t>new)


def csum_update_bytes(uint32_t csum, old, new):
    """RFC 1624 update for a field of any even length (e.g. an address)."""
    old = old if isinstance(old, bytes) else bytes(old)
    new = new if isinstance(new, bytes) else bytes(new)
    cdef Py_ssize_t n = len(<bytes>old)
    if n != len(<bytes>new) or n & 1:
        raise ValueError("old and new must have the same even length")
    return pc_update_bytes(csum & 0xFFFF, <const uint8_t*><char*>old, <const uint8_t*><char*>new, n)


def has_avx2():
    """Whether the AVX2 summing loop is in use on this CPU."""
    return bool(pc_use_avx2())


def set_force_scalar(bint on):
    """Force the scalar loop (benchmarks / differential tests); returns the previous setting.

    Affects this module's functions only (each kernel module has its own copy
    of the summing code).
    """
    global pc_force_scalar
    cdef bint prev = pc_force_scalar
    pc_force_scalar = 1 if on else 0
    return bool(prev)
