"""DHCPv4 server for the one guest (passt-reference 5.2, 4.3-4.5).

Design: sans-IO. ``dhcp_reply(frame, info, conf)`` takes a guest frame already
parsed by ``passtcore.headers.parse_frame`` (so Ethernet padding is never read
as payload: only ``info.payload_len`` bytes are looked at) and returns the
reply frame or ``None``; a malformed message raises :class:`Drop` whose
``reason`` becomes the drop counter. :class:`DhcpEngine` wraps it for the
daemon (replies via ``ctx.to_guest``, counters via ``ctx.counters``).

There is no lease state: every DISCOVER gets an OFFER and every REQUEST an ACK
for the one configured address, with an infinite lease (0xffffffff). The reply
is the request edited in place (xid, flags, ciaddr, giaddr, chaddr, sname and
file kept), options in ascending number order as passt emits them, padded so
that the options area is at least 60 bytes (300-byte BOOTP minimum).

This module also holds what the other L2 services share: the :class:`Drop`
exception, the :class:`ReplyEngine` base (counting, never raising), domain-name
encoding (RFC 1035 labels, with RFC 3397 compression for option 119; NDP's
DNSSL and DHCPv6's option 24 use it uncompressed), the resolvers and search
list as advertised, and ``udp_frame``/``icmp_frame`` around the header builders
of ``passtcore.headers``.
"""
from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from typing import Any

import passtcore

log = logging.getLogger("passtcore.dhcp")

DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68
MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTP_FIXED = 236  # op .. file, before the cookie
MIN_MESSAGE = BOOTP_FIXED + 4  # passt: shorter than 240 bytes is dropped
MIN_OPTIONS_AREA = 60  # options area (after the cookie) is padded up to this

BOOTREQUEST, BOOTREPLY = 1, 2
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
INFINITE = 0xFFFFFFFF
MAX_DNS = 3
MAX_SEARCH = 6


