"""Guest frames to engines: one route table, one error boundary, drops counted.

A front end hands over a batch (buffer, offsets, lengths, count:
io/frontend.py); ``Dispatcher.handle_batch`` takes each frame in turn:

1. learn the guest's MAC from the source address;
2. parse it once (``passtcore.headers.parse_frame``: bounds-checked, ignores
   Ethernet padding); a malformed frame is a drop named by ``ParseError.reason``;
3. learn the guest's addresses from it (``Context.learn``);
4. route it (``route``, passt-reference 1.1 and 5.6): ARP -> arp; IPv4 UDP
   dport 67 -> dhcp; IPv6 UDP dport 547 -> dhcpv6; ICMPv6 RS/NS -> ndp; ICMP and
   ICMPv6 echo requests -> icmp; TCP -> tcp; other UDP -> udp. VLAN tags,
   other ethertypes, IP fragments, other ICMP types and IP protocols are
   dropped by reason; so is traffic of a service switched off (``--no-tcp``,
   ``--no-dhcp``...), whose engine is never built;
5. call the engine's ``handle(frame, info)``.

Before that, the whole batch goes through the data-plane fast path
(``passtcore.fastpath``, one kernel call for a run of frames): frames of an
established TCP connection in its common state and UDP datagrams of a known
flow are handled there, without Python; it stops at the first frame that needs
the steps above, which then takes them, and the fast path goes on after it.
Its events (data the socket did not take, a socket error, a window that moved)
go to the TCP engine (``fast_event``); its ACKs are built into the front end's
slots after the batch (``FastPath.finish``), but for a flow that got less than
an MSS: that ACK waits up to ``ACK_DELAY`` for a reply to carry it (one frame
and one write fewer per request/response). ``PASSTCORE_NO_FASTPATH=1`` turns
it off (every frame takes the steps above: a benchmark's baseline).

The engines are an explicit table (``ENGINES``: route -> engine class), built
once at start-up (before privileges are dropped). Engines rely on what the
dispatcher checked: they never see a fragment, a disabled service or a frame
routed elsewhere. The only catch-all around a frame is here: an engine or
kernel bug costs that one frame (counted as ``engine-error-<route>``, logged
with rate limiting), never the batch or the daemon.
"""
from __future__ import annotations

import logging
from array import array
from collections.abc import Mapping
from typing import Any

import passtcore
from passtcore.run.context import Context
from passtcore.run.flows import fastpath_enabled
from passtcore.run.icmp import IcmpEngine
from passtcore.run.io.frontend import SLOT_SIZE
from passtcore.run.l2.arp import ArpEngine
from passtcore.run.l2.common import Drop
from passtcore.run.l2.dhcp import DhcpEngine
from passtcore.run.l2.dhcpv6 import Dhcpv6Engine
from passtcore.run.l2.ndp import NdpEngine
from passtcore.run.tcp import TcpEngine
from passtcore.run.udp import UdpEngine

log = logging.getLogger("passtcore.run")

#: route -> engine class (called with the Context)
ENGINES: dict[str, type] = {
    "arp": ArpEngine, "dhcp": DhcpEngine, "ndp": NdpEngine, "dhcpv6": Dhcpv6Engine,
    "icmp": IcmpEngine, "tcp": TcpEngine, "udp": UdpEngine,
}
#: the option switch that turns a route off
DISABLED_BY = {"dhcp": "no_dhcp", "ndp": "no_ndp", "dhcpv6": "no_dhcpv6", "icmp": "no_icmp",
               "tcp": "no_tcp", "udp": "no_udp"}

ETH_ARP, ETH_IP, ETH_IP6 = 0x0806, 0x0800, 0x86DD
# A guest segment shorter than an MSS (a request) is acknowledged this late at
# most: the reply's first frame usually carries the ACK first (passt waits 10 ms).
ACK_DELAY = 0.001
# Ethertypes a guest plausibly sends, counted by name; any other is "ethertype-other",
# so that a hostile guest cannot grow the counters (and their log line) without bound.
# ICMP types and IP protocols are named as they are: 256 values each at most.
KNOWN_ETHERTYPES = frozenset((0x0842, 0x22F3, 0x8035, 0x8809, 0x8847, 0x8848, 0x8863, 0x8864,
                              0x888E, 0x88CC, 0x88E5, 0x88F7, 0x893A, 0x9000))


