"""UDP socket I/O: guest datagrams <-> host UDP sockets (design: the package docstring)."""
from __future__ import annotations

import errno
import logging
import socket
from typing import Any

import passtcore
from passtcore.run import nat
from passtcore.run.flows import ANY
from passtcore.run.io import listeners

log = logging.getLogger("passtcore.udp")

UDP_TIMEOUT = 180.0
BATCH = 32


#: one host socket serving one guest port of one family (the fast path's
#: flow object: a ``cdef class`` in the Cython backend)
UdpFlow = passtcore.fastpath.UdpFlow


class UdpEngine:
    """The UDP engine: ``handle(frame, info)``, ``flow_expired(flow)``, ``close()``."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.conf = conf = ctx.conf
        self.h = passtcore.headers
        self.flows = ctx.flows
        # (version, host source port) -> "lo" | "own": last local sender (7.3)
        self.local_src: dict[tuple[int, int], str] = {}
        # Forwarded ports are listeners, not flows (they neither expire nor count
        # against --max-flows): found by the guest-side port, and by descriptor.
        self.forwarded: dict[tuple[int, int], Any] = {}
        self.fast = ctx.flows.fast   # forwarded ports are shown to the fast path too
        self.by_sock: dict[int, UdpFlow] = {}
        self.listeners = listeners.ListenerSet(ctx.loop, socket.SOCK_DGRAM, self._on_forwarded,
                                               v4=bool(conf.v4), v6=bool(conf.v6))
        for s, fw in self.listeners.open(listeners.conf_specs(conf, "udp")):
            self._add_forwarded(s, fw)

    def _add_forwarded(self, s: socket.socket, fw: listeners.Forward) -> None:
        v = 4 if s.family == socket.AF_INET else 6
        f = UdpFlow(s, v, fw.guest_port, True)
        # by the guest port: the guest's replies from it leave through this socket
        self.forwarded[(v, fw.guest_port)] = f
        self.fast.set_forwarded(v, fw.guest_port, f)
        self.by_sock[f.fd] = f

    def _on_forwarded(self, s: socket.socket, fw: listeners.Forward) -> None:
        f = self.by_sock.get(s.fileno())
        if f is not None:
            self._on_readable(f)

    def _count(self, name: str, n: int = 1) -> None:
        self.ctx.counters.inc(name, n)

    def _drop(self, reason: str) -> None:
        self.ctx.counters.drop(reason)

    # -- guest -> host -----------------------------------------------------------
    def _target(self, v: int, dst: bytes, dport: int) -> bytes:
        conf = self.conf
        fwd_addr = nat.conf_addr(conf, "dns_forward4" if v == 4 else "dns_forward6")
        if fwd_addr is not None and dst == fwd_addr and dport == 53:
            host = nat.conf_addr(conf, "dns_host4" if v == 4 else "dns_host6")
            if host is None:
                dns = getattr(conf, "dns4" if v == 4 else "dns6", None) or []
                host = nat._b(dns[0]) if dns else None
            if host is not None:
                return host
        if nat.map_gw(self.ctx) and nat.is_gateway(self.ctx, dst):
            if self.local_src.get((v, dport)) == "own":
                own = nat.conf_addr(conf, "addr4" if v == 4 else "addr6")
                if own:
                    return own
            return nat.V4_LOOPBACK if v == 4 else nat.V6_LOOPBACK
        return dst

    def _open(self, v: int, gport: int) -> Any:
        family = socket.AF_INET if v == 4 else socket.AF_INET6
        s = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            if v == 6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            out = nat.conf_addr(self.conf, "outbound4" if v == 4 else "outbound6")
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
            log.debug("udp: socket for guest port %d: %s", gport, exc)
            self._count("udp_socket_errors")
            return None
        f = UdpFlow(s, v, gport, False)
        f.idx = self.flows.add(self, 17, ANY[v], gport, ANY[v], 0, f, UDP_TIMEOUT)
        if f.idx < 0:
            s.close()
            return None
        self.ctx.loop.add_reader(f.fd, lambda f=f: self._on_readable(f))
        return f

    def handle(self, frame: Any, info: Any) -> None:
        v = info.ip_version
        f = self.forwarded.get((v, info.sport)) if self.forwarded else None
        if f is None:
            f = self.flows.lookup(17, ANY[v], info.sport, ANY[v], 0)
            if f is None:
                f = self._open(v, info.sport)
                if f is None:
                    self._drop("udp-no-socket")
                    return
            else:
                self.flows.touch(f.idx, UDP_TIMEOUT)
        f.gaddr = bytes(info.src)
        orig = bytes(info.dst)
        dst = self._target(v, orig, info.dport)
        if dst != orig:
            f.mapped[info.dport] = orig
        off = info.payload_offset
        scope = nat.scope_id(self.conf, dst)
        try:
            f.sock.sendto(frame[off:off + info.payload_len], nat.sockaddr(dst, info.dport, scope))
            self._count("udp_to_host")
        except OSError as exc:
            log.debug("udp: sendto: %s", exc)
            self._drop("udp-send-error")
            return
        if f.fast_dport != info.dport or f.fast_dst != orig:
            # the next datagrams to this destination take the fast path
            f.set_fast_target(orig, info.dport, dst, scope)

    # -- host -> guest -------------------------------------------------------------
    def _on_readable(self, f: UdpFlow) -> None:
        if f.sock is None:
            return
        h = self.h
        conf = self.conf
        ctx = self.ctx
        v = f.v
        hl = h.header_len(v, 17)
        dns_fwd = nat.conf_addr(conf, "dns_forward4" if v == 4 else "dns_forward6")
        dns_host = nat.conf_addr(conf, "dns_host4" if v == 4 else "dns_host6") if dns_fwd else None
        own = nat.conf_addr(conf, "addr4" if v == 4 else "addr6")
        slots = ctx.tx_slots(BATCH)
        cap = len(slots[0]) - hl
        lengths: list[int] = []  # frame i is built in slots[i]
        for _ in range(2 * len(slots)):  # bounded: errors and drops take no slot
            if len(lengths) == len(slots):
                break
            slot = slots[len(lengths)]
            try:
                n, peer = f.sock.recvfrom_into(slot[hl:hl + cap])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("udp: recv: %s", exc)
                self._count("udp_recv_errors")
                continue
            src = nat.peer_bytes(f.sock.family, peer)
            sport = peer[1]
            if dns_fwd is not None and src == dns_host and sport == 53:
                rsrc = f.mapped.get(sport, dns_fwd)
                gdst = f.gaddr or nat.guest_addr(ctx, v)
            else:
                kind = "lo" if nat.is_local_src(src) else "own" if src == own else None
                if kind is not None and self.local_src.get((v, sport)) != kind:
                    self.local_src[(v, sport)] = kind
                    self._forget_targets()  # where the gateway maps to changed
                rsrc, gdst = nat.inbound_source(ctx, src)
                if rsrc != src and sport in f.mapped:
                    rsrc = f.mapped[sport]  # a reply to what the guest sent to the gateway
                if not f.forwarded and f.gaddr and nat.is_v6_ll(rsrc) == nat.is_v6_ll(f.gaddr):
                    gdst = f.gaddr
            if gdst is None:
                self._drop("udp-no-guest-address")
                continue
            # IPv4: no UDP checksum, as passt (7.5): the payload is never summed
            lengths.append(h.build_udp(slot, 0, ctx.guest_mac, conf.our_mac, rsrc, gdst,
                                       sport, f.gport, n, l4_csum=False))
        if lengths:
            ctx.tx_commit(lengths)
            self._count("udp_to_guest", len(lengths))

    def set_auto_ports(self, ports: set[int]) -> None:
        """``-u auto``: the forwarded ports are now ``ports`` (see autofwd.py)."""
        for f in list(self.by_sock.values()):
            if f.gport not in ports:
                self._close_flow(f)
        opened, _ = self.listeners.set_ports(ports)
        for s, fw in opened:
            self._add_forwarded(s, fw)

    def _forget_targets(self) -> None:
        for f in [*self.flows.objects(self), *self.forwarded.values()]:
            f.clear_fast_target()

    # -- flows ---------------------------------------------------------------------
    def flow_expired(self, f: Any) -> None:
        """No guest datagram on this port for UDP_TIMEOUT: close its socket."""
        self._close_flow(f)

    def _close_flow(self, f: Any) -> None:
        if f.sock is None:
            return
        if f.forwarded:
            if self.forwarded.get((f.v, f.gport)) is f:
                del self.forwarded[(f.v, f.gport)]
                self.fast.set_forwarded(f.v, f.gport, None)
            self.by_sock.pop(f.fd, None)
            self.listeners.remove(f.sock)
        else:
            self.flows.remove(f.idx, f)
            self.ctx.loop.remove_reader(f.fd)
            f.sock.close()
        f.sock = None

    def close(self) -> None:
        for f in [*self.flows.objects(self), *self.forwarded.values()]:
            self._close_flow(f)
        self.listeners.close()

    def stats(self) -> dict[str, int]:
        return {"flows": len(self.flows.objects(self)), "forwarded": len(self.forwarded)}