class Drop(Exception):
    """A guest message that is malformed or not for us; ``reason`` names the counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- helpers shared with ndp.py / dhcpv6.py -------------------------------------------

def _labels(name: str) -> list[bytes] | None:
    """RFC 1035 labels of ``name``; None if it cannot be encoded."""
    name = name.strip().rstrip(".")
    if not name:
        return None
    try:
        labels = [lab.encode("idna") if not lab.isascii() else lab.encode("ascii")
                  for lab in name.split(".")]
    except UnicodeError:
        return None
    if any(not 1 <= len(lab) <= 63 for lab in labels):
        return None
    if sum(len(lab) + 1 for lab in labels) + 1 > 255:
        return None
    return labels


def encode_domains(names: Iterable[str], compress: bool = False) -> bytes:
    """Domain names as RFC 1035 label sequences, concatenated.

    With ``compress`` a repeated suffix becomes a pointer (0xC000 | offset)
    relative to the start of the returned data (RFC 3397 for DHCP option 119).
    Names that cannot be encoded are skipped. Always built afresh: passt's 2023
    DHCPv6 encoder corrupted a static buffer on repeated replies.
    """
    out = bytearray()
    seen: dict[tuple[bytes, ...], int] = {}
    for name in names:
        labels = _labels(name)
        if labels is None:
            continue
        key_labels = [lab.lower() for lab in labels]
        for i in range(len(labels)):
            suffix = tuple(key_labels[i:])
            if compress and suffix in seen:
                out += struct.pack("!H", 0xC000 | seen[suffix])
                break
            if compress and len(out) < 0x3FFF:
                seen[suffix] = len(out)
            out.append(len(labels[i]))
            out += labels[i]
        else:
            out.append(0)
    return bytes(out)


def conf_flag(conf: Any, name: str) -> bool:
    """An option flag of NetConfig (``no_dhcp`` ...), False when absent."""
    return bool(getattr(conf, name, False))


def advertised_mtu(conf: Any) -> int:
    """The MTU to advertise, 0 for none (``-m 0``)."""
    mtu = getattr(conf, "mtu", None)
    return int(mtu) if mtu and mtu > 0 else 0


def guest_dns(conf: Any, family: int) -> list[bytes]:
    """Resolvers to advertise (at most 3), none with ``--no-dhcp-dns``.

    ``conf.dns4/dns6`` already hold what the guest can reach: conf.py replaced
    loopback resolvers by the gateway (passt-reference 4.5).
    """
    if conf_flag(conf, "no_dhcp_dns"):
        return []
    size = 4 if family == 4 else 16
    servers = getattr(conf, "dns4" if family == 4 else "dns6", None) or []
    return [bytes(a) for a in servers if len(a) == size][:MAX_DNS]


def guest_search(conf: Any) -> list[str]:
    """The search list as told to the guest (first 6 names)."""
    if conf_flag(conf, "no_dhcp_search"):
        return []
    return [s for s in (getattr(conf, "search", None) or []) if s][:MAX_SEARCH]


def udp_frame(eth_dst: bytes, eth_src: bytes, src: bytes, dst: bytes,
              sport: int, dport: int, payload: bytes) -> bytes:
    """A complete Ethernet/IP/UDP frame around ``payload``, checksums filled."""
    h = passtcore.headers
    hl = h.header_len(4 if len(src) == 4 else 6, 17)
    buf = bytearray(hl + len(payload))
    buf[hl:] = payload
    n = h.build_udp(buf, 0, eth_dst, eth_src, src, dst, sport, dport, len(payload))
    return bytes(buf[:n])


class ReplyEngine:
    """Base of the request/reply services: ``reply()`` is the sans-IO part.

    ``handle()`` sends what ``reply()`` returns (a frame, a list of frames or
    None) through ``ctx.to_guest`` and counts: ``<name>-reply``,
    ``<name>-ignored`` (valid but unanswered), drops by :class:`Drop` reason.
    Nothing a guest sends can raise out of ``handle()``.
    """

    name = "l2"
    disabled_by: tuple[str, ...] = ()

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def reply(self, frame: memoryview, info: Any) -> bytes | list[bytes] | None:
        raise NotImplementedError

    def handle(self, frame: memoryview, info: Any) -> None:
        ctx = self.ctx
        if any(conf_flag(ctx.conf, flag) for flag in self.disabled_by):
            ctx.counters.drop(f"{self.name}-disabled")
            return
        try:
            out = self.reply(frame, info)
        except Drop as exc:
            ctx.counters.drop(exc.reason)
            return
        except Exception:  # a bug must not let one guest frame stop the daemon
            log.exception("%s: unexpected error on a guest frame", self.name)
            ctx.counters.drop(f"{self.name}-error")
            return
        if not out:
            ctx.counters.inc(f"{self.name}-ignored")
            return
        frames = [out] if isinstance(out, (bytes, bytearray)) else out
        ctx.counters.inc(f"{self.name}-reply", len(frames))
        for f in frames:
            ctx.to_guest(f)

    def close(self) -> None:
        pass


def icmp_frame(eth_dst: bytes, eth_src: bytes, src: bytes, dst: bytes, icmp_type: int,
               code: int, word1: int, word2: int, body: bytes) -> bytes:
    """An Ethernet/IP/ICMP(v6) frame: type, code, checksum, two 16-bit words, body.

    The two words are the echo id/sequence, or whatever the message keeps in
    the 4 bytes after the checksum (RA: hop limit + flags, router lifetime;
    NA: flags). ICMPv6 when the addresses are 16 bytes; checksums filled.
    """
    h = passtcore.headers
    hl = h.header_len(4 if len(src) == 4 else 6, 1 if len(src) == 4 else 58)
    buf = bytearray(hl + len(body))
    buf[hl:] = body
    n = h.build_icmp(buf, 0, eth_dst, eth_src, src, dst, icmp_type, code, word1, word2, len(body))
    return bytes(buf[:n])


# --- DHCPv4 ---------------------------------------------------------------------------

def parse_options(data: bytes | memoryview) -> dict[int, bytes]:
    """Options of a DHCP message (the bytes after the magic cookie).

    Bounded: stops at option 255 or the end; an option running past the end
    raises Drop. Repeated options are concatenated (RFC 3396).
    """
    opts: dict[int, bytes] = {}
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0:
            i += 1
            continue
        if code == 255:
            break
        if i + 1 >= n or i + 2 + data[i + 1] > n:
            raise Drop("dhcp-truncated-option")
        ln = data[i + 1]
        opts[code] = opts.get(code, b"") + bytes(data[i + 2:i + 2 + ln])
        i += 2 + ln
    return opts


def _option(code: int, value: bytes) -> bytes:
    """One option, split into several instances if longer than 255 bytes (RFC 3396)."""
    out = bytearray()
    for i in range(0, max(len(value), 1), 255):
        chunk = value[i:i + 255]
        out += bytes((code, len(chunk))) + chunk
    return bytes(out)


def _mask(prefix: int) -> int:
    return (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF if prefix else 0


def build_options(conf: Any, msg_type: int) -> bytes:
    """The reply's options area (after the cookie), ascending option numbers."""
    addr = int.from_bytes(conf.addr4, "big")
    gw_b = bytes(conf.gw4) if getattr(conf, "gw4", None) else None
    prefix = int(getattr(conf, "prefix4", 24) or 0)
    mask = _mask(prefix)
    out = bytearray()
    out += _option(1, mask.to_bytes(4, "big"))
    if gw_b:
        out += _option(3, gw_b)
    dns = guest_dns(conf, 4)
    if dns:
        out += _option(6, b"".join(dns))
    mtu = advertised_mtu(conf)
    if mtu:
        out += _option(26, struct.pack("!H", min(mtu, 0xFFFF)))
    out += _option(51, struct.pack("!I", INFINITE))
    out += _option(53, bytes((msg_type,)))
    # server identifier: the gateway, the address the guest believes it talks to
    out += _option(54, gw_b or bytes(conf.addr4))
    search = encode_domains(guest_search(conf), compress=True)
    if search:
        out += _option(119, search)
    if gw_b:
        gw = int.from_bytes(gw_b, "big")
        if (addr & mask) != (gw & mask):
            # gateway off-subnet: host route to it, then default via it (RFC 3442)
            out += _option(121, bytes((32,)) + gw_b + bytes(4) + bytes((0,)) + gw_b)
    out += b"\xff\x00"
    if len(out) < MIN_OPTIONS_AREA:
        out += bytes(MIN_OPTIONS_AREA - len(out))
    return bytes(out)


