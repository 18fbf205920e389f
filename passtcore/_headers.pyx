# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Ethernet/ARP/IPv4/IPv6/TCP/UDP/ICMP parsing, in-place rewrites and builders, Cython kernel.

Same names and results as the pure twin ``passtcore_py.headers`` (its
docstring explains the design and the ParseError reasons; ``ParseError`` and
``REASONS`` are the twin's objects, so ``except ParseError`` works with either
backend).  The parser itself is the nogil C-struct parser of ``_kern.pxd``;
this module only acquires the buffer, runs it and turns the struct into a
``FrameInfo`` (a cdef class with the documented attributes).  Rewrites and
builders write through the raw buffer pointer after explicit bounds checks
and update checksums incrementally (RFC 1624).
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from passtcore._kern cimport (
    PInfo, p_arp, p_ethernet, p_frame, p_icmp, p_ip, p_ipv4, p_ipv6,
    p_tcp, p_tcp_options, p_udp, pc_csum, pc_fold, pc_load16, pc_load32, pc_store16,
    pc_store32, pc_update16, pc_update32, pinfo_init, rewrite_addr, update_field, wbuf,
    window_ok,
)
# the twin's objects: one ParseError class, one REASONS table, one FrameInfo field list
from passtcore_py.headers import _FIELDS, REASONS, ParseError, reason_code

__all__ = [
    "ParseError", "FrameInfo", "REASONS", "reason_code", "parse_frame", "parse_ethernet",
    "parse_arp", "parse_ipv4", "parse_ipv6", "parse_tcp", "parse_udp", "parse_icmp",
    "parse_tcp_options", "set_macs", "set_addresses", "set_ports", "set_ttl", "set_tcp",
    "build_tcp", "build_udp", "build_icmp", "header_len", "ETH_P_IP", "ETH_P_IPV6", "ETH_P_ARP",
]

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806


cdef class FrameInfo:
    """What :func:`parse_frame` found.  Absent things: ``-1`` / ``b""`` / ``False``."""

    cdef public bytes eth_dst, eth_src, src, dst, arp_sha, arp_spa, arp_tha, arp_tpa
    cdef public int ethertype, vlan, ip_version, ttl, l4_proto, sport, dport
    cdef public Py_ssize_t l3_offset, l3_len, l4_offset, l4_len, payload_offset, payload_len
    cdef public bint is_fragment, tcp_sack_ok
    cdef public object tcp_seq, tcp_ack
    cdef public int tcp_flags, tcp_window, tcp_mss, tcp_wscale
    cdef public object tcp_ts_val, tcp_ts_ecr
    cdef public int icmp_type, icmp_code, icmp_id, icmp_seq, arp_op

    def __init__(self):
        self.eth_dst = self.eth_src = self.src = self.dst = b""
        self.arp_sha = self.arp_spa = self.arp_tha = self.arp_tpa = b""
        self.vlan = -1
        self.l3_offset = -1
        self.l4_proto = -1
        self.l4_offset = -1
        self.payload_offset = -1
        self.tcp_seq = 0
        self.tcp_ack = 0
        self.tcp_mss = -1
        self.tcp_wscale = -1
        self.tcp_ts_val = -1
        self.tcp_ts_ecr = -1

    def as_dict(self):
        return {f: getattr(self, f) for f in _FIELDS}

    def __eq__(self, other):
        if not hasattr(other, "as_dict"):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    def __repr__(self):
        keep = ("ethertype", "ip_version", "src", "dst", "l4_proto", "sport", "dport",
                "payload_offset", "payload_len")
        return "FrameInfo(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in keep) + ")"


cdef inline bytes _b(const uint8_t* p, Py_ssize_t n):
    return PyBytes_FromStringAndSize(<const char*>p, n)


cdef inline FrameInfo _new_info():
    # bypass __init__: every field is written by the _fill_* helpers below
    cdef FrameInfo f = FrameInfo.__new__(FrameInfo)
    f.eth_dst = f.eth_src = f.src = f.dst = b""
    f.arp_sha = f.arp_spa = f.arp_tha = f.arp_tpa = b""
    return f


