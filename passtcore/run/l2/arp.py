"""ARP responder: proxy-ARP for the whole IPv4 space (passt-reference 5.1).

Design: sans-IO. ``arp_reply(frame, info, conf)`` answers an Ethernet/IPv4
who-has request with a 42-byte is-at carrying our MAC, for any target address,
except (a) gratuitous announcements (sender == target, non-zero), which need no
answer, and (b) the configured guest address, so that the guest's duplicate
address probes succeed. Anything but a request is dropped by raising
:class:`~passtcore.run.l2.common.Drop` (``parse_frame`` has already refused
truncated ARP and other hardware/protocol types). The reply is built by hand:
ARP has no checksum, and the frame is not padded to 60 bytes, as passt does.
"""
from __future__ import annotations

import struct
from typing import Any

from passtcore.run.l2.common import Drop, ReplyEngine

ETH_P_ARP = 0x0806
ARPOP_REQUEST, ARPOP_REPLY = 1, 2
# htype Ethernet, ptype IPv4, hlen 6, plen 4: parse_frame accepts nothing else
_FIXED = struct.pack("!HHBB", 1, 0x0800, 6, 4)


def arp_reply(frame: bytes | bytearray | memoryview, info: Any, conf: Any) -> bytes | None:
    """The is-at reply for a guest who-has, None when it must stay unanswered.

    Works from the fields ``parse_frame`` extracted (``info.arp_*``), which has
    already checked the length and the Ethernet/IPv4 hardware/protocol types.
    """
    if info.ethertype != ETH_P_ARP or len(info.arp_spa) != 4 or len(info.arp_tpa) != 4:
        raise Drop("arp-not-arp")
    if info.arp_op != ARPOP_REQUEST:
        raise Drop("arp-not-request")
    sha, spa, tpa = bytes(info.arp_sha), bytes(info.arp_spa), bytes(info.arp_tpa)
    if spa == tpa and spa != bytes(4):
        return None  # gratuitous announcement
    addr4 = getattr(conf, "addr4", None)
    if addr4 is not None and tpa == bytes(addr4):
        return None  # the guest's own address: let its DAD probe succeed
    our_mac = bytes(conf.our_mac)
    return b"".join((
        bytes(info.eth_src), our_mac, struct.pack("!H", ETH_P_ARP),
        _FIXED, struct.pack("!H", ARPOP_REPLY), our_mac, tpa, sha, spa,
    ))


class ArpEngine(ReplyEngine):
    """Daemon wrapper: guest ARP frames -> is-at replies to the guest."""

    name = "arp"

    def reply(self, frame: memoryview, info: Any) -> bytes | None:
        return arp_reply(frame, info, self.ctx.conf)
