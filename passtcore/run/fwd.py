"""Port forwarding and address translation shared by the TCP and UDP engines.

Two concerns live here because both engines need exactly the same rules:

* **NAT** (passt-reference 4.6, 4.7). Guest traffic to the gateway address is
  sent to the host's loopback unless ``--no-map-gw``; host traffic coming from
  loopback, the unspecified address or the guest's own address is presented to
  the guest as coming from the gateway (IPv6: the gateway if it is link-local,
  else our link-local address, sent to the guest's link-local address). The
  guest's destination address is always the one learned from its traffic
  (``ctx.addr_seen4/6``), so a re-addressed guest keeps working.
* **Listening sockets for forwarded ports** (reference 3.2, 7.2). A ``-t``/``-u``
  spec becomes ``Forward`` entries (bind address, device, host port, guest
  port); ``open_listeners`` binds them, skipping busy ports for ``all`` and
  turning ``EMFILE``/``ENFILE`` into the documented fatal error.

The option parser gives ``passtcore.portspec.PortSpec`` objects
(``conf.tcp_ports``/``conf.udp_ports``); ``spec_entries`` also accepts spec
text (parsed with ``portspec.parse_spec``) and ``(host, guest)`` pairs.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any, Iterable

log = logging.getLogger("passtcore.fwd")

V4_LOOPBACK = bytes([127, 0, 0, 1])
V6_LOOPBACK = bytes(15) + b"\x01"
V4_ANY = bytes(4)
V6_ANY = bytes(16)
V4MAPPED = bytes(10) + b"\xff\xff"
EPHEMERAL_MIN = 49152


class ForwardError(RuntimeError):
    """A fatal forwarding error with passt's message (exit 1)."""

    fatal = True  # the dispatcher re-raises it: the daemon exits 1 at start-up


def to16(addr: bytes) -> bytes:
    """IPv4 as ``::ffff:a.b.c.d``, IPv6 unchanged (flow-table key form)."""
    return V4MAPPED + addr if len(addr) == 4 else addr


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


# -- forwarding specs --------------------------------------------------------

@dataclass(frozen=True)
class Forward:
    address: str | None  # bind address, None = wildcard
    dev: str | None      # SO_BINDTODEVICE
    host_port: int
    guest_port: int
    all_ports: bool = False  # from 'all'/exclusion-only: busy ports are skipped


def spec_entries(spec: Any, proto: str = "tcp") -> list[Forward]:
    """Normalise one parsed or textual spec into ``Forward`` entries."""
    if spec is None:
        return []
    if isinstance(spec, Forward):
        return [spec]
    if isinstance(spec, str):
        from passtcore import portspec

        return spec_entries(portspec.parse_spec(spec, proto))
    to_spec = getattr(spec, "to_spec", None)
    address = getattr(spec, "address", None)
    dev = getattr(spec, "ifname", None) or getattr(spec, "dev", None)
    expand = getattr(spec, "expand", None)
    if callable(expand):  # passtcore.portspec.PortSpec
        mapping = expand()
        all_ports = getattr(spec, "mode", "") == "all" or not getattr(spec, "forwards", ())
        items = mapping.items() if hasattr(mapping, "items") else mapping
        return [Forward(address, dev, int(h), int(g), all_ports)
                for h, g in items if int(h) != 0]
    if callable(to_spec):  # a libvirt-model PortForward
        return spec_entries(to_spec(), getattr(spec, "proto", proto))
    if isinstance(spec, dict):
        return [Forward(None, None, int(h), int(g)) for h, g in spec.items()]
    out = []
    for item in spec:  # iterable of specs or (host, guest) pairs
        if isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, int) for x in item):
            out.append(Forward(None, None, item[0], item[1]))
        else:
            out.extend(spec_entries(item, proto))
    return out


def conf_specs(conf: Any, proto: str) -> list[Forward]:
    """All forward entries for ``proto`` ("tcp"/"udp") from the parsed options."""
    names = {"tcp": ("tcp_ports", "tcp_forward", "tcp_forwards", "forward_tcp"),
             "udp": ("udp_ports", "udp_forward", "udp_forwards", "forward_udp")}[proto]
    for name in names:
        value = getattr(conf, name, None)
        if value is None:
            options = getattr(conf, "options", None)
            value = getattr(options, name, None) if options is not None else None
        if value:
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                value = [value]
            out: list[Forward] = []
            for spec in value:
                out.extend(spec_entries(spec, proto))
            return out
    return []


def _bind_one(family: int, kind: int, fw: Forward, v6only: bool) -> socket.socket:
    s = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        if fw.dev:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, fw.dev.encode())
        host = fw.address or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        s.bind((host, fw.host_port))
        if kind == socket.SOCK_STREAM:
            s.listen(128)
        return s
    except BaseException:
        s.close()
        raise


def open_listeners(entries: Iterable[Forward], kind: int, v4: bool = True,
                   v6: bool = True) -> list[tuple[socket.socket, Forward]]:
    """Bind every entry; TCP uses one dual-stack socket when possible, UDP two.

    Busy/forbidden ports are skipped for ``all``-style specs; an explicit port
    that cannot be bound only fails if nothing at all could be bound.
    """
    out: list[tuple[socket.socket, Forward]] = []
    entries = list(entries)
    failures = 0
    try:
        for fw in entries:
            families: list[tuple[int, bool]] = []
            if fw.address:
                fam = socket.AF_INET6 if ":" in fw.address else socket.AF_INET
                families = [(fam, True)]
            elif kind == socket.SOCK_STREAM and v4 and v6:
                families = [(socket.AF_INET6, False)]
            else:
                if v4:
                    families.append((socket.AF_INET, True))
                if v6:
                    families.append((socket.AF_INET6, True))
            for fam, v6only in families:
                try:
                    out.append((_bind_one(fam, kind, fw, v6only), fw))
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE):
                        raise ForwardError("Can't open enough sockets for port specifier") from exc
                    if not v6only and fam == socket.AF_INET6:
                        # no dual-stack: one socket per family
                        for f2, o2 in ((socket.AF_INET, True), (socket.AF_INET6, True)):
                            try:
                                out.append((_bind_one(f2, kind, fw, o2), fw))
                            except OSError as exc2:
                                if exc2.errno in (errno.EMFILE, errno.ENFILE):
                                    raise ForwardError(
                                        "Can't open enough sockets for port specifier") from exc2
                                failures += 1
                        continue
                    failures += 1
                    if not fw.all_ports:
                        log.warning("forwarding: can't bind port %d: %s", fw.host_port, exc)
        if entries and not out:
            raise ForwardError("Failed to bind any port for port specifier")
    except BaseException:
        for s, _ in out:
            s.close()
        raise
    return out
