"""UDP translation: guest datagrams <-> host UDP sockets (passt-reference 7).

passt tracks UDP by *port*, not by connection, and so does this engine:

* For each family and guest source port there is one host socket, bound to
  the same port number (so the guest's source port is preserved on the host;
  if that port is busy the socket falls back to a kernel-chosen port instead of
  dropping, a deliberate improvement). It is unconnected: whatever arrives on
  it (a reply from anyone) goes to the guest with that guest port as the
  destination. It expires 180 s after the last guest datagram (1 s tick).
* ``-u`` forwarded ports are sockets bound at start-up (one per family) and
  registered under the *guest-side* port, so the guest's replies from that
  port leave through the same socket: the reverse mapping is implicit. They
  never expire.
* Destination mapping: ``--dns-forward`` address port 53 -> the host's first
  resolver (answers come back from the ``--dns-forward`` address); the gateway
  -> loopback unless ``--no-map-gw`` or the last local sender on that port was
  the host's own address (7.3).
* Frames to the guest: source NAT of 4.6, destination = the address the guest
  was last seen using; IPv4 UDP checksum 0, IPv6 full checksum (7.5). Frames
  are built into preallocated slots and sent in batches of up to 32.
* The flow table (``passtcore.flowtable``) bounds the number of port flows
  (``--max-flows``); at the limit new flows are dropped and counted.
"""
from __future__ import annotations

import errno
import logging
import mmap
import socket
from typing import Any

import passtcore
from passtcore.run import fwd
from passtcore.run.conf import DEFAULT_MAX_FLOWS

log = logging.getLogger("passtcore.udp")

UDP_TIMEOUT = 180.0
BATCH = 32
SLOT = 65536 + 128
_ZERO = {4: bytes(4), 6: bytes(16)}


class UdpFlow:
    """One host socket serving one guest port of one family."""

    __slots__ = ("sock", "fd", "v", "gport", "gaddr", "last", "forwarded", "idx", "mapped")

    def __init__(self, sock: socket.socket, v: int, gport: int, forwarded: bool) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.v = v
        self.gport = gport
        self.gaddr: bytes | None = None
        self.last = 0.0
        self.forwarded = forwarded
        self.idx = -1
        # remote port -> the address the guest sent to, when it was mapped to a
        # local one: replies are shown from that address (connected sockets work)
        self.mapped: dict[int, bytes] = {}


