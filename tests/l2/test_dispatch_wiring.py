"""The real Dispatcher builds every L2 engine from its route table and drives it."""
from __future__ import annotations

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import (DHCP6_Advertise, DHCP6_Solicit, DHCP6OptClientId, DHCP6OptIA_NA,
                                DUID_LL)
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6ND_RS, IPv6
from scapy.layers.l2 import ARP, Ether

from passtcore.run.l2.arp import ArpEngine
from passtcore.run.context import Context
from passtcore.run.l2.dhcp import DhcpEngine
from passtcore.run.l2.dhcpv6 import Dhcpv6Engine
from passtcore.run.dispatch import Dispatcher
from passtcore.run.icmp.engine import IcmpEngine
from passtcore.run.io.frontend import MemoryFrontend
from passtcore.run.io.loop import Loop
from passtcore.run.l2.ndp import NdpEngine


from .conftest import GUEST_LL, GUEST_MAC, assert_checksums


def test_engines_loaded_and_answer(conf):
    loop = Loop()
    ctx = Context(conf, loop)
    ctx.frontend = sink = MemoryFrontend(ctx.counters)
    d = Dispatcher(ctx)
    try:
        d.load_all()
        for name, cls in (("arp", ArpEngine), ("dhcp", DhcpEngine), ("ndp", NdpEngine),
                          ("dhcpv6", Dhcpv6Engine), ("icmp", IcmpEngine)):
            assert isinstance(d.engines[name], cls)
        eth = Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff")
        requests = [
            (eth / ARP(hwsrc=GUEST_MAC, psrc="192.0.2.10", pdst="192.0.2.1"), ARP),
            (eth / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) /
             BOOTP(op=1, xid=5) / DHCP(options=[("message-type", "discover"), "end"]), BOOTP),
            (eth / IPv6(src=GUEST_LL, dst="ff02::2") / ICMPv6ND_RS(), ICMPv6ND_RA),
            (eth / IPv6(src=GUEST_LL, dst="ff02::1:ff00:1") / ICMPv6ND_NS(tgt="fe80::1"),
             ICMPv6ND_NA),
            (eth / IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547) /
             DHCP6_Solicit(trid=3) / DHCP6OptClientId(duid=DUID_LL(lladdr=GUEST_MAC)) /
             DHCP6OptIA_NA(iaid=1), DHCP6_Advertise),
        ]
        for pkt, layer in requests:
            before = len(sink.frames)
            d.handle(memoryview(bytes(pkt)))
            (reply,) = sink.frames[before:]
            assert layer in Ether(reply)
            if layer is not ARP:
                assert_checksums(reply)
        assert not any(k.startswith(("engine-error", "no-engine")) for k in ctx.counters.drops())
    finally:
        d.close()
        loop.close()
