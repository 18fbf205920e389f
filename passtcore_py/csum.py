"""Internet checksums (RFC 1071 / RFC 1624), pure-Python twin of ``passtcore._csum``.

Design
------
The one's-complement sum of big-endian 16-bit words is congruent, modulo
0xFFFF, to the whole buffer read as one big-endian integer (because
2**16 == 1 mod 0xFFFF).  So instead of a Python loop over words we let
CPython's bigint code do the work: ``int.from_bytes(data, "big") % 0xFFFF``
runs in C and is linear in the length.

The value returned by :func:`csum_partial` is *canonical* so that both
backends agree bit for bit: it is the end-around-carry sum reduced to
16 bits, i.e. ``0`` only when every word (and ``init``) is zero, otherwise a
value in ``1..0xFFFF`` congruent to the sum modulo 0xFFFF.  It is a valid
partial sum for chaining through ``init`` and for :func:`csum_fold`.

Frame-level helpers (:func:`fill_checksums`, :func:`verify_frame`) walk the
headers with the bounds-checked parser of ``passtcore_py.headers``.
"""
from __future__ import annotations

from typing import Any

__all__ = [
    "csum_partial",
    "csum_fold",
    "inet_checksum",
    "pseudo_sum_v4",
    "pseudo_sum_v6",
    "ipv4_header_checksum",
    "l4_checksum",
    "fill_checksums",
    "verify_frame",
    "csum_update16",
    "csum_update32",
    "csum_update_bytes",
    "csum_add",
    "has_avx2",
    "set_force_scalar",
]

_M = 0xFFFF
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58


def _span(buf: Any, offset: int, length: int) -> memoryview:
    """Bounds-checked read-only byte view of ``buf[offset:offset+length]``."""
    mv = memoryview(buf)
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    n = mv.nbytes
    if length == -1:
        length = n - offset
    if offset < 0 or length < 0 or offset + length > n:
        raise ValueError(f"range out of bounds: offset={offset} length={length} size={n}")
    return mv[offset : offset + length]


def _canon(total: int, nonzero: bool) -> int:
    """Canonical reduced sum: 0 only for an all-zero input, else 1..0xFFFF."""
    if not nonzero:
        return 0
    r = total % _M
    return r if r else _M


def csum_partial(buf: Any, offset: int = 0, length: int = -1, init: int = 0) -> int:
    """One's-complement sum of ``buf[offset:offset+length]`` plus ``init`` (not complemented)."""
    if init < 0:
        raise ValueError("init must be >= 0")
    if type(buf) is bytes and offset == 0 and length == -1:
        data = buf
    else:
        data = _span(buf, offset, length)
    x = int.from_bytes(data, "big")
    if len(data) & 1:
        x <<= 8  # odd trailing byte is the high byte of a zero-padded word
    return _canon(x + init, bool(x) or bool(init))


def csum_add(a: int, b: int) -> int:
    """One's-complement addition of two partial sums (canonical result)."""
    return _canon(a + b, bool(a) or bool(b))


def csum_fold(sum32: int) -> int:
    """Fold a partial sum to 16 bits and complement it: the checksum field value."""
    if sum32 < 0:
        raise ValueError("sum must be >= 0")
    return (~_canon(sum32, bool(sum32))) & _M


def inet_checksum(buf: Any, offset: int = 0, length: int = -1) -> int:
    return csum_fold(csum_partial(buf, offset, length))


def _addr(a: Any, n: int) -> bytes:
    a = bytes(a)
    if len(a) != n:
        raise ValueError(f"address must be {n} bytes, got {len(a)}")
    return a


def pseudo_sum_v4(src: bytes, dst: bytes, proto: int, l4len: int) -> int:
    """Partial sum of the IPv4 pseudo-header ``src dst 0 proto l4len``."""
    s = int.from_bytes(_addr(src, 4) + _addr(dst, 4), "big")
    return _canon(s + (proto & 0xFF) + (l4len & _M), bool(s or proto & 0xFF or l4len & _M))


def pseudo_sum_v6(src: bytes, dst: bytes, proto: int, l4len: int) -> int:
    """Partial sum of the IPv6 pseudo-header ``src dst len32 0 0 0 nh``."""
    s = int.from_bytes(_addr(src, 16) + _addr(dst, 16), "big")
    l4len &= 0xFFFFFFFF
    extra = (l4len >> 16) + (l4len & _M) + (proto & 0xFF)
    return _canon(s + extra, bool(s or extra))


def ipv4_header_checksum(buf: Any, l3off: int) -> int:
    """IPv4 header checksum of the header at ``l3off``, the checksum field taken as 0."""
    mv = _span(buf, l3off, -1)
    if len(mv) < 20:
        raise ValueError("truncated IPv4 header")
    ihl = (mv[0] & 0x0F) * 4
    if mv[0] >> 4 != 4 or ihl < 20 or ihl > len(mv):
        raise ValueError("bad IPv4 header")
    s = csum_partial(mv, 0, 10)
    s = csum_partial(mv, 12, ihl - 12, s)
    return csum_fold(s)


def _pseudo_from_l3(mv: memoryview, l3off: int, proto: int, l4len: int) -> int:
    if len(mv) < l3off + 1:
        raise ValueError("truncated IP header")
    ver = mv[l3off] >> 4
    if ver == 4:
        if len(mv) < l3off + 20:
            raise ValueError("truncated IPv4 header")
        return pseudo_sum_v4(mv[l3off + 12 : l3off + 16], mv[l3off + 16 : l3off + 20], proto, l4len)
    if ver == 6:
        if len(mv) < l3off + 40:
            raise ValueError("truncated IPv6 header")
        return pseudo_sum_v6(mv[l3off + 8 : l3off + 24], mv[l3off + 24 : l3off + 40], proto, l4len)
    raise ValueError(f"not an IP header (version {ver})")


