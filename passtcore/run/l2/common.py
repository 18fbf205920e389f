"""What the L2/L3 service engines share (arp, dhcp, ndp, dhcpv6, icmp).

The :class:`Drop` exception (its ``reason`` names the drop counter), the
:class:`ReplyEngine` base (counting, never raising out of ``handle``), domain
-name encoding (RFC 1035 labels, with RFC 3397 compression for DHCP option
119; NDP's DNSSL and DHCPv6's option 24 use it uncompressed), the resolvers and
search list as advertised to the guest, and ``udp_frame``/``icmp_frame``
around the header builders of ``passtcore.headers``.
"""
from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from typing import Any

import passtcore

log = logging.getLogger("passtcore.l2")

INFINITE = 0xFFFFFFFF
MAX_DNS = 3
MAX_SEARCH = 6


class Drop(Exception):
    """A guest message that is malformed or not for us; ``reason`` names the counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason



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
    A disabled service is never built (the dispatcher drops its frames), and
    an unexpected error is the dispatcher's to count (``engine-error-<route>``).
    """

    name = "l2"

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def reply(self, frame: memoryview, info: Any) -> bytes | list[bytes] | None:
        raise NotImplementedError

    def handle(self, frame: memoryview, info: Any) -> None:
        ctx = self.ctx
        try:
            out = self.reply(frame, info)
        except Drop as exc:
            ctx.counters.drop(exc.reason)
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
