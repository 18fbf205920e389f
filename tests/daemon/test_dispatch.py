"""Routing of guest frames through the dispatcher's explicit route table, the one
error boundary, end-of-batch work, drops by reason."""
from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_NS, ICMPv6ND_RS, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from passtcore.run.process.config import NetConfig
from passtcore.run.context import BROADCAST, Context
from passtcore.run.dispatch import ENGINES, Dispatcher, route
from passtcore.run.io.frontend import MemoryFrontend
from passtcore.run.io.loop import Loop

MAC = "52:54:00:12:34:56"


class RecordingArp:
    """Records frames, answers each, counts ticks and batches."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.seen = []
        self.ticks = 0
        self.batches = 0

    def handle(self, frame, info):
        self.seen.append(bytes(frame))
        self.ctx.to_guest(b"reply:" + bytes(frame[:8]) + bytes(6))

    def tick(self, now):
        self.ticks += 1

    def end_batch(self):
        self.batches += 1


class BrokenUdp:
    def __init__(self, ctx):
        pass

    def handle(self, frame, info):
        raise RuntimeError("engine bug")


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
    d = Dispatcher(ctx, {"arp": RecordingArp, "udp": BrokenUdp})
    sink = MemoryFrontend(ctx.counters, d.handle_batch)
    ctx.frontend = sink
    d.load_all()
    yield ctx, d, sink
    loop.close()


@pytest.mark.parametrize("name", list(FRAMES))
def test_routes(setup, name: str) -> None:
    ctx, d, _ = setup
    from passtcore import headers

    assert route(headers.parse_frame(FRAMES[name])) == (ROUTES[name], "")


def test_the_table_names_every_route() -> None:
    assert set(ENGINES) == set(ROUTES.values())


def test_drops_by_reason_and_engines(setup) -> None:
    ctx, d, sink = setup
    assert ctx.guest_mac == BROADCAST
    for f in FRAMES.values():
        d.handle(memoryview(f))
    extra = [
        eth(Dot1Q(vlan=5) / IP(src="192.0.2.9", dst="192.0.2.1") / UDP(dport=53)),
        bytes(Ether(src=MAC, type=0x88CC) / (b"\0" * 40)),
        bytes(Ether(src=MAC, type=0x1234) / (b"\0" * 40)),
        bytes(Ether(src=MAC, type=0x4321) / (b"\0" * 40)),
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
    assert drops.pop("ethertype-other") == 2  # not one counter per value a guest makes up
    assert drops.pop("ip-proto-2") == 1
    assert drops.pop("ip-fragment") == 1
    assert drops.pop("icmp-type-13") == 1
    assert len(drops) == 1 and sum(drops.values()) == 1  # the 13-byte runt: a parse error
    arp = ctx.engines["arp"]
    assert arp.seen == [FRAMES["arp"]]
    assert sink.frames == [b"reply:" + FRAMES["arp"][:8] + bytes(6)]
    assert ctx.guest_mac == bytes.fromhex(MAC.replace(":", ""))
    assert ctx.addr_seen4 == bytes([192, 0, 2, 9])
    d.tick(0.0)
    assert arp.ticks == 1


def test_disabled_services_are_swallowed() -> None:
    loop = Loop()
    conf = NetConfig(our_mac=b"\x02" * 6, addr4=bytes([192, 0, 2, 9]), no_dhcp=True, no_udp=True)
    ctx = Context(conf, loop)
    d = Dispatcher(ctx, {"dhcp": BrokenUdp, "udp": BrokenUdp})
    d.load_all()
    assert d.engines == {}  # never built
    d.handle(memoryview(FRAMES["dhcp"]))
    d.handle(memoryview(FRAMES["udp"]))
    assert ctx.counters.drops() == {"disabled-dhcp": 1, "disabled-udp": 1}
    loop.close()


def test_a_batch_is_one_call_and_ends_with_end_batch(setup) -> None:
    """Frames of a batch are handled in order, an engine error costs one frame only,
    and each engine's end_batch() runs once after the batch."""
    ctx, d, sink = setup
    arp = ctx.engines["arp"]
    sink.feed(FRAMES["arp"], FRAMES["udp"], FRAMES["arp"], b"\x01" * 13, FRAMES["arp"])
    assert len(arp.seen) == 3 and arp.batches == 1
    drops = ctx.counters.drops()
    assert drops["engine-error-udp"] == 1 and sum(drops.values()) == 2


def test_engine_construction_failure_is_fatal() -> None:
    class Failing:
        def __init__(self, ctx):
            raise OSError("Failed to bind any port for port specifier")

    loop = Loop()
    ctx = Context(NetConfig(our_mac=b"\x02" * 6), loop)
    with pytest.raises(OSError):
        Dispatcher(ctx, {"tcp": Failing}).load_all()
    loop.close()
