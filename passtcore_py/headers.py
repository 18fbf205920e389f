"""Ethernet/ARP/IPv4/IPv6/TCP/UDP/ICMP parsing, in-place rewrites and builders.

Pure-Python twin of ``passtcore._headers`` (same names, same results).

Design
------
* **Strict bounds.** Every parser works on ``buf[offset:offset+length]`` and
  checks each read against that window *and* against the lengths the headers
  themselves announce (IP total length, IPv6 payload length, extension header
  lengths, TCP data offset, TCP option lengths, UDP length).  Anything
  inconsistent raises :class:`ParseError` whose ``.reason`` is one of the
  short stable strings in :data:`REASONS` (the daemon uses it as a drop
  counter name).  Bytes after the IP packet (Ethernet padding: QEMU pads
  short frames to 60 bytes) are never treated as payload.
* **One result object.** :func:`parse_frame` fills a :class:`FrameInfo`;
  offsets in it are absolute within ``buf``.  The single-layer parsers fill
  the same object (or a fresh one) for their layer only.
* **Rewrites keep checksums right incrementally** (RFC 1624): only the words
  that change are folded into the stored checksums.  A UDP/IPv4 checksum of 0
  ("none") stays 0.
* **Builders** write complete Ethernet + IP + L4 headers in front of a payload
  already in place and fill every checksum (IPv4: TTL 255, ID 0, no DF, like
  passt; IPv6: hop limit 255).
"""
from __future__ import annotations

import struct
from typing import Any

from passtcore_py import csum as _c

__all__ = [
    "ParseError",
    "FrameInfo",
    "REASONS",
    "reason_code",
    "parse_frame",
    "parse_ethernet",
    "parse_arp",
    "parse_ipv4",
    "parse_ipv6",
    "parse_tcp",
    "parse_udp",
    "parse_icmp",
    "parse_tcp_options",
    "set_macs",
    "set_addresses",
    "set_ports",
    "set_ttl",
    "set_tcp",
    "build_tcp",
    "build_udp",
    "build_icmp",
    "header_len",
    "ETH_P_IP",
    "ETH_P_IPV6",
    "ETH_P_ARP",
]

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_HLEN = 14

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
_V6_EXT = (0, 43, 60)  # hop-by-hop, routing, destination options: (len+1)*8 bytes
_V6_FRAG = 44
_V6_MAX_EXT = 8

#: Stable ParseError reasons; ``batch.classify`` reports ``status = index + 1``.
REASONS: tuple[str, ...] = (
    "bad-bounds",
    "truncated-ethernet",
    "truncated-vlan",
    "truncated-arp",
    "bad-arp",
    "truncated-ipv4",
    "bad-ip-version",
    "bad-ihl",
    "bad-ip-length",
    "truncated-ipv6",
    "truncated-ipv6-ext",
    "bad-ipv6-ext",
    "truncated-tcp",
    "bad-tcp-offset",
    "bad-tcp-option",
    "truncated-udp",
    "bad-udp-length",
    "truncated-icmp",
    "bad-address",
    "not-ip",
)
_CODE = {r: i + 1 for i, r in enumerate(REASONS)}


def reason_code(reason: str) -> int:
    """The numeric status used by ``batch.classify`` for a ParseError reason."""
    return _CODE[reason]