def route(info: Any) -> tuple[str | None, str]:
    """``(route, "")`` for a parsed frame, or ``(None, drop reason)``."""
    et = info.ethertype
    if info.vlan >= 0 or et in (0x8100, 0x88A8):
        return None, "vlan"  # passt serves untagged frames only
    if et == ETH_ARP:
        return "arp", ""
    if et != ETH_IP and et != ETH_IP6:
        return None, f"ethertype-0x{et:04x}" if et in KNOWN_ETHERTYPES else "ethertype-other"
    if info.is_fragment:
        return None, "ip-fragment"
    proto = info.l4_proto
    v6 = info.ip_version == 6
    if proto == 6:
        return "tcp", ""
    if proto == 17:
        if info.dport == 67 and not v6:
            return "dhcp", ""
        if info.dport == 547 and v6:
            return "dhcpv6", ""
        return "udp", ""
    if proto == 1 and not v6:
        if info.icmp_type == 8 and info.icmp_code == 0:
            return "icmp", ""
        return None, f"icmp-type-{info.icmp_type}"
    if proto == 58 and v6:
        t = info.icmp_type
        if t in (133, 135):
            return "ndp", ""
        if t == 128 and info.icmp_code == 0:
            return "icmp", ""
        if t in (134, 136):
            return None, "ndp-ignored"
        return None, f"icmpv6-type-{t}"
    return None, f"ip-proto-{proto}"


