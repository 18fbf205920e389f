# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Batch kernels over many frames of one shared buffer, Cython kernel.

Same names and results as the pure twin ``passtcore_py.batch`` (see its
docstring for the conventions: per-frame ``status`` codes, skipped-frame
counts, IPv4-mapped addresses).  Each call acquires the buffer once, takes
the offset/length/output arrays as typed memoryviews and runs one nogil loop
over the frames with the C-struct parser and checksum core of ``_kern.pxd``:
no Python object is created per frame.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from passtcore._kern cimport (
    E_BAD_BOUNDS, E_OK, PInfo, frame_ok, ip_l4_fill, numpy_module, p_frame, p_ip, pc_csum, pc_fold,
    pc_load16, pc_load32, pc_store16, pc_store32, pc_update16, pc_update32, rewrite_addr, wbuf,
)
from passtcore._headers import build_tcp as _build_tcp
from passtcore._headers import header_len as _header_len
from passtcore_py.batch import STATUS_OK, Classified, status_reason
from passtcore_py.batch import _frames, _per_frame_addr, _per_frame_int  # same coercion rules

__all__ = [
    "Classified", "STATUS_OK", "verify_checksums", "classify", "fill_checksums",
    "rewrite_addresses", "set_tcp_ack_window", "build_tcp_segments", "status_reason",
]


cdef inline int _parse(const uint8_t* b, Py_ssize_t blen, int64_t off, int64_t ln, PInfo* i) noexcept nogil:
    # no "-1 = to the end" here: every frame has an explicit length
    if off < 0 or ln < 0 or off > blen or ln > blen - off:
        return E_BAD_BOUNDS
    return p_frame(b, off, off + ln, i)


def verify_checksums(buf, offsets, lengths, out_ok):
    """out_ok[i] = frame i's IPv4 header and L4 checksums are right; returns the number bad."""
    offs, lens = _frames(offsets, lengths)
    if out_ok.shape != offs.shape:
        raise ValueError("out_ok must have one entry per frame")
    cdef const int64_t[::1] o = offs
    cdef const int64_t[::1] l = lens
    cdef uint8_t[::1] ok = out_ok.view(numpy_module().uint8)
    cdef Py_buffer v
    cdef PInfo info
    cdef Py_ssize_t i, n = o.shape[0], bad = 0
    cdef bint good
    PyObject_GetBuffer(buf, &v, PyBUF_SIMPLE)
    try:
        with nogil:
            for i in range(n):
                good = False
                if _parse(<const uint8_t*>v.buf, v.len, o[i], l[i], &info) == E_OK:
                    good = frame_ok(<const uint8_t*>v.buf, &info) if info.ip_version else True
                ok[i] = good
                bad += not good
    finally:
        PyBuffer_Release(&v)
    return bad


def classify(buf, offsets, lengths):
    """Parse every frame: protocol, 5-tuple, offsets, TCP header fields, status."""
    offs, lens = _frames(offsets, lengths)
    cdef Py_ssize_t i, n = offs.shape[0]
    out = Classified(n)
    cdef const int64_t[::1] o = offs
    cdef const int64_t[::1] l = lens
    cdef int16_t[::1] status = out.status
    cdef int32_t[::1] ethertype = out.ethertype
    cdef uint8_t[::1] ipv = out.ip_version
    cdef int16_t[::1] proto = out.proto
    cdef uint8_t[::1] frag = out.is_fragment.view(numpy_module().uint8)
    cdef uint8_t[:, ::1] src = out.src
    cdef uint8_t[:, ::1] dst = out.dst
    cdef int32_t[::1] sport = out.sport
    cdef int32_t[::1] dport = out.dport
    cdef int64_t[::1] l3o = out.l3_offset
    cdef int64_t[::1] l4o = out.l4_offset
    cdef int64_t[::1] l4l = out.l4_len
    cdef int64_t[::1] po = out.payload_offset
    cdef int64_t[::1] pl = out.payload_len
    cdef uint8_t[::1] flags = out.tcp_flags
    cdef uint32_t[::1] seq = out.tcp_seq
    cdef uint32_t[::1] ack = out.tcp_ack
    cdef uint16_t[::1] win = out.tcp_window
    cdef Py_buffer v
    cdef PInfo info
    cdef int rc
    cdef const uint8_t* b
    PyObject_GetBuffer(buf, &v, PyBUF_SIMPLE)
    try:
        b = <const uint8_t*>v.buf
        with nogil:
            for i in range(n):
                rc = _parse(b, v.len, o[i], l[i], &info)
                if rc != E_OK:
                    status[i] = rc
                    continue
                ethertype[i] = info.ethertype
                ipv[i] = info.ip_version
                l3o[i] = info.l3_offset
                if info.ip_version == 0:
                    continue
                proto[i] = info.l4_proto
                frag[i] = info.is_fragment
                if info.ip_version == 4:
                    src[i, 10] = 0xFF
                    src[i, 11] = 0xFF
                    dst[i, 10] = 0xFF
                    dst[i, 11] = 0xFF
                    memcpy(&src[i, 12], b + info.addr_off, 4)
                    memcpy(&dst[i, 12], b + info.addr_off + 4, 4)
                else:
                    memcpy(&src[i, 0], b + info.addr_off, 16)
                    memcpy(&dst[i, 0], b + info.addr_off + 16, 16)
                sport[i] = info.sport
                dport[i] = info.dport
                l4o[i] = info.l4_offset
                l4l[i] = info.l4_len
                po[i] = info.payload_offset
                pl[i] = info.payload_len
                flags[i] = info.tcp_flags
                seq[i] = info.tcp_seq
                ack[i] = info.tcp_ack
                win[i] = info.tcp_window
    finally:
        PyBuffer_Release(&v)
    return out