def l4_checksum(buf: Any, l3off: int, l4off: int, l4len: int, proto: int) -> int:
    """Checksum of the L4 segment at ``l4off`` (its checksum field taken as 0).

    TCP, UDP and ICMPv6 include the pseudo-header built from the IPv4/IPv6
    header at ``l3off``; ICMPv4 has none.  A UDP result of 0 is returned as
    0xFFFF (0 means "no checksum" on the wire).
    """
    mv = _span(buf, 0, -1)
    _span(mv, l4off, l4len)  # bounds check
    if proto == IPPROTO_TCP:
        coff = 16
    elif proto == IPPROTO_UDP:
        coff = 6
    elif proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        coff = 2
    else:
        raise ValueError(f"no checksum for protocol {proto}")
    if l4len < coff + 2:
        raise ValueError("L4 segment too short for its checksum field")
    s = 0 if proto == IPPROTO_ICMP else _pseudo_from_l3(mv, l3off, proto, l4len)
    s = csum_partial(mv, l4off, coff, s)
    s = csum_partial(mv, l4off + coff + 2, l4len - coff - 2, s)
    c = csum_fold(s)
    if proto == IPPROTO_UDP and c == 0:
        c = _M
    return c


def _l4_csum_offset(proto: int) -> int:
    return {IPPROTO_TCP: 16, IPPROTO_UDP: 6, IPPROTO_ICMP: 2, IPPROTO_ICMPV6: 2}.get(proto, -1)


def fill_checksums(buf: Any, offset: int = 0, length: int = -1) -> None:
    """Set, in place, the IPv4 header checksum and the L4 checksum of the frame at ``offset``.

    Raises ``ParseError`` for frames that do not parse.  Fragments get only
    their IPv4 header checksum (the L4 checksum spans the whole datagram).
    """
    from passtcore_py.headers import parse_frame

    info = parse_frame(buf, offset, length)
    mv = _span(buf, 0, -1)
    if info.ip_version == 4:
        l3 = info.l3_offset
        mv[l3 + 10 : l3 + 12] = b"\0\0"
        c = ipv4_header_checksum(mv, l3)
        mv[l3 + 10 : l3 + 12] = c.to_bytes(2, "big")
    if info.ip_version and not info.is_fragment:
        co = _l4_csum_offset(info.l4_proto)
        if co >= 0 and not (info.l4_proto == IPPROTO_ICMP and info.ip_version == 6) and not (
            info.l4_proto == IPPROTO_ICMPV6 and info.ip_version == 4
        ):
            c = l4_checksum(mv, info.l3_offset, info.l4_offset, info.l4_len, info.l4_proto)
            mv[info.l4_offset + co : info.l4_offset + co + 2] = c.to_bytes(2, "big")


def verify_frame(buf: Any, offset: int = 0, length: int = -1) -> bool:
    """True when the IPv4 header checksum and the L4 checksum of the frame are correct.

    A frame that does not parse is not correct (False).  IPv4 UDP with a zero
    checksum field ("no checksum") is correct.  Non-IP frames and fragments'
    L4 parts have nothing to verify.
    """
    from passtcore_py.headers import ParseError, parse_frame

    try:
        info = parse_frame(buf, offset, length)
    except ParseError:
        return False
    mv = _span(buf, 0, -1)
    if info.ip_version == 4:
        l3 = info.l3_offset
        ihl = (mv[l3] & 0x0F) * 4
        if csum_fold(csum_partial(mv, l3, ihl)) != 0:
            return False
    if info.ip_version and not info.is_fragment:
        p = info.l4_proto
        if p == IPPROTO_ICMP and info.ip_version == 4:
            s = 0
        elif p in (IPPROTO_TCP, IPPROTO_UDP) or (p == IPPROTO_ICMPV6 and info.ip_version == 6):
            if p == IPPROTO_UDP and info.ip_version == 4 and mv[info.l4_offset + 6] == 0 and (
                mv[info.l4_offset + 7] == 0
            ):
                return True
            s = _pseudo_from_l3(mv, info.l3_offset, p, info.l4_len)
        else:
            return True
        if csum_fold(csum_partial(mv, info.l4_offset, info.l4_len, s)) != 0:
            return False
    return True


def csum_update16(csum: int, old: int, new: int) -> int:
    """RFC 1624 eq. 3: new checksum field after a 16-bit field changes ``old`` -> ``new``."""
    s = ((~csum) & _M) + ((~old) & _M) + (new & _M)
    return (~_canon(s, bool(s))) & _M


def csum_update32(csum: int, old: int, new: int) -> int:
    """RFC 1624 update for a 32-bit field (two 16-bit halves)."""
    s = (
        ((~csum) & _M)
        + ((~old >> 16) & _M)
        + ((~old) & _M)
        + ((new >> 16) & _M)
        + (new & _M)
    )
    return (~_canon(s, bool(s))) & _M


def csum_update_bytes(csum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 update for a field of any even length (e.g. an address)."""
    old = bytes(old)
    new = bytes(new)
    if len(old) != len(new) or len(old) & 1:
        raise ValueError("old and new must have the same even length")
    s = (~csum) & _M
    for i in range(0, len(old), 2):  # fields are short: addresses at most
        s += (~((old[i] << 8) | old[i + 1])) & _M
        s += (new[i] << 8) | new[i + 1]
    return (~_canon(s, bool(s))) & _M


def has_avx2() -> bool:
    """API parity with the Cython kernel: the twin has no SIMD loop."""
    return False


def set_force_scalar(on: bool) -> bool:
    """API parity with the Cython kernel (no effect here); returns False."""
    return False