cdef inline void _fill_eth(FrameInfo f, const uint8_t* b, const PInfo* i):
    f.eth_dst = _b(b + i.eth_off, 6)
    f.eth_src = _b(b + i.eth_off + 6, 6)
    f.ethertype = i.ethertype
    f.vlan = i.vlan
    f.l3_offset = i.l3_offset


cdef inline void _fill_ip(FrameInfo f, const uint8_t* b, const PInfo* i):
    f.l3_offset = i.l3_offset
    f.ip_version = i.ip_version
    f.src = _b(b + i.addr_off, i.addr_len)
    f.dst = _b(b + i.addr_off + i.addr_len, i.addr_len)
    f.ttl = i.ttl
    f.l3_len = i.l3_len
    f.is_fragment = i.is_fragment
    f.l4_proto = i.l4_proto
    f.l4_offset = i.l4_offset
    f.l4_len = i.l4_len
    f.payload_offset = i.payload_offset
    f.payload_len = i.payload_len


cdef inline void _fill_arp(FrameInfo f, const uint8_t* b, const PInfo* i):
    cdef Py_ssize_t o = i.l3_offset
    f.l3_offset = o
    f.l3_len = 28
    f.arp_op = i.arp_op
    f.arp_sha = _b(b + o + 8, 6)
    f.arp_spa = _b(b + o + 14, 4)
    f.arp_tha = _b(b + o + 18, 6)
    f.arp_tpa = _b(b + o + 24, 4)


cdef inline void _fill_l4(FrameInfo f, const PInfo* i):
    f.l4_offset = i.l4_offset
    f.l4_len = i.l4_len
    f.sport = i.sport
    f.dport = i.dport
    f.payload_offset = i.payload_offset
    f.payload_len = i.payload_len


cdef inline void _fill_tcp(FrameInfo f, const PInfo* i):
    _fill_l4(f, i)
    f.tcp_seq = i.tcp_seq
    f.tcp_ack = i.tcp_ack
    f.tcp_flags = i.tcp_flags
    f.tcp_window = i.tcp_window
    f.tcp_mss = i.tcp_mss
    f.tcp_wscale = i.tcp_wscale
    f.tcp_sack_ok = i.tcp_sack_ok
    f.tcp_ts_val = i.tcp_ts_val
    f.tcp_ts_ecr = i.tcp_ts_ecr


cdef inline void _fill_icmp(FrameInfo f, const PInfo* i):
    _fill_l4(f, i)
    f.icmp_type = i.icmp_type
    f.icmp_code = i.icmp_code
    f.icmp_id = i.icmp_id
    f.icmp_seq = i.icmp_seq


cdef inline FrameInfo _fill_all(const uint8_t* b, const PInfo* i):
    cdef FrameInfo f = _new_info()
    _fill_eth(f, b, i)
    f.tcp_seq = 0
    f.tcp_ack = 0
    f.tcp_mss = f.tcp_wscale = -1
    f.tcp_ts_val = f.tcp_ts_ecr = -1
    f.l4_proto = -1
    f.l4_offset = f.payload_offset = -1
    if i.ethertype == 0x0806:
        _fill_arp(f, b, i)
        return f
    if i.ip_version == 0:
        return f
    _fill_ip(f, b, i)
    if i.is_fragment:
        return f
    if i.l4_proto == 6:
        _fill_tcp(f, i)
    elif i.l4_proto == 17:
        _fill_l4(f, i)
    elif (i.l4_proto == 1 and i.ip_version == 4) or (i.l4_proto == 58 and i.ip_version == 6):
        _fill_icmp(f, i)
    return f


cdef inline Py_ssize_t _window(Py_buffer* v, Py_ssize_t offset, Py_ssize_t length) except -1:
    """End of the window; ParseError('bad-bounds') when it does not fit."""
    if not window_ok(v.len, offset, &length):
        raise ParseError("bad-bounds", f"offset={offset} length={length} size={v.len}")
    return offset + length