def fill_checksums(buf, offsets, lengths):
    """Fill IPv4 header and L4 checksums of every frame; returns the number skipped (unparsable)."""
    offs, lens = _frames(offsets, lengths)
    cdef const int64_t[::1] o = offs
    cdef const int64_t[::1] l = lens
    cdef Py_buffer v
    cdef uint8_t* b = wbuf(buf, &v)
    cdef PInfo info
    cdef Py_ssize_t i, n = o.shape[0], skipped = 0
    try:
        with nogil:
            for i in range(n):
                if _parse(b, v.len, o[i], l[i], &info) != E_OK:
                    skipped += 1
                elif info.ip_version:
                    ip_l4_fill(b, &info, True)
    finally:
        PyBuffer_Release(&v)
    return skipped


def rewrite_addresses(buf, offsets, lengths, src=None, dst=None):
    """Set source / destination addresses of every frame, checksums updated incrementally.

    ``src`` / ``dst``: None, bytes (same for all frames) or (N, 4|16) uint8
    arrays; frames whose IP version does not match, or that do not parse,
    are left untouched and counted (the return value).
    """
    offs, lens = _frames(offsets, lengths)
    cdef Py_ssize_t i, n = offs.shape[0], skipped = 0
    s_arr = _per_frame_addr(src, n)
    d_arr = _per_frame_addr(dst, n)
    cdef const int64_t[::1] o = offs
    cdef const int64_t[::1] l = lens
    cdef bint has_s = s_arr is not None, has_d = d_arr is not None
    np = numpy_module()
    dummy = np.zeros((max(n, 1), 16), np.uint8)
    cdef const uint8_t[:, ::1] s = s_arr if has_s else dummy
    cdef const uint8_t[:, ::1] d = d_arr if has_d else dummy
    cdef int sw = s.shape[1] if has_s else 0
    cdef int dw = d.shape[1] if has_d else 0
    cdef Py_buffer v
    cdef uint8_t* b = wbuf(buf, &v)
    cdef PInfo info
    cdef int64_t end
    try:
        with nogil:
            for i in range(n):
                if _parse(b, v.len, o[i], l[i], &info) != E_OK or info.ip_version == 0 or (
                        has_s and sw != info.addr_len) or (has_d and dw != info.addr_len):
                    skipped += 1
                    continue
                # same as the twin: the IP header re-read up to the end of the frame
                end = o[i] + l[i]
                if p_ip(b, info.l3_offset, end, &info) != E_OK:
                    skipped += 1
                    continue
                if has_s:
                    rewrite_addr(b, &info, info.addr_off, &s[i, 0])
                if has_d:
                    rewrite_addr(b, &info, info.addr_off + info.addr_len, &d[i, 0])
    finally:
        PyBuffer_Release(&v)
    return skipped


