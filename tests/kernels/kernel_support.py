"""Helpers for the kernel tests: known frames (scapy-built or hard-coded) and backend loading."""
from __future__ import annotations

import importlib
import ipaddress
import os
from types import ModuleType

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_RA,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

MAC_G = "52:54:00:12:34:56"
MAC_H = "9a:55:9a:55:9a:55"
A4, B4 = "192.0.2.2", "198.51.100.7"
A6, B6 = "2001:db8::2", "2001:db8:1::7"

# Real frames (hex) with the checksums the wire carried (passt-reference 8.3):
# (2) a passt ICMP echo reply to the guest, (3) a passt-style TCP/IPv4 PSH|ACK "hello",
# (4) the same TCP segment over IPv6.
_ETH4 = "5254001234569a559a559a550800"
_ETH6 = "5254001234569a559a559a5586dd"
REAL_ICMP_REPLY = bytes.fromhex(
    _ETH4 + "4500002400000000ff0137c4c000020ac000020a" + "0000062342420007" + "70696e6764617461"
)
REAL_TCP4 = bytes.fromhex(
    _ETH4 + "4500002d00000000ff0637bfc0000201c000020a"
    + "23289c40000000010000000150180200267f0000" + "68656c6c6f"
)
REAL_TCP6 = bytes.fromhex(
    _ETH6 + "6000000000190640" + "20010db8000000000000000000000001"
    + "20010db8000000000000000000000002"
    + "23289c400000000100000001501802004f160000" + "68656c6c6f"
)
# (6) the Router Advertisement passt sent to a guest (passt-reference 5.3 / 8.3 (6)):
# fe80::1 -> fe80::5054:ff:fe12:3456, 128-byte ICMPv6 body, checksum 0x0163.
REAL_RA = bytes.fromhex(
    "5254001234569a559a559a5586dd" + "6000000000803aff"
    + "fe800000000000000000000000000001" + "fe80000000000000505400fffe123456"
    + "86000163ff80232800000000" + "00000000"
    + "030440c000000e1000000e1000000000" + "20010db8000000000000000000000000"
    + "050100000000fff0"
    + "190300000000003c" + "20010db8000000000000000000000053"
    + "1f0500000000003c" + "076578616d706c6503636f6d0004636f7270076578616d706c65036f72670000"
    + "0101021122334455"
)
REAL = {"icmp_reply": REAL_ICMP_REPLY, "tcp4": REAL_TCP4, "tcp6": REAL_TCP6, "ra": REAL_RA}

SCAPY_FRAMES = {
    "tcp4": Ether(dst=MAC_H, src=MAC_G) / IP(src=A4, dst=B4, ttl=64) / TCP(
        sport=40000, dport=80, seq=123456, ack=654321, flags="PA", window=29200,
        options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1234, 5678)), ("NOP", None),
                 ("WScale", 7)]) / (b"GET / HTTP/1.0\r\n\r\n"),
    "tcp4_opts_ip": Ether(dst=MAC_H, src=MAC_G) / IP(src=A4, dst=B4, options=b"\x01\x01\x01\x00") / TCP(
        sport=1, dport=2, flags="S") / b"x",
    "udp4": Ether(dst=MAC_H, src=MAC_G) / IP(src=A4, dst=B4) / UDP(sport=5353, dport=53) / (b"q" * 31),
    "icmp4": Ether(dst=MAC_H, src=MAC_G) / IP(src=A4, dst=B4) / ICMP(id=0x1234, seq=7) / b"pingdata",
    "tcp6": Ether(dst=MAC_H, src=MAC_G) / IPv6(src=A6, dst=B6, hlim=64) / TCP(
        sport=33000, dport=443, seq=1, ack=2, flags="A", window=100) / (b"z" * 101),
    "udp6": Ether(dst=MAC_H, src=MAC_G) / IPv6(src=A6, dst=B6) / UDP(sport=546, dport=547) / b"dhcpv6",
    "icmp6": Ether(dst=MAC_H, src=MAC_G) / IPv6(src=A6, dst=B6) / ICMPv6EchoRequest(id=9, seq=3, data=b"abc"),
    "ra6": Ether(dst=MAC_G, src=MAC_H) / IPv6(src="fe80::1", dst="ff02::1") / ICMPv6ND_RA(),
    "udp6_ext": Ether(dst=MAC_H, src=MAC_G) / IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop()
    / IPv6ExtHdrRouting(addresses=[]) / IPv6ExtHdrDestOpt() / UDP(sport=7, dport=9) / b"ext",
    "tcp6_atomic_frag": Ether(dst=MAC_H, src=MAC_G) / IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(
        offset=0, m=0, id=5) / TCP(sport=5, dport=6) / b"af",
    "vlan_udp4": Ether(dst=MAC_H, src=MAC_G) / Dot1Q(vlan=42) / IP(src=A4, dst=B4) / UDP(
        sport=1000, dport=2000) / b"vlan",
    "arp": Ether(dst="ff:ff:ff:ff:ff:ff", src=MAC_G) / ARP(op=1, hwsrc=MAC_G, psrc=A4, pdst=B4),
}


