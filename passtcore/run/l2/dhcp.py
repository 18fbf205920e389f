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
"""
from __future__ import annotations

import logging
import struct
from typing import Any

from passtcore.run.l2.common import (
    INFINITE, Drop, ReplyEngine, advertised_mtu, encode_domains, guest_dns, guest_search, udp_frame,
)

log = logging.getLogger("passtcore.dhcp")

DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68
MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTP_FIXED = 236  # op .. file, before the cookie
MIN_MESSAGE = BOOTP_FIXED + 4  # passt: shorter than 240 bytes is dropped
MIN_OPTIONS_AREA = 60  # options area (after the cookie) is padded up to this

BOOTREQUEST, BOOTREPLY = 1, 2
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8


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

    def reply(self, frame: memoryview, info: Any) -> bytes | None:
        return dhcp_reply(frame, info, self.ctx.conf)


__all__ = (
    "Drop", "ReplyEngine", "DhcpEngine", "dhcp_reply", "build_options", "parse_options",
    "encode_domains", "guest_dns", "guest_search", "udp_frame", "advertised_mtu",
)