def set_tcp_ack_window(buf, offsets, lengths, ack=None, window=None):
    """Set the TCP ack number and/or window of every TCP frame, checksum updated incrementally.

    ``ack`` / ``window``: None, an int for all frames or a per-frame array (a
    negative entry keeps that frame's value).  Non-TCP / unparsable /
    fragment frames are left untouched and counted (the return value).
    """
    offs, lens = _frames(offsets, lengths)
    cdef Py_ssize_t i, n = offs.shape[0], skipped = 0
    a_arr = _per_frame_int(ack, n)
    w_arr = _per_frame_int(window, n)
    cdef const int64_t[::1] o = offs
    cdef const int64_t[::1] l = lens
    cdef bint has_a = a_arr is not None, has_w = w_arr is not None
    np = numpy_module()
    dummy = np.zeros(max(n, 1), np.int64)
    cdef const int64_t[::1] av = a_arr if has_a else dummy
    cdef const int64_t[::1] wv = w_arr if has_w else dummy
    cdef Py_buffer v
    cdef uint8_t* b = wbuf(buf, &v)
    cdef PInfo info
    cdef Py_ssize_t t
    cdef uint32_t ck, old, new
    try:
        with nogil:
            for i in range(n):
                if _parse(b, v.len, o[i], l[i], &info) != E_OK or info.ip_version == 0 or (
                        info.l4_proto != 6) or info.is_fragment:
                    skipped += 1
                    continue
                t = info.l4_offset
                ck = pc_load16(b + t + 16)
                if has_a and av[i] >= 0:
                    new = <uint32_t>av[i]  # truncation = & 0xFFFFFFFF
                    ck = pc_update32(ck, pc_load32(b + t + 8), new)
                    pc_store32(b + t + 8, new)
                if has_w and wv[i] >= 0:
                    new = <uint32_t>(wv[i] & 0xFFFF)
                    old = pc_load16(b + t + 14)
                    ck = pc_update16(ck, old, new)
                    pc_store16(b + t + 14, new)
                pc_store16(b + t + 16, ck)
    finally:
        PyBuffer_Release(&v)
    return skipped


def build_tcp_segments(buf, offsets, payload_lens, eth_dst, eth_src, src, dst, int sport,
                       int dport, seq, ack, int flags, int window, options=b""):
    """Build N consecutive TCP segments of one flow in one call; returns the frame lengths.

    The headers of the first frame are built once (by ``_headers.build_tcp``) as a
    template; every frame then gets a copy with its own length fields, sequence
    number and checksums, in one nogil loop.
    """
    np = numpy_module()
    offs = np.ascontiguousarray(offsets, dtype=np.int64)
    plens = np.ascontiguousarray(payload_lens, dtype=np.int64)
    if offs.ndim != 1 or offs.shape != plens.shape:
        raise ValueError("offsets and payload_lens must be 1-D arrays of the same length")
    src = src if type(src) is bytes else bytes(src)
    dst = dst if type(dst) is bytes else bytes(dst)
    options = options if type(options) is bytes else bytes(options)
    cdef Py_ssize_t hl = _header_len(4 if len(src) == 4 else 6, 6, len(options))
    cdef Py_ssize_t i, n = offs.shape[0]
    out = np.empty(n, np.int64)
    if n == 0:
        return out
    tmpl = bytearray(hl)
    _build_tcp(tmpl, 0, eth_dst, eth_src, src, dst, sport, dport, 0, ack, flags, window, 0, options)
    cdef const int64_t[::1] o = offs
    cdef const int64_t[::1] pl = plens
    cdef int64_t[::1] res = out
    cdef const uint8_t[::1] t = tmpl
    cdef bint v4 = len(src) == 4
    cdef Py_ssize_t l3 = 14, l4 = 34 if v4 else 54, thl = hl - l4, l4len, off
    cdef uint32_t s = <uint32_t>(seq & 0xFFFFFFFF), ck
    cdef uint64_t addr_sum
    cdef Py_buffer v
    cdef uint8_t* b = wbuf(buf, &v)
    try:
        if (offs.min() < 0 or plens.min() < 0
                or int((offs + plens).max()) + hl > v.len):
            raise ValueError("a segment does not fit in the buffer")
        if v4 and int(plens.max()) + hl - 14 > 0xFFFF:
            raise ValueError("IPv4 packet too long")
        if not v4 and int(plens.max()) + thl > 0xFFFF:
            raise ValueError("IPv6 payload too long")
        addr_sum = pc_csum(&t[0] + (l3 + 12 if v4 else l3 + 8), 8 if v4 else 32, 0)
        with nogil:
            for i in range(n):
                off = o[i]
                l4len = thl + pl[i]
                memcpy(b + off, &t[0], hl)
                if v4:
                    pc_store16(b + off + l3 + 2, <uint32_t>(20 + l4len))
                    pc_store16(b + off + l3 + 10, 0)
                    pc_store16(b + off + l3 + 10, (~pc_csum(b + off + l3, 20, 0)) & 0xFFFF)
                else:
                    pc_store16(b + off + l3 + 4, <uint32_t>l4len)
                pc_store32(b + off + l4 + 4, s)
                pc_store16(b + off + l4 + 16, 0)
                ck = pc_fold(addr_sum + 6 + <uint64_t>l4len)
                ck = (~pc_csum(b + off + l4, l4len, ck)) & 0xFFFF
                pc_store16(b + off + l4 + 16, ck)
                res[i] = hl + pl[i]
                s = s + <uint32_t>pl[i]
    finally:
        PyBuffer_Release(&v)
    return out