cdef inline int _raise(int rc) except -1:
    raise ParseError(REASONS[rc - 1])


# The single-layer parsers all go through _parse_layer: they differ only in the
# nogil parser it runs and the _fill_* helper that copies the result out.
cdef enum Layer:
    L_ETH, L_ARP, L_IPV4, L_IPV6, L_TCP, L_TCP_OPTIONS, L_UDP, L_ICMP


cdef inline int _run(Layer layer, const uint8_t* b, Py_ssize_t off, Py_ssize_t end, PInfo* i,
                     int ip_version) noexcept nogil:
    pinfo_init(i)
    if layer == L_ETH:
        return p_ethernet(b, off, end, i)
    if layer == L_ARP:
        return p_arp(b, off, end, i)
    if layer == L_IPV4:
        return p_ipv4(b, off, end, i)
    if layer == L_IPV6:
        return p_ipv6(b, off, end, i)
    if layer == L_TCP:
        return p_tcp(b, off, end, i)
    if layer == L_TCP_OPTIONS:
        return p_tcp_options(b, off, end, i)
    if layer == L_UDP:
        return p_udp(b, off, end, i)
    return p_icmp(b, off, end, i, ip_version)


cdef FrameInfo _parse_layer(Layer layer, object buf, Py_ssize_t offset, Py_ssize_t length,
                            FrameInfo f, PInfo* i, int ip_version):
    """Acquire ``buf``, parse ``layer`` in the checked window into ``*i`` (ParseError on
    failure) and copy the layer's fields into ``f``; returns ``f`` (L_TCP_OPTIONS fills
    nothing: the caller reads ``*i``).  ``ip_version`` only matters for L_ICMP."""
    cdef Py_buffer v
    cdef const uint8_t* b
    cdef int rc
    PyObject_GetBuffer(buf, &v, PyBUF_SIMPLE)
    try:
        b = <const uint8_t*>v.buf
        rc = _run(layer, b, offset, _window(&v, offset, length), i, ip_version)
        if rc:
            _raise(rc)
        if layer == L_ETH:
            _fill_eth(f, b, i)
        elif layer == L_ARP:
            _fill_arp(f, b, i)
        elif layer == L_IPV4 or layer == L_IPV6:
            _fill_ip(f, b, i)
        elif layer == L_TCP:
            _fill_tcp(f, i)
        elif layer == L_UDP:
            _fill_l4(f, i)
        elif layer == L_ICMP:
            _fill_icmp(f, i)
    finally:
        PyBuffer_Release(&v)
    return f


def parse_frame(buf, Py_ssize_t offset=0, Py_ssize_t length=-1):
    """Parse the Ethernet frame at ``buf[offset:offset+length]`` down to L4."""
    # Kept apart from _parse_layer on purpose: this is the per-frame hot path of the
    # daemon, and routing it through the layer dispatch cost ~50 ns a call (+20 %).
    cdef Py_buffer v
    cdef PInfo i
    cdef int rc
    cdef Py_ssize_t end
    PyObject_GetBuffer(buf, &v, PyBUF_SIMPLE)
    try:
        end = _window(&v, offset, length)
        rc = p_frame(<const uint8_t*>v.buf, offset, end, &i)
        if rc:
            _raise(rc)
        return _fill_all(<const uint8_t*>v.buf, &i)
    finally:
        PyBuffer_Release(&v)


cdef inline FrameInfo _info(object info):
    if info is None:
        return FrameInfo()
    return <FrameInfo?>info


def parse_ethernet(buf, Py_ssize_t offset=0, Py_ssize_t length=-1, info=None):
    """Ethernet header (+ one 802.1Q / 802.1ad tag): MACs, ethertype, vlan, l3_offset."""
    cdef PInfo i
    return _parse_layer(L_ETH, buf, offset, length, _info(info), &i, 0)


