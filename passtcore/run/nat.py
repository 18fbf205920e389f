"""Address translation shared by the TCP, UDP and ICMP engines (passt-reference 4.6, 4.7).

Guest traffic to the gateway address is sent to the host's loopback unless
``--no-map-gw``; host traffic coming from loopback, the unspecified address or
the guest's own address is presented to the guest as coming from the gateway
(IPv6: the gateway if it is link-local, else our link-local address, sent to
the guest's link-local address). The guest's destination address is always the
one learned from its traffic (``ctx.addr_seen4/6``), so a re-addressed guest
keeps working. IPv6 link-local destinations get the scope of the template
(or ``--outbound-if6``) interface. The listening sockets of forwarded ports are
in ``io/listeners.py``.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Any

from passtcore.run.flows import V4MAPPED, to16

V4_LOOPBACK = bytes([127, 0, 0, 1])
V6_LOOPBACK = bytes(15) + b"\x01"
V4_ANY = bytes(4)
V6_ANY = bytes(16)
__all__ = ["to16", "V4MAPPED"]


def is_v6_ll(addr: bytes) -> bool:
    return len(addr) == 16 and addr[0] == 0xFE and (addr[1] & 0xC0) == 0x80


def is_local_src(addr: bytes) -> bool:
    """Loopback or unspecified source."""
    if len(addr) == 4:
        return addr[0] == 127 or addr == V4_ANY
    return addr in (V6_LOOPBACK, V6_ANY)


def _b(value: Any) -> bytes | None:
    """Accept bytes, str or ipaddress objects from the Context/NetConfig."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value) or None
    try:
        return ipaddress.ip_address(str(value).split("%")[0]).packed
    except ValueError:
        return None


def conf_addr(conf: Any, name: str) -> bytes | None:
    return _b(getattr(conf, name, None))


def guest_addr(ctx: Any, version: int, link_local: bool = False) -> bytes | None:
    """Where frames to the guest go: the address it was last seen using (4.7)."""
    conf = ctx.conf
    if version == 4:
        return _b(getattr(ctx, "addr_seen4", None)) or conf_addr(conf, "addr4")
    seen6 = _b(getattr(ctx, "addr_seen6", None)) or conf_addr(conf, "addr6")
    if link_local:
        # Until the guest has used its link-local address, its global one works
        # as well (conf.addr6_ll is *ours*, never a destination).
        return _b(getattr(ctx, "addr_ll_seen6", None)) or seen6
    return seen6


def map_gw(ctx: Any) -> bool:
    conf = ctx.conf
    if getattr(conf, "no_map_gw", False):
        return False
    return bool(getattr(conf, "map_gw", True))


def is_gateway(ctx: Any, addr: bytes) -> bool:
    conf = ctx.conf
    if len(addr) == 4:
        return addr == conf_addr(conf, "gw4")
    return addr in (conf_addr(conf, "gw6"), conf_addr(conf, "gw6_ll"))


def outbound_target(ctx: Any, dst: bytes) -> bytes:
    """Host-side destination of guest traffic to ``dst`` (TCP rule, 4.6)."""
    if map_gw(ctx) and is_gateway(ctx, dst):
        return V4_LOOPBACK if len(dst) == 4 else V6_LOOPBACK
    return dst


def inbound_source(ctx: Any, src: bytes) -> tuple[bytes, bytes | None]:
    """(source shown to the guest, guest destination) for host traffic from ``src``.

    Loopback / unspecified / the guest's own / the host's configured address
    become the gateway (4.6); applied even with ``--no-map-gw``.
    """
    conf = ctx.conf
    if len(src) == 4:
        own = {conf_addr(conf, "addr4"), _b(getattr(ctx, "addr_seen4", None))}
        if is_local_src(src) or src in own:
            gw = conf_addr(conf, "gw4")
            if gw:
                src = gw
        return src, guest_addr(ctx, 4)
    own = {conf_addr(conf, "addr6"), _b(getattr(ctx, "addr_seen6", None))}
    if is_local_src(src) or src in own:
        gw = conf_addr(conf, "gw6_ll") or conf_addr(conf, "gw6")
        if not gw or not is_v6_ll(gw):
            gw = conf_addr(conf, "addr6_ll") or gw
        if gw:
            return gw, guest_addr(ctx, 6, link_local=is_v6_ll(gw))
    return src, guest_addr(ctx, 6, link_local=is_v6_ll(src))


def scope_id(conf: Any, addr: bytes) -> int:
    """The scope id a host socket needs to reach ``addr``: the IPv6 template (or
    --outbound-if6) interface for link-local addresses, else 0."""
    return int(getattr(conf, "ifindex6", 0) or 0) if is_v6_ll(addr) else 0


def sockaddr(addr: bytes, port: int, scope: int = 0) -> tuple:
    if len(addr) == 4:
        return (socket.inet_ntop(socket.AF_INET, addr), port)
    return (socket.inet_ntop(socket.AF_INET6, addr), port, 0, scope)


def peer_bytes(family: int, peer: tuple) -> bytes:
    """A sockaddr tuple's address as 4/16 bytes (v4-mapped v6 -> 4 bytes)."""
    raw = socket.inet_pton(family, peer[0].split("%")[0])
    if len(raw) == 16 and raw[:12] == V4MAPPED:
        return raw[12:]
    return raw