class Dispatcher:
    """``handle_batch(...)`` / ``handle(frame)`` for every frame from the guest."""

    def __init__(self, ctx: Context, engines: Mapping[str, type] | None = None) -> None:
        self.ctx = ctx
        self.table = dict(ENGINES if engines is None else engines)
        self.engines: dict[str, Any] = {}
        self._end_batch: list[Any] = []   # engines' end_batch(): ACKs due after a batch
        self.disabled = {name for name, switch in DISABLED_BY.items()
                         if getattr(ctx.conf, switch, False)}
        self.parse = passtcore.headers.parse_frame  # loads the kernel now, before --runas
        self.parse_error = passtcore.headers.ParseError
        self.trace = False
        self.fast: Any = None             # the fast path, once the engines exist
        self._ack_lens = array("q", bytes(8 * 256))
        self._defer_armed = False

    def load_all(self) -> None:
        """Build every enabled engine now (forwarded ports are bound here: a failure
        is a start-up error, exit 1)."""
        for name, cls in self.table.items():
            if name not in self.disabled and name not in self.engines:
                self.engines[name] = cls(self.ctx)
        self.ctx.engines.update(self.engines)
        self._end_batch = [e.end_batch for e in self.engines.values() if hasattr(e, "end_batch")]
        if fastpath_enabled() and ("tcp" in self.engines or "udp" in self.engines):
            self.fast = self.ctx.flows.fast
            self.fast.our_mac = self.ctx.conf.our_mac

    def handle_batch(self, buf: memoryview, offsets: array, lengths: array, count: int) -> None:
        """A front end's batch: each frame captured (``--pcap``) and handled (the
        fast path first, see the module docstring), then the engines' end-of-batch
        work (one ACK for all the segments of a flow)."""
        handle = self.handle
        pcap = self.ctx.pcap
        if pcap is not None:
            for i in range(count):
                off = offsets[i]
                pcap.write(buf[off:off + lengths[i]])
        fast = self.fast
        if fast is None or self.trace:
            for i in range(count):
                off = offsets[i]
                handle(buf[off:off + lengths[i]])  # not released: an engine bug keeping it is harmless
        else:
            self._fast_batch(fast, buf, offsets, lengths, count)
        for end_batch in self._end_batch:
            end_batch()

    def _fast_batch(self, fast: Any, buf: memoryview, offsets: array, lengths: array,
                    count: int) -> None:
        ctx = self.ctx
        handle = self.handle
        fast.guest_mac = ctx.guest_mac
        now = ctx.loop.now()
        i = 0
        try:
            for _ in range(2 * count + 1):  # bounded: every pass handles a frame at least
                if i >= count:
                    break
                i = fast.run(buf, offsets, lengths, i, count, now)
                if fast.events:
                    self._fast_events(fast)
                if fast.slow:
                    off = offsets[i]
                    handle(buf[off:off + lengths[i]])
                    i += 1
                    fast.guest_mac = ctx.guest_mac
            fast.frame_payload = SLOT_SIZE if ctx.frontend.tso else 0
            frontend = ctx.frontend
            nslots = min(frontend.nslots, len(self._ack_lens))
            slots, first, stride = frontend.slot_layout()
            for _ in range(count + 1):  # bounded: at most one ACK per frame
                n = fast.finish(slots, first, stride, nslots, self._ack_lens)
                if n:
                    ctx.tx_commit(self._ack_lens[:n])
                if fast.events:
                    self._fast_events(fast)
                if n < nslots:
                    break
            if fast.deferred and not self._defer_armed:
                self._defer_armed = True
                ctx.loop.call_later(ACK_DELAY, self._flush_deferred)
        except Exception:
            # a kernel bug: count it, turn the fast path off, finish the batch the slow way
            ctx.counters.drop("engine-error-fastpath")
            log.warning("the fast path failed; it is off from now on", exc_info=True)
            self.fast = None
            for j in range(i, count):
                off = offsets[j]
                handle(buf[off:off + lengths[j]])

    def _flush_deferred(self) -> None:
        """The deferred ACKs (requests shorter than an MSS) that no reply carried."""
        self._defer_armed = False
        fast, ctx = self.fast, self.ctx
        if fast is None:
            return
        frontend = ctx.frontend
        nslots = min(frontend.nslots, len(self._ack_lens))
        slots, first, stride = frontend.slot_layout()
        for _ in range(fast.deferred // max(nslots, 1) + 1):
            n = fast.flush_deferred(slots, first, stride, nslots, self._ack_lens)
            if n:
                ctx.tx_commit(self._ack_lens[:n])
            if n < nslots:
                break
        if fast.events:
            self._fast_events(fast)

    def _fast_events(self, fast: Any) -> None:
        events, fast.events = fast.events, []
        tcp = self.engines.get("tcp")
        for kind, flow, data in events:
            try:
                tcp.fast_event(kind, flow, data)
            except Exception:
                self.ctx.counters.drop("engine-error-tcp")
                log.warning("tcp: fast-path event %d failed", kind, exc_info=True)

    def handle(self, frame: memoryview) -> None:
        ctx = self.ctx
        target = "parse"
        try:
            if len(frame) >= 12 and not frame[6] & 1:
                ctx.guest_mac = bytes(frame[6:12])
            info = self.parse(frame)
            if info.ip_version:
                ctx.learn(info)
            target, reason = route(info)
            if self.trace:
                log.log(5, "guest frame: %d bytes, ethertype 0x%04x, proto %d -> %s", len(frame),
                        info.ethertype, info.l4_proto if info.ip_version else -1,
                        target or "drop:" + reason)
            if target is None:
                ctx.counters.drop(reason)
                return
            eng = self.engines.get(target)
            if eng is None:
                ctx.counters.drop(f"disabled-{target}" if target in self.disabled
                                  else f"no-engine-{target}")
                return
            eng.handle(frame, info)
        except (self.parse_error, Drop) as exc:
            ctx.counters.drop(exc.reason or "parse-error")
        except Exception:
            reason = f"engine-error-{target}"
            ctx.counters.drop(reason)
            n = ctx.counters.get("drop." + reason)
            if n <= 10 or n % 1000 == 0:  # a bug must not flood the log
                log.warning("%s failed on a %d-byte frame (%d so far)", target, len(frame), n,
                            exc_info=True)

    def tick(self, now: float) -> None:
        """Once a second: flows past their deadline, then the engines' own timers."""
        self.ctx.flows.expire(now)
        for eng in self.engines.values():
            fn = getattr(eng, "tick", None)
            if fn is not None:
                fn(now)

    def close(self) -> None:
        for eng in self.engines.values():
            fn = getattr(eng, "close", None)
            if fn is not None:
                try:
                    fn()
                except Exception:
                    log.debug("engine close failed", exc_info=True)