def parse_arp(buf, Py_ssize_t offset=0, Py_ssize_t length=-1, info=None):
    """ARP for Ethernet/IPv4 at ``offset`` (the L3 offset)."""
    cdef PInfo i
    return _parse_layer(L_ARP, buf, offset, length, _info(info), &i, 0)


def parse_ipv4(buf, Py_ssize_t offset=0, Py_ssize_t length=-1, info=None):
    """IPv4 header at ``offset``: addresses, TTL, total length, fragment flag, L4 location."""
    cdef PInfo i
    return _parse_layer(L_IPV4, buf, offset, length, _info(info), &i, 0)


def parse_ipv6(buf, Py_ssize_t offset=0, Py_ssize_t length=-1, info=None):
    """IPv6 header at ``offset``, extension headers walked (bounded) to the L4 header."""
    cdef PInfo i
    return _parse_layer(L_IPV6, buf, offset, length, _info(info), &i, 0)


def parse_tcp_options(buf, Py_ssize_t offset, Py_ssize_t length):
    """TCP options in ``buf[offset:offset+length]`` -> (mss, wscale, sack_ok, ts_val, ts_ecr)."""
    cdef PInfo i
    _parse_layer(L_TCP_OPTIONS, buf, offset, length, None, &i, 0)
    return i.tcp_mss, i.tcp_wscale, bool(i.tcp_sack_ok), i.tcp_ts_val, i.tcp_ts_ecr


def parse_tcp(buf, Py_ssize_t offset, Py_ssize_t length=-1, info=None):
    """TCP header of the segment ``buf[offset:offset+length]`` (length = L4 length)."""
    cdef PInfo i
    return _parse_layer(L_TCP, buf, offset, length, _info(info), &i, 0)


def parse_udp(buf, Py_ssize_t offset, Py_ssize_t length=-1, info=None):
    """UDP header; the datagram is trimmed to the UDP length field."""
    cdef PInfo i
    return _parse_layer(L_UDP, buf, offset, length, _info(info), &i, 0)


def parse_icmp(buf, Py_ssize_t offset, Py_ssize_t length=-1, info=None, int ip_version=4):
    """ICMP (``ip_version=4``) or ICMPv6 (6) header; echo id goes to ``sport`` too."""
    cdef PInfo i
    return _parse_layer(L_ICMP, buf, offset, length, _info(info), &i, ip_version)


# -- in-place rewrites ------------------------------------------------------------------


cdef inline bytes _as_bytes(object a):
    return a if type(a) is bytes else bytes(a)


def set_macs(buf, Py_ssize_t off, dst=None, src=None):
    """Overwrite the Ethernet destination / source MAC of the frame at ``off``."""
    cdef Py_buffer v
    cdef uint8_t* b = wbuf(buf, &v)
    cdef bytes d, s
    try:
        if off < 0 or off + 12 > v.len:
            raise ParseError("truncated-ethernet")
        d = _as_bytes(dst) if dst is not None else None
        s = _as_bytes(src) if src is not None else None
        if (d is not None and len(d) != 6) or (s is not None and len(s) != 6):
            raise ParseError("bad-address", "MAC must be 6 bytes")
        if d is not None:
            memcpy(b + off, <const char*>d, 6)
        if s is not None:
            memcpy(b + off + 6, <const char*>s, 6)
    finally:
        PyBuffer_Release(&v)


def set_addresses(buf, Py_ssize_t l3off, src=None, dst=None):
    """Replace source / destination address, fixing the IPv4 and pseudo-header L4 checksums."""
    cdef Py_buffer v
    cdef uint8_t* b = wbuf(buf, &v)
    cdef PInfo i
    cdef int rc, alen, k
    cdef bytes a
    try:
        rc = p_ip(b, l3off, v.len, &i)
        if rc:
            _raise(rc)
        alen = i.addr_len
        for k in range(2):
            obj = src if k == 0 else dst
            if obj is None:
                continue
            a = _as_bytes(obj)
            if len(a) != alen:
                raise ParseError("bad-address", f"IPv{i.ip_version} address must be {alen} bytes")
            rewrite_addr(b, &i, i.addr_off + k * alen, <const uint8_t*><const char*>a)
    finally:
        PyBuffer_Release(&v)