def frame_bytes(name: str) -> bytes:
    return bytes(SCAPY_FRAMES[name])


PURE_ONLY = os.environ.get("PASSTCORE_PURE", "") not in ("", "0")


def native_or_none(name: str) -> ModuleType | None:
    """The Cython module, or None when it is not built / PASSTCORE_PURE=1."""
    if PURE_ONLY:
        return None
    try:
        return importlib.import_module(f"passtcore._{name}")
    except ImportError:
        return None


def mac(s: str) -> bytes:
    return bytes.fromhex(s.replace(":", ""))


def ip(s: str) -> bytes:
    return ipaddress.ip_address(s).packed


def check_against_scapy(info, frame: bytes) -> None:
    """Every field parse_frame reports must agree with scapy's dissection."""
    pkt = Ether(frame)
    assert info.eth_dst == mac(pkt.dst) and info.eth_src == mac(pkt.src)
    if pkt.haslayer(Dot1Q):
        assert info.vlan == pkt[Dot1Q].vlan
    else:
        assert info.vlan == -1
    if pkt.haslayer(ARP):
        a = pkt[ARP]
        assert (info.ip_version, info.arp_op) == (0, a.op)
        assert info.arp_sha == mac(a.hwsrc) and info.arp_spa == ip(a.psrc)
        assert info.arp_tpa == ip(a.pdst) and info.arp_tha == mac(a.hwdst)
        return
    if pkt.haslayer(IP):
        l3 = pkt[IP]
        assert info.ip_version == 4 and info.l3_len == l3.len and info.ttl == l3.ttl
        assert info.src == ip(l3.src) and info.dst == ip(l3.dst)
        assert info.is_fragment == bool(l3.frag or l3.flags.MF)
    else:
        l3 = pkt[IPv6]
        assert info.ip_version == 6 and info.l3_len == 40 + l3.plen and info.ttl == l3.hlim
        assert info.src == ip(l3.src) and info.dst == ip(l3.dst)
    start = len(frame) - len(bytes(l3))
    assert info.l3_offset == start
    for layer, proto in ((TCP, 6), (UDP, 17)):
        if pkt.haslayer(layer) and not info.is_fragment:
            l4 = pkt[layer]
            assert info.l4_proto == proto
            assert (info.sport, info.dport) == (l4.sport, l4.dport)
            assert info.l4_offset == len(frame) - len(bytes(l4)) + (len(frame) - start - info.l3_len) * 0
            payload = bytes(l4.payload)
            if pkt.haslayer(Raw) or payload:
                got = frame[info.payload_offset : info.payload_offset + info.payload_len]
                assert got == payload[: info.payload_len]
    if pkt.haslayer(TCP):
        t = pkt[TCP]
        assert (info.tcp_seq, info.tcp_ack, info.tcp_window) == (t.seq, t.ack, t.window)
        assert info.tcp_flags == int(t.flags)
        opts = dict((k, v) for k, v in t.options)
        assert info.tcp_mss == opts.get("MSS", -1)
        assert info.tcp_wscale == opts.get("WScale", -1)
        assert info.tcp_sack_ok == ("SAckOK" in opts)
        ts = opts.get("Timestamp", (-1, -1))
        assert (info.tcp_ts_val, info.tcp_ts_ecr) == ts
    if pkt.haslayer(ICMP):
        i = pkt[ICMP]
        assert (info.l4_proto, info.icmp_type, info.icmp_code) == (1, i.type, i.code)
        assert (info.icmp_id, info.icmp_seq, info.sport) == (i.id, i.seq, i.id)
    echo6 = next((L for L in (ICMPv6EchoRequest, ICMPv6EchoReply) if pkt.haslayer(L)), None)
    if echo6 is not None:
        i = pkt[echo6]
        assert (info.l4_proto, info.icmp_type, info.icmp_id, info.icmp_seq) == (58, i.type, i.id, i.seq)
        assert info.sport == i.id
        assert frame[info.payload_offset : info.payload_offset + info.payload_len] == i.data