class ParseError(ValueError):
    """A frame is truncated or inconsistent; ``.reason`` is a short stable name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


_FIELDS = (
    "eth_dst", "eth_src", "ethertype", "vlan", "l3_offset", "ip_version", "src", "dst",
    "ttl", "l3_len", "is_fragment", "l4_proto", "l4_offset", "l4_len", "sport", "dport",
    "payload_offset", "payload_len", "tcp_seq", "tcp_ack", "tcp_flags", "tcp_window",
    "tcp_mss", "tcp_wscale", "tcp_sack_ok", "tcp_ts_val", "tcp_ts_ecr", "icmp_type",
    "icmp_code", "icmp_id", "icmp_seq", "arp_op", "arp_sha", "arp_spa", "arp_tha", "arp_tpa",
)


class FrameInfo:
    """What :func:`parse_frame` found.  Absent things: ``-1`` / ``b""`` / ``False``."""

    __slots__ = _FIELDS

    def __init__(self) -> None:
        self.eth_dst = self.eth_src = b""
        self.ethertype = 0
        self.vlan = -1
        self.l3_offset = -1
        self.ip_version = 0
        self.src = self.dst = b""
        self.ttl = 0
        self.l3_len = 0
        self.is_fragment = False
        self.l4_proto = -1
        self.l4_offset = -1
        self.l4_len = 0
        self.sport = self.dport = 0
        self.payload_offset = -1
        self.payload_len = 0
        self.tcp_seq = self.tcp_ack = self.tcp_flags = self.tcp_window = 0
        self.tcp_mss = self.tcp_wscale = -1
        self.tcp_sack_ok = False
        self.tcp_ts_val = self.tcp_ts_ecr = -1
        self.icmp_type = self.icmp_code = self.icmp_id = self.icmp_seq = 0
        self.arp_op = 0
        self.arp_sha = self.arp_spa = self.arp_tha = self.arp_tpa = b""

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _FIELDS}

    def __eq__(self, other: object) -> bool:
        if not hasattr(other, "as_dict"):
            return NotImplemented
        return self.as_dict() == other.as_dict()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        keep = ("ethertype", "ip_version", "src", "dst", "l4_proto", "sport", "dport",
                "payload_offset", "payload_len")
        return "FrameInfo(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in keep) + ")"


def _view(buf: Any) -> memoryview:
    if type(buf) is memoryview and buf.format == "B" and buf.ndim == 1:
        return buf  # the layers of parse_frame pass the same view down
    mv = memoryview(buf)
    if mv.ndim != 1 or mv.itemsize != 1 or mv.format != "B":
        mv = mv.cast("B")
    return mv


def _window(buf: Any, offset: int, length: int) -> tuple[memoryview, int]:
    """(byte view of the whole buffer, end of the window); ParseError if out of range."""
    mv = _view(buf)
    n = mv.nbytes
    if length == -1:
        length = n - offset
    if offset < 0 or length < 0 or offset + length > n:
        raise ParseError("bad-bounds", f"offset={offset} length={length} size={n}")
    return mv, offset + length


_u16 = struct.Struct("!H").unpack_from
_u32 = struct.Struct("!I").unpack_from
_ETH = struct.Struct("!6s6sH").unpack_from
_IP4 = struct.Struct("!BBHHHBBH4s4s").unpack_from
_IP6 = struct.Struct("!IHBB16s16s").unpack_from
_TCP = struct.Struct("!HHIIBBHHH").unpack_from
_UDP = struct.Struct("!HHHH").unpack_from
_ICMP = struct.Struct("!BBHHH").unpack_from
_ARP = struct.Struct("!HHBBH6s4s6s4s").unpack_from


# -- single-layer parsers ---------------------------------------------------------------


def parse_ethernet(buf: Any, offset: int = 0, length: int = -1, info: FrameInfo | None = None) -> FrameInfo:
    """Ethernet header (+ one 802.1Q / 802.1ad tag): MACs, ethertype, vlan, l3_offset."""
    mv, end = _window(buf, offset, length)
    if end - offset < ETH_HLEN:
        raise ParseError("truncated-ethernet")
    info = info if info is not None else FrameInfo()
    dst, src, et = _ETH(mv, offset)
    info.eth_dst, info.eth_src = dst, src
    l3 = offset + ETH_HLEN
    if et in (ETH_P_8021Q, ETH_P_8021AD):
        if end - offset < ETH_HLEN + 4:
            raise ParseError("truncated-vlan")
        info.vlan = _u16(mv, offset + 14)[0] & 0x0FFF
        et = _u16(mv, offset + 16)[0]
        l3 += 4
    info.ethertype = et
    info.l3_offset = l3
    return info


def parse_arp(buf: Any, offset: int = 0, length: int = -1, info: FrameInfo | None = None) -> FrameInfo:
    """ARP for Ethernet/IPv4 at ``offset`` (the L3 offset)."""
    mv, end = _window(buf, offset, length)
    if end - offset < 28:
        raise ParseError("truncated-arp")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP(mv, offset)
    if htype != 1 or ptype != ETH_P_IP or hlen != 6 or plen != 4:
        raise ParseError("bad-arp")
    info = info if info is not None else FrameInfo()
    info.l3_offset = offset
    info.l3_len = 28
    info.arp_op, info.arp_sha, info.arp_spa, info.arp_tha, info.arp_tpa = op, sha, spa, tha, tpa
    return info


def parse_ipv4(buf: Any, offset: int = 0, length: int = -1, info: FrameInfo | None = None) -> FrameInfo:
    """IPv4 header at ``offset``: addresses, TTL, total length, fragment flag, L4 location."""
    mv, end = _window(buf, offset, length)
    avail = end - offset
    if avail < 20:
        raise ParseError("truncated-ipv4")
    vihl, _tos, tot, _id, frag, ttl, proto, _ck, src, dst = _IP4(mv, offset)
    if vihl >> 4 != 4:
        raise ParseError("bad-ip-version")
    ihl = (vihl & 0x0F) * 4
    if ihl < 20:
        raise ParseError("bad-ihl")
    if ihl > avail:
        raise ParseError("truncated-ipv4")
    if tot < ihl or tot > avail:
        raise ParseError("bad-ip-length")
    info = info if info is not None else FrameInfo()
    info.l3_offset = offset
    info.ip_version = 4
    info.src, info.dst, info.ttl, info.l3_len = src, dst, ttl, tot
    info.is_fragment = (frag & 0x3FFF) != 0
    info.l4_proto = proto
    info.l4_offset = offset + ihl
    info.l4_len = tot - ihl
    info.payload_offset = info.l4_offset
    info.payload_len = info.l4_len
    return info


def parse_ipv6(buf: Any, offset: int = 0, length: int = -1, info: FrameInfo | None = None) -> FrameInfo:
    """IPv6 header at ``offset``, extension headers walked (bounded) to the L4 header."""
    mv, end = _window(buf, offset, length)
    avail = end - offset
    if avail < 40:
        raise ParseError("truncated-ipv6")
    vtf, plen, nh, hlim, src, dst = _IP6(mv, offset)
    if vtf >> 28 != 6:
        raise ParseError("bad-ip-version")
    if 40 + plen > avail:
        raise ParseError("bad-ip-length")
    info = info if info is not None else FrameInfo()
    info.l3_offset = offset
    info.ip_version = 6
    info.src, info.dst, info.ttl, info.l3_len = src, dst, hlim, 40 + plen
    pend = offset + 40 + plen
    p = offset + 40
    frag = False
    for i in range(_V6_MAX_EXT + 1):
        if nh in _V6_EXT:
            if nh == 0 and i != 0:
                raise ParseError("bad-ipv6-ext", "hop-by-hop not first")
            if p + 2 > pend:
                raise ParseError("truncated-ipv6-ext")
            hl = (mv[p + 1] + 1) * 8
            if p + hl > pend:
                raise ParseError("truncated-ipv6-ext")
            nh = mv[p]
            p += hl
        elif nh == _V6_FRAG:
            if p + 8 > pend:
                raise ParseError("truncated-ipv6-ext")
            nh = mv[p]
            fo = _u16(mv, p + 2)[0]
            p += 8
            if fo & 0xFFF9:  # offset != 0 or M set: a real fragment (not atomic)
                frag = True
                break
        else:
            break
    else:
        raise ParseError("bad-ipv6-ext", "too many extension headers")
    info.is_fragment = frag
    info.l4_proto = nh
    info.l4_offset = p
    info.l4_len = pend - p
    info.payload_offset = p
    info.payload_len = pend - p
    return info


def parse_tcp_options(buf: Any, offset: int, length: int) -> tuple[int, int, bool, int, int]:
    """TCP options in ``buf[offset:offset+length]`` -> (mss, wscale, sack_ok, ts_val, ts_ecr).

    Absent values are -1 / False.  A zero or too short option length, an
    option running past the end, or a known option with the wrong length raise
    ``ParseError("bad-tcp-option")``.
    """
    mv, end = _window(buf, offset, length)
    if end == offset:
        return -1, -1, False, -1, -1  # the common case: no options
    mss = ws = tsv = tse = -1
    sack = False
    i = offset
    while i < end:
        kind = mv[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end:
            raise ParseError("bad-tcp-option", "missing length")
        olen = mv[i + 1]
        if olen < 2 or i + olen > end:
            raise ParseError("bad-tcp-option", f"kind {kind} length {olen}")
        if kind == 2:
            if olen != 4:
                raise ParseError("bad-tcp-option", "mss length")
            mss = _u16(mv, i + 2)[0]
        elif kind == 3:
            if olen != 3:
                raise ParseError("bad-tcp-option", "wscale length")
            ws = mv[i + 2]
        elif kind == 4:
            if olen != 2:
                raise ParseError("bad-tcp-option", "sack-permitted length")
            sack = True
        elif kind == 8:
            if olen != 10:
                raise ParseError("bad-tcp-option", "timestamp length")
            tsv = _u32(mv, i + 2)[0]
            tse = _u32(mv, i + 6)[0]
        i += olen
    return mss, ws, sack, tsv, tse


def parse_tcp(buf: Any, offset: int, length: int = -1, info: FrameInfo | None = None) -> FrameInfo:
    """TCP header of the segment ``buf[offset:offset+length]`` (length = L4 length)."""
    mv, end = _window(buf, offset, length)
    l4len = end - offset
    if l4len < 20:
        raise ParseError("truncated-tcp")
    sp, dp, seq, ack, doff, flags, win, _ck, _urg = _TCP(mv, offset)
    hl = (doff >> 4) * 4
    if hl < 20:
        raise ParseError("bad-tcp-offset")
    if hl > l4len:
        raise ParseError("truncated-tcp")
    info = info if info is not None else FrameInfo()
    (info.tcp_mss, info.tcp_wscale, info.tcp_sack_ok, info.tcp_ts_val,
     info.tcp_ts_ecr) = parse_tcp_options(mv, offset + 20, hl - 20)
    info.l4_offset = offset
    info.l4_len = l4len
    info.sport, info.dport = sp, dp
    info.tcp_seq, info.tcp_ack, info.tcp_flags, info.tcp_window = seq, ack, flags, win
    info.payload_offset = offset + hl
    info.payload_len = l4len - hl
    return info


def parse_udp(buf: Any, offset: int, length: int = -1, info: FrameInfo | None = None) -> FrameInfo:
    """UDP header; the datagram is trimmed to the UDP length field."""
    mv, end = _window(buf, offset, length)
    l4len = end - offset
    if l4len < 8:
        raise ParseError("truncated-udp")
    sp, dp, ulen, _ck = _UDP(mv, offset)
    if ulen < 8 or ulen > l4len:
        raise ParseError("bad-udp-length")
    info = info if info is not None else FrameInfo()
    info.l4_offset = offset
    info.l4_len = ulen
    info.sport, info.dport = sp, dp
    info.payload_offset = offset + 8
    info.payload_len = ulen - 8
    return info


def parse_icmp(buf: Any, offset: int, length: int = -1, info: FrameInfo | None = None,
               ip_version: int = 4) -> FrameInfo:
    """ICMP (``ip_version=4``) or ICMPv6 (6) header; echo id goes to ``sport`` too."""
    mv, end = _window(buf, offset, length)
    l4len = end - offset
    if l4len < 8:
        raise ParseError("truncated-icmp")
    t, code, _ck, ident, seq = _ICMP(mv, offset)
    info = info if info is not None else FrameInfo()
    info.l4_offset = offset
    info.l4_len = l4len
    info.icmp_type, info.icmp_code, info.icmp_id, info.icmp_seq = t, code, ident, seq
    if (ip_version == 4 and t in (0, 8)) or (ip_version == 6 and t in (128, 129)):
        info.sport = ident
    info.payload_offset = offset + 8
    info.payload_len = l4len - 8
    return info


def parse_frame(buf: Any, offset: int = 0, length: int = -1) -> FrameInfo:
    """Parse the Ethernet frame at ``buf[offset:offset+length]`` down to L4."""
    mv, end = _window(buf, offset, length)
    info = parse_ethernet(mv, offset, end - offset)
    l3 = info.l3_offset
    et = info.ethertype
    if et == ETH_P_IP:
        parse_ipv4(mv, l3, end - l3, info)
    elif et == ETH_P_IPV6:
        parse_ipv6(mv, l3, end - l3, info)
    elif et == ETH_P_ARP:
        parse_arp(mv, l3, end - l3, info)
        return info
    else:
        return info
    if info.is_fragment:
        return info
    p, v = info.l4_proto, info.ip_version
    if p == IPPROTO_TCP:
        parse_tcp(mv, info.l4_offset, info.l4_len, info)
    elif p == IPPROTO_UDP:
        parse_udp(mv, info.l4_offset, info.l4_len, info)
    elif (p == IPPROTO_ICMP and v == 4) or (p == IPPROTO_ICMPV6 and v == 6):
        parse_icmp(mv, info.l4_offset, info.l4_len, info, v)
    return info


# -- in-place rewrites ------------------------------------------------------------------


def _wview(buf: Any) -> memoryview:
    mv = _view(buf)
    if mv.readonly:
        raise TypeError("buffer is read-only")
    return mv


def _get16(mv: memoryview, off: int) -> int:
    return (mv[off] << 8) | mv[off + 1]


def _put16(mv: memoryview, off: int, v: int) -> None:
    mv[off] = (v >> 8) & 0xFF
    mv[off + 1] = v & 0xFF


def set_macs(buf: Any, off: int, dst: bytes | None = None, src: bytes | None = None) -> None:
    """Overwrite the Ethernet destination / source MAC of the frame at ``off``."""
    mv = _wview(buf)
    if off < 0 or off + 12 > mv.nbytes:
        raise ParseError("truncated-ethernet")
    for a, o in ((dst, off), (src, off + 6)):
        if a is not None:
            a = bytes(a)
            if len(a) != 6:
                raise ParseError("bad-address", "MAC must be 6 bytes")
            mv[o : o + 6] = a


def _ip_l4(mv: memoryview, l3off: int) -> FrameInfo:
    """Parse the IP header at l3off (to the end of the buffer), version from the first nibble."""
    if l3off < 0 or l3off >= mv.nbytes:
        raise ParseError("bad-bounds")
    ver = mv[l3off] >> 4
    if ver == 4:
        return parse_ipv4(mv, l3off)
    if ver == 6:
        return parse_ipv6(mv, l3off)
    raise ParseError("bad-ip-version")


def _l4_csum_field(info: FrameInfo) -> int:
    """Absolute offset of the L4 checksum covered by the pseudo-header, or -1."""
    if info.is_fragment:
        return -1
    p = info.l4_proto
    if p == IPPROTO_TCP and info.l4_len >= 20:
        return info.l4_offset + 16
    if p == IPPROTO_UDP and info.l4_len >= 8:
        return info.l4_offset + 6
    if p == IPPROTO_ICMPV6 and info.ip_version == 6 and info.l4_len >= 4:
        return info.l4_offset + 2
    return -1


def _update_field(mv: memoryview, coff: int, old: bytes, new: bytes, udp: bool) -> None:
    ck = _get16(mv, coff)
    if udp and ck == 0:
        return  # UDP/IPv4 without checksum stays without
    ck = _c.csum_update_bytes(ck, old, new)
    if udp and ck == 0:
        ck = 0xFFFF
    _put16(mv, coff, ck)


def set_addresses(buf: Any, l3off: int, src: bytes | None = None, dst: bytes | None = None) -> None:
    """Replace source / destination address, fixing the IPv4 and pseudo-header L4 checksums."""
    mv = _wview(buf)
    info = _ip_l4(mv, l3off)
    alen = 4 if info.ip_version == 4 else 16
    base = l3off + (12 if alen == 4 else 8)
    coff = _l4_csum_field(info)
    udp = info.l4_proto == IPPROTO_UDP
    for a, o in ((src, base), (dst, base + alen)):
        if a is None:
            continue
        a = bytes(a)
        if len(a) != alen:
            raise ParseError("bad-address", f"IPv{info.ip_version} address must be {alen} bytes")
        old = bytes(mv[o : o + alen])
        if old == a:
            continue
        if alen == 4:
            _put16(mv, l3off + 10, _c.csum_update_bytes(_get16(mv, l3off + 10), old, a))
        if coff >= 0:
            _update_field(mv, coff, old, a, udp)
        mv[o : o + alen] = a


def set_ports(buf: Any, l3off: int, l4off: int, sport: int | None = None,
              dport: int | None = None) -> None:
    """Replace TCP/UDP ports (ICMP echo: ``sport`` is the echo id), fixing the L4 checksum."""
    mv = _wview(buf)
    info = _ip_l4(mv, l3off)
    p = info.l4_proto
    if l4off < 0 or l4off + 8 > mv.nbytes:
        raise ParseError("bad-bounds")
    if p == IPPROTO_TCP:
        coff, udp, fields = l4off + 16, False, ((sport, l4off), (dport, l4off + 2))
        if l4off + 20 > mv.nbytes:
            raise ParseError("truncated-tcp")
    elif p == IPPROTO_UDP:
        coff, udp, fields = l4off + 6, True, ((sport, l4off), (dport, l4off + 2))
    elif p in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        coff, udp, fields = l4off + 2, False, ((sport, l4off + 4),)
    else:
        raise ParseError("not-ip", f"no ports for protocol {p}")
    for v, o in fields:
        if v is None:
            continue
        old = _get16(mv, o)
        new = v & 0xFFFF
        if old != new:
            _update_field(mv, coff, old.to_bytes(2, "big"), new.to_bytes(2, "big"), udp)
            _put16(mv, o, new)


def set_ttl(buf: Any, l3off: int, ttl: int) -> None:
    """Set the IPv4 TTL (checksum updated) or the IPv6 hop limit."""
    mv = _wview(buf)
    if l3off < 0 or l3off >= mv.nbytes:
        raise ParseError("bad-bounds")
    ver = mv[l3off] >> 4
    ttl &= 0xFF
    if ver == 4:
        if l3off + 20 > mv.nbytes:
            raise ParseError("truncated-ipv4")
        old = _get16(mv, l3off + 8)
        new = (ttl << 8) | (old & 0xFF)
        _put16(mv, l3off + 10, _c.csum_update16(_get16(mv, l3off + 10), old, new))
        mv[l3off + 8] = ttl
    elif ver == 6:
        if l3off + 40 > mv.nbytes:
            raise ParseError("truncated-ipv6")
        mv[l3off + 7] = ttl
    else:
        raise ParseError("bad-ip-version")


def set_tcp(buf: Any, l4off: int, seq: int | None = None, ack: int | None = None,
            window: int | None = None, flags: int | None = None) -> None:
    """Rewrite TCP sequence / ack / window / flags (low 8 bits), checksum updated."""
    mv = _wview(buf)
    if l4off < 0 or l4off + 20 > mv.nbytes:
        raise ParseError("truncated-tcp")
    ck = _get16(mv, l4off + 16)
    for v, o in ((seq, l4off + 4), (ack, l4off + 8)):
        if v is not None:
            old = int.from_bytes(mv[o : o + 4], "big")
            v &= 0xFFFFFFFF
            ck = _c.csum_update32(ck, old, v)
            mv[o : o + 4] = v.to_bytes(4, "big")
    if flags is not None:
        old = _get16(mv, l4off + 12)
        new = (old & 0xFF00) | (flags & 0xFF)
        ck = _c.csum_update16(ck, old, new)
        _put16(mv, l4off + 12, new)
    if window is not None:
        old = _get16(mv, l4off + 14)
        ck = _c.csum_update16(ck, old, window & 0xFFFF)
        _put16(mv, l4off + 14, window & 0xFFFF)
    _put16(mv, l4off + 16, ck)


# -- builders ---------------------------------------------------------------------------


def header_len(ip_version: int, l4_proto: int, options_len: int = 0) -> int:
    """Bytes of Ethernet + IP + L4 headers a builder writes (TCP options padded to 4)."""
    if ip_version == 4:
        n = ETH_HLEN + 20
    elif ip_version == 6:
        n = ETH_HLEN + 40
    else:
        raise ValueError(f"bad ip_version {ip_version}")
    if l4_proto == IPPROTO_TCP:
        if options_len < 0 or options_len > 40:
            raise ValueError("TCP options must be 0..40 bytes")
        return n + 20 + ((options_len + 3) & ~3)
    if l4_proto in (IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6):
        return n + 8
    raise ValueError(f"unsupported protocol {l4_proto}")


def _build_l3(mv: memoryview, offset: int, eth_dst: bytes, eth_src: bytes, src: bytes,
              dst: bytes, proto: int, l4len: int, frame_len: int) -> tuple[int, int]:
    """Ethernet + IP header; returns (l3 offset, pseudo-header partial sum)."""
    eth_dst, eth_src, src, dst = bytes(eth_dst), bytes(eth_src), bytes(src), bytes(dst)
    if len(eth_dst) != 6 or len(eth_src) != 6:
        raise ValueError("MAC addresses must be 6 bytes")
    if len(src) != len(dst) or len(src) not in (4, 16):
        raise ValueError("addresses must both be 4 or both 16 bytes")
    if offset < 0 or offset + frame_len > mv.nbytes:
        raise ValueError(f"frame of {frame_len} bytes at {offset} does not fit in {mv.nbytes}")
    l3 = offset + ETH_HLEN
    if len(src) == 4:
        if l4len + 20 > 0xFFFF:
            raise ValueError("IPv4 packet too long")
        mv[offset : l3] = eth_dst + eth_src + b"\x08\x00"
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + l4len, 0, 0, 255, proto, 0, src, dst)
        mv[l3 : l3 + 20] = hdr
        _put16(mv, l3 + 10, _c.inet_checksum(hdr))
        return l3, _c.pseudo_sum_v4(src, dst, proto, l4len)
    if l4len > 0xFFFF:
        raise ValueError("IPv6 payload too long")
    mv[offset : l3] = eth_dst + eth_src + b"\x86\xdd"
    mv[l3 : l3 + 40] = struct.pack("!IHBB16s16s", 0x60000000, l4len, proto, 255, src, dst)
    return l3, _c.pseudo_sum_v6(src, dst, proto, l4len)


def _finish_l4(mv: memoryview, l4: int, l4len: int, coff: int, s: int, udp: bool) -> None:
    c = _c.csum_fold(_c.csum_partial(mv, l4, l4len, s))
    if udp and c == 0:
        c = 0xFFFF
    _put16(mv, l4 + coff, c)


def build_tcp(buf: Any, offset: int, eth_dst: bytes, eth_src: bytes, src: bytes, dst: bytes,
              sport: int, dport: int, seq: int, ack: int, flags: int, window: int,
              payload_len: int, options: bytes = b"") -> int:
    """Write Ethernet+IP+TCP headers at ``offset`` before the payload; returns the frame length."""
    mv = _wview(buf)
    options = bytes(options)
    hl = header_len(4 if len(bytes(src)) == 4 else 6, IPPROTO_TCP, len(options))
    tcp_hl = hl - (ETH_HLEN + (20 if len(bytes(src)) == 4 else 40))
    l4len = tcp_hl + payload_len
    if payload_len < 0:
        raise ValueError("payload_len must be >= 0")
    l3, s = _build_l3(mv, offset, eth_dst, eth_src, src, dst, IPPROTO_TCP, l4len, hl + payload_len)
    l4 = hl + offset - tcp_hl
    mv[l4 : l4 + 20] = struct.pack("!HHIIBBHHH", sport & 0xFFFF, dport & 0xFFFF,
                                   seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (tcp_hl // 4) << 4,
                                   flags & 0xFF, window & 0xFFFF, 0, 0)
    mv[l4 + 20 : l4 + tcp_hl] = options + b"\0" * (tcp_hl - 20 - len(options))
    _finish_l4(mv, l4, l4len, 16, s, False)
    return hl + payload_len


def build_tcp_burst(buf: Any, offset: int, stride: int, payload_lens: Any, eth_dst: bytes,
                    eth_src: bytes, src: bytes, dst: bytes, sport: int, dport: int, seq: int,
                    ack: int, flags: int, window: int, out: Any) -> int:
    """A burst of one flow's TCP segments in one call: frame ``i`` at ``offset + i *
    stride`` carries ``payload_lens[i]`` bytes already in place after its headers and
    sequence number ``seq + sum(payload_lens[:i])`` (mod 2**32); everything else is
    shared. Frame lengths go to ``out[i]`` (a writable int64 buffer, ``array('q')``:
    no numpy). Returns the number of frames; all are bounds-checked before any is
    written (ValueError)."""
    lens = [int(x) for x in memoryview(payload_lens).cast("B").cast("q")]
    res = memoryview(out).cast("B").cast("q")
    if len(res) < len(lens):
        raise ValueError("out is shorter than payload_lens")
    if stride <= 0 or offset < 0:
        raise ValueError("offset must be >= 0 and stride > 0")
    size = _wview(buf).nbytes
    hl = header_len(4 if len(bytes(src)) == 4 else 6, IPPROTO_TCP)
    for i, n in enumerate(lens):
        if n < 0 or n + hl > stride or offset + i * stride + hl + n > size:
            raise ValueError("a segment does not fit in its slot")
    for i, n in enumerate(lens):
        res[i] = build_tcp(buf, offset + i * stride, eth_dst, eth_src, src, dst, sport, dport,
                           seq & 0xFFFFFFFF, ack, flags, window, n)
        seq += n
    return len(lens)


def build_udp(buf: Any, offset: int, eth_dst: bytes, eth_src: bytes, src: bytes, dst: bytes,
              sport: int, dport: int, payload_len: int, l4_csum: bool = True) -> int:
    """Write Ethernet+IP+UDP headers at ``offset`` before the payload; returns the frame length.

    ``l4_csum=False`` leaves an IPv4 UDP checksum at 0 ("none", RFC 768: what passt
    sends) without summing the payload; IPv6 always gets one (RFC 8200)."""
    mv = _wview(buf)
    if payload_len < 0:
        raise ValueError("payload_len must be >= 0")
    hl = header_len(4 if len(bytes(src)) == 4 else 6, IPPROTO_UDP)
    l4len = 8 + payload_len
    _l3, s = _build_l3(mv, offset, eth_dst, eth_src, src, dst, IPPROTO_UDP, l4len, hl + payload_len)
    l4 = offset + hl - 8
    mv[l4 : l4 + 8] = struct.pack("!HHHH", sport & 0xFFFF, dport & 0xFFFF, l4len, 0)
    if l4_csum or len(bytes(src)) == 16:
        _finish_l4(mv, l4, l4len, 6, s, True)
    return hl + payload_len


def build_icmp(buf: Any, offset: int, eth_dst: bytes, eth_src: bytes, src: bytes, dst: bytes,
               type: int, code: int, ident: int, seq: int, payload_len: int) -> int:
    """Write Ethernet+IP+ICMP (ICMPv6 for 16-byte addresses) headers; returns the frame length."""
    mv = _wview(buf)
    if payload_len < 0:
        raise ValueError("payload_len must be >= 0")
    v6 = len(bytes(src)) == 16
    proto = IPPROTO_ICMPV6 if v6 else IPPROTO_ICMP
    hl = header_len(6 if v6 else 4, proto)
    l4len = 8 + payload_len
    _l3, s = _build_l3(mv, offset, eth_dst, eth_src, src, dst, proto, l4len, hl + payload_len)
    l4 = offset + hl - 8
    mv[l4 : l4 + 8] = struct.pack("!BBHHH", type & 0xFF, code & 0xFF, 0, ident & 0xFFFF,
                                  seq & 0xFFFF)
    _finish_l4(mv, l4, l4len, 2, s if v6 else 0, False)
    return hl + payload_len