def set_ports(buf, Py_ssize_t l3off, Py_ssize_t l4off, sport=None, dport=None):
    """Replace TCP/UDP ports (ICMP echo: ``sport`` is the echo id), fixing the L4 checksum."""
    cdef Py_buffer v
    cdef uint8_t* b = wbuf(buf, &v)
    cdef PInfo i
    cdef int rc, p
    cdef Py_ssize_t coff
    cdef bint udp = False
    cdef uint8_t old[2]
    cdef uint8_t new[2]
    cdef uint32_t val
    try:
        rc = p_ip(b, l3off, v.len, &i)
        if rc:
            _raise(rc)
        p = i.l4_proto
        if l4off < 0 or l4off + 8 > v.len:
            raise ParseError("bad-bounds")
        if p == 6:
            if l4off + 20 > v.len:
                raise ParseError("truncated-tcp")
            coff = l4off + 16
            fields = ((sport, l4off), (dport, l4off + 2))
        elif p == 17:
            coff = l4off + 6
            udp = True
            fields = ((sport, l4off), (dport, l4off + 2))
        elif p == 1 or p == 58:
            coff = l4off + 2
            fields = ((sport, l4off + 4),)
        else:
            raise ParseError("not-ip", f"no ports for protocol {p}")
        for value, o in fields:
            if value is None:
                continue
            val = <uint32_t>(<long long>value & 0xFFFF)
            if pc_load16(b + <Py_ssize_t>o) != val:
                memcpy(old, b + <Py_ssize_t>o, 2)
                pc_store16(new, val)
                update_field(b, coff, old, new, 2, udp)
                pc_store16(b + <Py_ssize_t>o, val)
    finally:
        PyBuffer_Release(&v)


def set_ttl(buf, Py_ssize_t l3off, int ttl):
    """Set the IPv4 TTL (checksum updated) or the IPv6 hop limit."""
    cdef Py_buffer v
    cdef uint8_t* b = wbuf(buf, &v)
    cdef uint32_t old, new
    try:
        if l3off < 0 or l3off >= v.len:
            raise ParseError("bad-bounds")
        ttl &= 0xFF
        if b[l3off] >> 4 == 4:
            if l3off + 20 > v.len:
                raise ParseError("truncated-ipv4")
            old = pc_load16(b + l3off + 8)
            new = (<uint32_t>ttl << 8) | (old & 0xFF)
            pc_store16(b + l3off + 10, pc_update16(pc_load16(b + l3off + 10), old, new))
            b[l3off + 8] = ttl
        elif b[l3off] >> 4 == 6:
            if l3off + 40 > v.len:
                raise ParseError("truncated-ipv6")
            b[l3off + 7] = ttl
        else:
            raise ParseError("bad-ip-version")
    finally:
        PyBuffer_Release(&v)


def set_tcp(buf, Py_ssize_t l4off, seq=None, ack=None, window=None, flags=None):
    """Rewrite TCP sequence / ack / window / flags (low 8 bits), checksum updated."""
    cdef Py_buffer v
    cdef uint8_t* b = wbuf(buf, &v)
    cdef uint32_t ck, old, new
    try:
        if l4off < 0 or l4off + 20 > v.len:
            raise ParseError("truncated-tcp")
        ck = pc_load16(b + l4off + 16)
        if seq is not None:
            new = <uint32_t>(<unsigned long long>(seq & 0xFFFFFFFF))
            ck = pc_update32(ck, pc_load32(b + l4off + 4), new)
            pc_store32(b + l4off + 4, new)
        if ack is not None:
            new = <uint32_t>(<unsigned long long>(ack & 0xFFFFFFFF))
            ck = pc_update32(ck, pc_load32(b + l4off + 8), new)
            pc_store32(b + l4off + 8, new)
        if flags is not None:
            old = pc_load16(b + l4off + 12)
            new = (old & 0xFF00) | (<uint32_t>(<long long>flags & 0xFF))
            ck = pc_update16(ck, old, new)
            pc_store16(b + l4off + 12, new)
        if window is not None:
            old = pc_load16(b + l4off + 14)
            new = <uint32_t>(<long long>window & 0xFFFF)
            ck = pc_update16(ck, old, new)
            pc_store16(b + l4off + 14, new)
        pc_store16(b + l4off + 16, ck)
    finally:
        PyBuffer_Release(&v)