class UdpEngine:
    """The UDP engine (Engine API: ``handle``, ``tick``, ``close``)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.conf = conf = ctx.conf
        self.h = passtcore.headers
        self.capacity = int(getattr(conf, "max_flows", 0) or DEFAULT_MAX_FLOWS)
        self.flows = passtcore.flowtable.FlowTable(self.capacity)
        self.by_port: dict[tuple[int, int], UdpFlow] = {}
        # (version, host source port) -> "lo" | "own": last local sender (7.3)
        self.local_src: dict[tuple[int, int], str] = {}
        self.buf = mmap.mmap(-1, BATCH * SLOT, mmap.MAP_PRIVATE)  # resident once written
        self.mv = memoryview(self.buf)
        self.listeners: list[tuple[socket.socket, fwd.Forward]] = []
        if getattr(conf, "no_udp", False):
            return
        specs = fwd.conf_specs(conf, "udp")
        if specs:
            self.listeners = fwd.open_listeners(
                specs, socket.SOCK_DGRAM, v4=bool(getattr(conf, "v4", True)),
                v6=bool(getattr(conf, "v6", True)))
            for s, fw in self.listeners:
                v = 4 if s.family == socket.AF_INET else 6
                f = UdpFlow(s, v, fw.guest_port, True)
                self.by_port[(v, fw.guest_port)] = f
                ctx.loop.add_reader(f.fd, lambda f=f: self._on_readable(f))

    def _count(self, name: str, n: int = 1) -> None:
        c = getattr(self.ctx, "counters", None)
        if c is not None:
            c.inc(name, n)

    def _drop(self, reason: str) -> None:
        c = getattr(self.ctx, "counters", None)
        if c is not None:
            c.drop(reason)

    # -- guest -> host -----------------------------------------------------------
    def _target(self, v: int, dst: bytes, dport: int) -> bytes:
        conf = self.conf
        fwd_addr = fwd.conf_addr(conf, "dns_forward4" if v == 4 else "dns_forward6")
        if fwd_addr is not None and dst == fwd_addr and dport == 53:
            host = fwd.conf_addr(conf, "dns_host4" if v == 4 else "dns_host6")
            if host is None:
                dns = getattr(conf, "dns4" if v == 4 else "dns6", None) or []
                host = fwd._b(dns[0]) if dns else None
            if host is not None:
                return host
        if fwd.map_gw(self.ctx) and fwd.is_gateway(self.ctx, dst):
            if self.local_src.get((v, dport)) == "own":
                own = fwd.conf_addr(conf, "addr4" if v == 4 else "addr6")
                if own:
                    return own
            return fwd.V4_LOOPBACK if v == 4 else fwd.V6_LOOPBACK
        return dst

    def _open(self, v: int, gport: int) -> UdpFlow | None:
        if len(self.by_port) >= self.capacity:
            self._count("udp_flows_refused")
            return None
        zero = _ZERO[v]
        try:
            idx = self.flows.insert(17, 0, zero, gport, zero, 0)
        except (passtcore.flowtable.FlowTableFull, KeyError):
            self._count("udp_flows_refused")
            return None
        family = socket.AF_INET if v == 4 else socket.AF_INET6
        s = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            if v == 6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            out = fwd.conf_addr(self.conf, "outbound4" if v == 4 else "outbound6")
            host = socket.inet_ntop(family, out) if out else ("0.0.0.0" if v == 4 else "::")
            try:
                s.bind((host, gport))
            except OSError as exc:
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise
                s.bind((host, 0))  # port busy on the host: keep the flow working
                self._count("udp_port_remapped")
        except OSError as exc:
            s.close()
            self.flows.remove_index(idx)
            log.debug("udp: socket for guest port %d: %s", gport, exc)
            self._count("udp_socket_errors")
            return None
        f = UdpFlow(s, v, gport, False)
        f.idx = idx
        self.by_port[(v, gport)] = f
        self.ctx.loop.add_reader(f.fd, lambda f=f: self._on_readable(f))
        self._count("udp_flows")
        return f

    def handle(self, frame: Any, info: Any) -> None:
        if getattr(self.conf, "no_udp", False):
            self._drop("udp-disabled")
            return
        if info.is_fragment:
            self._drop("udp-fragment")
            return
        v = info.ip_version
        f = self.by_port.get((v, info.sport))
        if f is None:
            f = self._open(v, info.sport)
            if f is None:
                self._drop("udp-no-socket")
                return
        f.gaddr = bytes(info.src)
        f.last = self.ctx.loop.now()
        orig = bytes(info.dst)
        dst = self._target(v, orig, info.dport)
        if dst != orig:
            f.mapped[info.dport] = orig
        scope = 0
        if v == 6 and fwd.is_v6_ll(dst):
            scope = int(getattr(self.conf, "ifindex6", 0) or 0)
        off = info.payload_offset
        try:
            f.sock.sendto(frame[off:off + info.payload_len], fwd.sockaddr(dst, info.dport, scope))
            self._count("udp_to_host")
        except OSError as exc:
            log.debug("udp: sendto: %s", exc)
            self._drop("udp-send-error")

    # -- host -> guest -------------------------------------------------------------
    def _on_readable(self, f: UdpFlow) -> None:
        if f.sock is None:
            return
        h = self.h
        conf = self.conf
        ctx = self.ctx
        v = f.v
        hl = h.header_len(v, 17)
        cap = min(65535 - hl, SLOT - hl)
        dns_fwd = fwd.conf_addr(conf, "dns_forward4" if v == 4 else "dns_forward6")
        dns_host = fwd.conf_addr(conf, "dns_host4" if v == 4 else "dns_host6") if dns_fwd else None
        own = fwd.conf_addr(conf, "addr4" if v == 4 else "addr6")
        frames = []
        mv = self.mv
        for i in range(BATCH):
            base = i * SLOT
            try:
                n, peer = f.sock.recvfrom_into(mv[base + hl:base + hl + cap])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("udp: recv: %s", exc)
                self._count("udp_recv_errors")
                continue
            src = fwd.peer_bytes(f.sock.family, peer)
            sport = peer[1]
            if dns_fwd is not None and src == dns_host and sport == 53:
                rsrc = f.mapped.get(sport, dns_fwd)
                gdst = f.gaddr or fwd.guest_addr(ctx, v)
            else:
                if fwd.is_local_src(src):
                    self.local_src[(v, sport)] = "lo"
                elif src == own:
                    self.local_src[(v, sport)] = "own"
                rsrc, gdst = fwd.inbound_source(ctx, src)
                if rsrc != src and sport in f.mapped:
                    rsrc = f.mapped[sport]  # a reply to what the guest sent to the gateway
                if not f.forwarded and f.gaddr and fwd.is_v6_ll(rsrc) == fwd.is_v6_ll(f.gaddr):
                    gdst = f.gaddr
            if gdst is None:
                self._drop("udp-no-guest-address")
                continue
            flen = h.build_udp(self.buf, base, ctx.guest_mac, conf.our_mac, rsrc, gdst,
                               sport, f.gport, n)
            if v == 4:
                self.buf[base + hl - 2:base + hl] = b"\0\0"  # IPv4: no UDP checksum (7.5)
            frames.append(mv[base:base + flen])
        if frames:
            ctx.to_guest_many(frames)
            self._count("udp_to_guest", len(frames))

    # -- timers --------------------------------------------------------------------
    def tick(self, now: float) -> None:
        for key, f in list(self.by_port.items()):
            if not f.forwarded and now - f.last >= UDP_TIMEOUT:
                self._close_flow(key, f)

    def _close_flow(self, key: tuple[int, int], f: UdpFlow) -> None:
        self.by_port.pop(key, None)
        try:
            self.ctx.loop.remove_reader(f.fd)
        except Exception:
            pass
        f.sock.close()
        f.sock = None
        if f.idx >= 0:
            try:
                self.flows.remove_index(f.idx)
            except Exception:
                pass

    def close(self) -> None:
        for key, f in list(self.by_port.items()):
            self._close_flow(key, f)
        self.listeners = []

    def stats(self) -> dict[str, int]:
        return {"flows": len(self.by_port)}


UDP = UdpEngine
Engine = UdpEngine
