"""NDP responder: Router Advertisements and proxy Neighbour Advertisements
(passt-reference 5.3, 4.8).

Design: sans-IO. ``ndp_reply(frame, info, conf)`` takes a parsed guest ICMPv6
frame of type 133-136 and returns the reply frame or None:

- Router Solicitation -> Router Advertisement (M=1, O=0, router lifetime 9000,
  hop limit 255) with, in order: Prefix Information (the /64 of the assigned
  address, L+A, 3600 s), MTU, RDNSS (60 s), DNSSL (60 s), source link-layer
  address. Unlike passt 2023: DNSSL does not depend on RDNSS, it is padded to a
  multiple of 8 exactly (no stray 8 bytes past its length), and an RS from ::
  is answered to all-nodes ff02::1 instead of ::.
- Neighbour Solicitation -> Neighbour Advertisement (R, S, O) with our MAC for
  any target (proxy-ND), unicast to the sender; DAD probes (source ::) are not
  answered so that the guest's duplicate address detection succeeds.
- RA/NA from the guest are ignored.

Messages that RFC 4861 says to discard (hop limit != 255, code != 0, short)
raise :class:`~passtcore.run.l2.common.Drop`. Our source address is the gateway
when it is link-local, else our own link-local (:func:`router_ll`).
"""
from __future__ import annotations

import struct
from typing import Any

from passtcore.run.l2.common import (Drop, ReplyEngine, advertised_mtu, conf_flag, encode_domains,
                                guest_dns, guest_search, icmp_frame)

RS, RA, NS, NA = 133, 134, 135, 136
ROUTER_LIFETIME = 9000
PREFIX_LIFETIME = 3600
DNS_LIFETIME = 60
RA_FLAG_MANAGED = 0x80
NA_FLAGS = 0xE000  # Router, Solicited, Override (high bits of the first word)
OPT_SLLA, OPT_TLLA, OPT_PREFIX, OPT_MTU, OPT_RDNSS, OPT_DNSSL = 1, 2, 3, 5, 25, 31
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
UNSPECIFIED6 = bytes(16)


def is_link_local6(addr: bytes | None) -> bool:
    return bool(addr) and len(addr) == 16 and addr[0] == 0xFE and (addr[1] & 0xC0) == 0x80


def multicast_mac(addr6: bytes) -> bytes:
    """Ethernet address of an IPv6 multicast group (RFC 2464)."""
    return b"\x33\x33" + bytes(addr6[12:16])


def router_ll(conf: Any, what: str = "ndp") -> bytes:
    """Our IPv6 source for RA/NA/DHCPv6: the gateway if link-local, else our link-local.

    Without one it raises Drop(``<what>-no-link-local``): the caller's service
    (``ndp``, ``dhcpv6``) names the counter.
    """
    for cand in (getattr(conf, "gw6_ll", None), getattr(conf, "gw6", None),
                 getattr(conf, "addr6_ll", None)):
        if cand and is_link_local6(bytes(cand)):
            return bytes(cand)
    raise Drop(f"{what}-no-link-local")


def _pad8(option: bytes) -> bytes:
    """Zero-pad an option to a multiple of 8 bytes (exactly: nothing when already aligned)."""
    return option + bytes(-len(option) % 8)


def ra_options(conf: Any) -> bytes:
    """The RA options after reachable/retrans timers, in passt's order."""
    out = bytearray()
    prefix = bytes(conf.addr6)[:8] + bytes(8)
    out += struct.pack("!BBBBIII", OPT_PREFIX, 4, 64, 0xC0, PREFIX_LIFETIME, PREFIX_LIFETIME, 0)
    out += prefix
    mtu = advertised_mtu(conf)
    if mtu:
        out += struct.pack("!BBHI", OPT_MTU, 1, 0, mtu)
    dns = guest_dns(conf, 6)
    if dns:
        out += struct.pack("!BBHI", OPT_RDNSS, 1 + 2 * len(dns), 0, DNS_LIFETIME) + b"".join(dns)
    names = encode_domains(guest_search(conf))
    if names:
        body = _pad8(struct.pack("!BBHI", OPT_DNSSL, 0, 0, DNS_LIFETIME) + names)
        if len(body) // 8 <= 255:
            out += bytes((OPT_DNSSL, len(body) // 8)) + body[2:]
    out += bytes((OPT_SLLA, 1)) + bytes(conf.our_mac)
    return bytes(out)


def ndp_reply(frame: bytes | bytearray | memoryview, info: Any, conf: Any) -> bytes | None:
    """The RA or NA answering a guest RS or NS; None for what needs no answer."""
    if info.ip_version != 6 or info.l4_proto != 58:
        raise Drop("ndp-not-icmpv6")
    mtype = info.icmp_type
    if mtype not in (RS, NS):
        if mtype in (RA, NA):
            return None
        raise Drop("ndp-not-ndp")
    if info.icmp_code != 0:
        raise Drop("ndp-bad-code")
    if info.ttl != 255:
        raise Drop("ndp-bad-hop-limit")  # RFC 4861: may have crossed a router
    mv = memoryview(frame)
    body = mv[info.l4_offset:info.l4_offset + info.l4_len]
    src = bytes(info.src)
    our_mac = bytes(conf.our_mac)
    if mtype == NS:
        if len(body) < 24:
            raise Drop("ndp-truncated")
        target = bytes(body[8:24])
        if target[0] == 0xFF:
            raise Drop("ndp-multicast-target")
        if src == UNSPECIFIED6:
            return None  # DAD probe: silence lets the guest keep its address
        tlla = bytes((OPT_TLLA, 1)) + our_mac
        return icmp_frame(bytes(info.eth_src), our_mac, router_ll(conf), src,
                          NA, 0, NA_FLAGS, 0, target + tlla)
    if len(body) < 8:
        raise Drop("ndp-truncated")
    if conf_flag(conf, "no_ra"):
        return None
    if not getattr(conf, "addr6", None):
        raise Drop("ndp-no-ipv6")
    if src == UNSPECIFIED6:
        dst, eth_dst = ALL_NODES, multicast_mac(ALL_NODES)
    else:
        dst, eth_dst = src, bytes(info.eth_src)
    payload = struct.pack("!II", 0, 0) + ra_options(conf)  # reachable, retrans timers
    return icmp_frame(eth_dst, our_mac, router_ll(conf), dst, RA, 0,
                      (255 << 8) | RA_FLAG_MANAGED, ROUTER_LIFETIME, payload)


class NdpEngine(ReplyEngine):
    """Daemon wrapper: guest ICMPv6 133-136 -> RA/NA to the guest.

    The guest's link-local address is learned by ``Context.learn`` for every frame.
    """

    name = "ndp"

    def reply(self, frame: memoryview, info: Any) -> bytes | None:
        return ndp_reply(frame, info, self.ctx.conf)