# -- builders ---------------------------------------------------------------------------


def header_len(int ip_version, int l4_proto, int options_len=0):
    """Bytes of Ethernet + IP + L4 headers a builder writes (TCP options padded to 4)."""
    cdef int n
    if ip_version == 4:
        n = 34
    elif ip_version == 6:
        n = 54
    else:
        raise ValueError(f"bad ip_version {ip_version}")
    if l4_proto == 6:
        if options_len < 0 or options_len > 40:
            raise ValueError("TCP options must be 0..40 bytes")
        return n + 20 + ((options_len + 3) & ~3)
    if l4_proto == 17 or l4_proto == 1 or l4_proto == 58:
        return n + 8
    raise ValueError(f"unsupported protocol {l4_proto}")


cdef Py_ssize_t _build_l3(uint8_t* b, Py_ssize_t blen, Py_ssize_t offset, bytes eth_dst,
                          bytes eth_src, bytes src, bytes dst, int proto, Py_ssize_t l4len,
                          Py_ssize_t frame_len, uint32_t* psum) except -1:
    """Ethernet + IP header at offset; returns the L3 offset, *psum = pseudo-header sum."""
    cdef Py_ssize_t l3 = offset + 14
    cdef int alen = len(src)
    cdef uint64_t s
    if len(eth_dst) != 6 or len(eth_src) != 6:
        raise ValueError("MAC addresses must be 6 bytes")
    if alen != len(dst) or (alen != 4 and alen != 16):
        raise ValueError("addresses must both be 4 or both 16 bytes")
    if offset < 0 or frame_len > blen - offset:
        raise ValueError(f"frame of {frame_len} bytes at {offset} does not fit in {blen}")
    memcpy(b + offset, <const char*>eth_dst, 6)
    memcpy(b + offset + 6, <const char*>eth_src, 6)
    if alen == 4:
        if l4len + 20 > 0xFFFF:
            raise ValueError("IPv4 packet too long")
        pc_store16(b + offset + 12, 0x0800)
        b[l3] = 0x45
        b[l3 + 1] = 0
        pc_store16(b + l3 + 2, <uint32_t>(20 + l4len))
        memset(b + l3 + 4, 0, 4)           # ID 0, no DF, fragment offset 0
        b[l3 + 8] = 255
        b[l3 + 9] = proto
        b[l3 + 10] = 0
        b[l3 + 11] = 0
        memcpy(b + l3 + 12, <const char*>src, 4)
        memcpy(b + l3 + 16, <const char*>dst, 4)
        pc_store16(b + l3 + 10, (~pc_csum(b + l3, 20, 0)) & 0xFFFF)
        s = pc_csum(b + l3 + 12, 8, 0)
        s += <uint32_t>proto + <uint32_t>l4len
    else:
        if l4len > 0xFFFF:
            raise ValueError("IPv6 payload too long")
        pc_store16(b + offset + 12, 0x86DD)
        pc_store32(b + l3, 0x60000000)
        pc_store16(b + l3 + 4, <uint32_t>l4len)
        b[l3 + 6] = proto
        b[l3 + 7] = 255
        memcpy(b + l3 + 8, <const char*>src, 16)
        memcpy(b + l3 + 24, <const char*>dst, 16)
        s = pc_csum(b + l3 + 8, 32, 0)
        s += <uint32_t>proto + <uint32_t>l4len
    psum[0] = pc_fold(s)
    return l3


