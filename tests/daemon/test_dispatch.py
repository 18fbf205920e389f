"""Routing of guest frames to engines, lazy/optional engines, drops by reason."""
from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_NS, ICMPv6ND_RS, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from passtcore.run.conf import NetConfig
from passtcore.run.context import BROADCAST, Context
from passtcore.run.dispatch import Dispatcher
from passtcore.run.loop import Loop

MAC = "52:54:00:12:34:56"


class Sink:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, f) -> bool:
        self.frames.append(bytes(f))
        return True

    def send_many(self, fs) -> int:
        return sum(self.send(f) for f in fs)


def eth(payload) -> bytes:
    return bytes(Ether(src=MAC, dst="02:00:00:00:00:01") / payload)


FRAMES = {
    "arp": eth(ARP(op=1, psrc="192.0.2.9", pdst="192.0.2.1")),
    "dhcp": eth(IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / (b"\0" * 240)),
    "dhcpv6": eth(IPv6(src="fe80::1", dst="ff02::1:2") / UDP(sport=546, dport=547) / b"\x01abc"),
    "ndp-rs": eth(IPv6(src="fe80::1", dst="ff02::2") / ICMPv6ND_RS()),
    "ndp-ns": eth(IPv6(src="fe80::1", dst="ff02::1:ff00:1") / ICMPv6ND_NS(tgt="fe80::2")),
    "icmp": eth(IP(src="192.0.2.9", dst="192.0.2.1") / ICMP(type=8)),
    "icmp6": eth(IPv6(src="2001:db8::9", dst="2001:db8::1") / ICMPv6EchoRequest()),
    "tcp": eth(IP(src="192.0.2.9", dst="192.0.2.1") / TCP(dport=80)),
    "udp": eth(IP(src="192.0.2.9", dst="192.0.2.1") / UDP(dport=53)),
}
ROUTES = {"arp": "arp", "dhcp": "dhcp", "dhcpv6": "dhcpv6", "ndp-rs": "ndp", "ndp-ns": "ndp",
          "icmp": "icmp", "icmp6": "icmp", "tcp": "tcp", "udp": "udp"}


@pytest.fixture
def setup():
    loop = Loop()
    ctx = Context(NetConfig(our_mac=b"\x02" * 6, addr4=bytes([192, 0, 2, 9])), loop)
    sink = Sink()
    ctx.frontend = sink
    d = Dispatcher(ctx, package="tests.daemon.fake_engines")
    yield ctx, d, sink
    loop.close()


@pytest.mark.parametrize("name", list(FRAMES))
def test_routes(setup, name: str) -> None:
    ctx, d, _ = setup
    from passtcore import headers

    assert d.route(headers.parse_frame(FRAMES[name])) == ROUTES[name]


def test_drops_by_reason_and_engines(setup) -> None:
    ctx, d, sink = setup
    assert ctx.guest_mac == BROADCAST
    for f in FRAMES.values():
        d.handle(memoryview(f))
    extra = [
        eth(Dot1Q(vlan=5) / IP(src="192.0.2.9", dst="192.0.2.1") / UDP(dport=53)),
        bytes(Ether(src=MAC, type=0x88CC) / (b"\0" * 40)),
        eth(IP(src="192.0.2.9", dst="192.0.2.1", proto=2) / (b"\0" * 8)),
        eth(IP(src="192.0.2.9", dst="192.0.2.1", flags=1) / UDP(dport=53) / b"x"),
        eth(IP(src="192.0.2.9", dst="192.0.2.1") / ICMP(type=13)),
        b"\x01" * 13,
    ]
    for f in extra:
        d.handle(memoryview(f))
    drops = ctx.counters.drops()
    assert drops.pop("engine-error-udp") == 1
    for name in ("dhcp", "dhcpv6", "ndp", "icmp", "tcp"):
        assert drops.pop(f"no-engine-{name}") == (2 if name in ("ndp", "icmp") else 1), name
    assert drops.pop("vlan") == 1
    assert drops.pop("ethertype-0x88cc") == 1
    assert drops.pop("ip-proto-2") == 1
    assert drops.pop("ip-fragment") == 1
    assert drops.pop("icmp-type-13") == 1
    assert len(drops) == 1 and sum(drops.values()) == 1  # the 13-byte runt: a parse error
    arp = ctx.engines["arp"]
    assert arp.seen == [FRAMES["arp"]] and sink.frames == [b"reply:" + FRAMES["arp"][:8]]
    assert ctx.guest_mac == bytes.fromhex(MAC.replace(":", ""))
    assert ctx.addr_seen4 == bytes([192, 0, 2, 9])
    d.tick(0.0)
    assert arp.ticks == 1


def test_disabled_services_are_swallowed(setup) -> None:
    ctx, d, _ = setup
    ctx.conf.no_dhcp = True
    ctx.conf.no_udp = True
    d.handle(memoryview(FRAMES["dhcp"]))
    d.handle(memoryview(FRAMES["udp"]))
    assert ctx.counters.drops() == {"disabled-dhcp": 1, "disabled-udp": 1}