_REPLY_TYPE = {DISCOVER: OFFER, REQUEST: ACK}


def dhcp_reply(frame: bytes | bytearray | memoryview, info: Any, conf: Any) -> bytes | None:
    """The OFFER/ACK for a guest DISCOVER/REQUEST; None for types not answered.

    Raises :class:`Drop` for malformed or non-request messages.
    """
    if info.ip_version != 4 or info.l4_proto != 17 or info.dport != DHCP_SERVER_PORT:
        raise Drop("dhcp-not-dhcp")
    if not getattr(conf, "addr4", None):
        raise Drop("dhcp-no-ipv4")
    mv = memoryview(frame)
    msg = mv[info.payload_offset:info.payload_offset + info.payload_len]
    if len(msg) < MIN_MESSAGE:
        raise Drop("dhcp-short")
    if msg[0] != BOOTREQUEST:
        raise Drop("dhcp-not-request")
    if bytes(msg[BOOTP_FIXED:MIN_MESSAGE]) != MAGIC_COOKIE:
        raise Drop("dhcp-bad-cookie")
    opts = parse_options(msg[MIN_MESSAGE:])
    mtype = opts.get(53)
    if mtype is None or len(mtype) != 1:
        raise Drop("dhcp-no-message-type")
    reply_type = _REPLY_TYPE.get(mtype[0])
    if reply_type is None:
        return None  # DECLINE, RELEASE, INFORM...: passt stays silent
    head = bytearray(msg[:BOOTP_FIXED])
    head[0] = BOOTREPLY
    head[8:10] = b"\x00\x00"  # secs
    head[16:20] = bytes(conf.addr4)  # yiaddr
    payload = bytes(head) + MAGIC_COOKIE + build_options(conf, reply_type)
    src = bytes(conf.gw4) if getattr(conf, "gw4", None) else bytes(conf.addr4)
    return udp_frame(bytes(info.eth_src), bytes(conf.our_mac), src, bytes(conf.addr4),
                     DHCP_SERVER_PORT, DHCP_CLIENT_PORT, payload)


class DhcpEngine(ReplyEngine):
    """Daemon wrapper: guest UDP to port 67 -> OFFER/ACK to the guest."""

    name = "dhcp"
    disabled_by = ("no_dhcp",)

    def reply(self, frame: memoryview, info: Any) -> bytes | None:
        return dhcp_reply(frame, info, self.ctx.conf)


__all__ = (
    "Drop", "ReplyEngine", "DhcpEngine", "dhcp_reply", "build_options", "parse_options",
    "encode_domains", "guest_dns", "guest_search", "udp_frame", "advertised_mtu",
)