cdef inline void _finish(uint8_t* b, Py_ssize_t l4, Py_ssize_t l4len, int coff, uint32_t s,
                         bint udp) noexcept nogil:
    cdef uint32_t c = (~pc_csum(b + l4, l4len, s)) & 0xFFFF
    if udp and c == 0:
        c = 0xFFFF
    pc_store16(b + l4 + coff, c)


cdef Py_ssize_t _tcp_frame(uint8_t* b, Py_ssize_t blen, Py_ssize_t offset, bytes eth_dst,
                           bytes eth_src, bytes s, bytes d, int sport, int dport, uint32_t seq,
                           uint32_t ack, int flags, int window, Py_ssize_t payload_len,
                           bytes opts) except -1:
    """Headers of one TCP frame at ``offset`` (payload in place after them); its length."""
    cdef Py_ssize_t hl, tcp_hl, l4len, l4
    cdef uint32_t ps
    hl = header_len(4 if len(s) == 4 else 6, 6, len(opts))
    tcp_hl = hl - (34 if len(s) == 4 else 54)
    l4len = tcp_hl + payload_len
    if payload_len < 0:
        raise ValueError("payload_len must be >= 0")
    _build_l3(b, blen, offset, eth_dst, eth_src, s, d, 6, l4len, hl + payload_len, &ps)
    l4 = offset + hl - tcp_hl
    pc_store16(b + l4, sport & 0xFFFF)
    pc_store16(b + l4 + 2, dport & 0xFFFF)
    pc_store32(b + l4 + 4, seq)
    pc_store32(b + l4 + 8, ack)
    b[l4 + 12] = <uint8_t>((tcp_hl // 4) << 4)
    b[l4 + 13] = flags & 0xFF
    pc_store16(b + l4 + 14, window & 0xFFFF)
    memset(b + l4 + 16, 0, 4)
    if len(opts):
        memcpy(b + l4 + 20, <const char*>opts, len(opts))
    memset(b + l4 + 20 + len(opts), 0, tcp_hl - 20 - len(opts))
    _finish(b, l4, l4len, 16, ps, False)
    return hl + payload_len


def build_tcp(buf, Py_ssize_t offset, eth_dst, eth_src, src, dst, int sport, int dport,
              seq, ack, int flags, int window, Py_ssize_t payload_len, options=b""):
    """Write Ethernet+IP+TCP headers at ``offset`` before the payload; returns the frame length."""
    cdef Py_buffer v
    cdef uint8_t* b = wbuf(buf, &v)
    try:
        return _tcp_frame(b, v.len, offset, _as_bytes(eth_dst), _as_bytes(eth_src),
                          _as_bytes(src), _as_bytes(dst), sport, dport,
                          <uint32_t>(<unsigned long long>(seq & 0xFFFFFFFF)),
                          <uint32_t>(<unsigned long long>(ack & 0xFFFFFFFF)), flags, window,
                          payload_len, _as_bytes(options))
    finally:
        PyBuffer_Release(&v)


def build_tcp_burst(buf, Py_ssize_t offset, Py_ssize_t stride, payload_lens, eth_dst, eth_src,
                    src, dst, int sport, int dport, seq, ack, int flags, int window, out):
    """A burst of one flow's TCP segments in one call: frame ``i`` at ``offset + i *
    stride`` carries ``payload_lens[i]`` bytes already in place after its headers and
    sequence number ``seq + sum(payload_lens[:i])`` (mod 2**32); everything else is
    shared. Frame lengths go to ``out[i]`` (a writable int64 buffer, ``array('q')``:
    no numpy). Returns the number of frames; all are bounds-checked before any is
    written (ValueError)."""
    cdef const int64_t[::1] lens = payload_lens
    cdef int64_t[::1] res = out
    cdef Py_ssize_t n = lens.shape[0], i
    cdef Py_buffer v
    cdef uint8_t* b
    cdef bytes ed = _as_bytes(eth_dst), es = _as_bytes(eth_src), s = _as_bytes(src)
    cdef bytes d = _as_bytes(dst), no = b""
    cdef Py_ssize_t hl = header_len(4 if len(s) == 4 else 6, 6, 0)
    cdef uint32_t sq = <uint32_t>(<unsigned long long>(seq & 0xFFFFFFFF))
    cdef uint32_t ak = <uint32_t>(<unsigned long long>(ack & 0xFFFFFFFF))
    if res.shape[0] < n:
        raise ValueError("out is shorter than payload_lens")
    if stride <= 0 or offset < 0:
        raise ValueError("offset must be >= 0 and stride > 0")
    b = wbuf(buf, &v)
    try:
        for i in range(n):
            if lens[i] < 0 or lens[i] + hl > stride or offset + i * stride + hl + lens[i] > v.len:
                raise ValueError("a segment does not fit in its slot")
        for i in range(n):
            res[i] = _tcp_frame(b, v.len, offset + i * stride, ed, es, s, d, sport, dport, sq,
                                ak, flags, window, lens[i], no)
            sq = <uint32_t>(sq + <uint32_t>lens[i])
    finally:
        PyBuffer_Release(&v)
    return n


def build_udp(buf, Py_ssize_t offset, eth_dst, eth_src, src, dst, int sport, int dport,
              Py_ssize_t payload_len, bint l4_csum=True):
    """Write Ethernet+IP+UDP headers at ``offset`` before the payload; returns the frame length.

    ``l4_csum=False`` leaves an IPv4 UDP checksum at 0 ("none", RFC 768: what passt
    sends) without summing the payload; IPv6 always gets one (RFC 8200)."""
    cdef Py_buffer v
    cdef uint8_t* b = wbuf(buf, &v)
    cdef bytes s = _as_bytes(src)
    cdef Py_ssize_t hl, l4len, l4
    cdef uint32_t ps
    try:
        if payload_len < 0:
            raise ValueError("payload_len must be >= 0")
        hl = header_len(4 if len(s) == 4 else 6, 17)
        l4len = 8 + payload_len
        _build_l3(b, v.len, offset, _as_bytes(eth_dst), _as_bytes(eth_src), s, _as_bytes(dst),
                  17, l4len, hl + payload_len, &ps)
        l4 = offset + hl - 8
        pc_store16(b + l4, sport & 0xFFFF)
        pc_store16(b + l4 + 2, dport & 0xFFFF)
        pc_store16(b + l4 + 4, <uint32_t>l4len)
        pc_store16(b + l4 + 6, 0)
        if l4_csum or len(s) == 16:
            _finish(b, l4, l4len, 6, ps, True)
    finally:
        PyBuffer_Release(&v)
    return hl + payload_len


def build_icmp(buf, Py_ssize_t offset, eth_dst, eth_src, src, dst, int type, int code,
               int ident, int seq, Py_ssize_t payload_len):
    """Write Ethernet+IP+ICMP (ICMPv6 for 16-byte addresses) headers; returns the frame length."""
    cdef Py_buffer v
    cdef uint8_t* b = wbuf(buf, &v)
    cdef bytes s = _as_bytes(src)
    cdef bint v6 = len(s) == 16
    cdef int proto = 58 if v6 else 1
    cdef Py_ssize_t hl, l4len, l4
    cdef uint32_t ps
    try:
        if payload_len < 0:
            raise ValueError("payload_len must be >= 0")
        hl = header_len(6 if v6 else 4, proto)
        l4len = 8 + payload_len
        _build_l3(b, v.len, offset, _as_bytes(eth_dst), _as_bytes(eth_src), s, _as_bytes(dst),
                  proto, l4len, hl + payload_len, &ps)
        l4 = offset + hl - 8
        b[l4] = type & 0xFF
        b[l4 + 1] = code & 0xFF
        pc_store16(b + l4 + 2, 0)
        pc_store16(b + l4 + 4, ident & 0xFFFF)
        pc_store16(b + l4 + 6, seq & 0xFFFF)
        _finish(b, l4, l4len, 2, ps if v6 else 0, False)
    finally:
        PyBuffer_Release(&v)
    return hl + payload_len
