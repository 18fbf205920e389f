"""``build_udp(l4_csum=False)``: IPv4 UDP frames with checksum 0 ("none", RFC 768,
as passt sends them to the guest) without summing the payload; IPv6 always gets
its checksum. The UDP engine asks for it on IPv4 (it used to compute a full
checksum, then overwrite it with zero)."""
from __future__ import annotations

import ipaddress
import socket

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

GUEST_MAC, OUR_MAC = bytes.fromhex("525400123456"), bytes.fromhex("9a559a559a55")


def _build(headers, src: str, dst: str, payload: bytes, **kw) -> bytes:
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    hl = headers.header_len(4 if len(s) == 4 else 6, 17)
    buf = bytearray(hl + len(payload))
    buf[hl:] = payload
    n = headers.build_udp(buf, 0, GUEST_MAC, OUR_MAC, s, d, 53, 40000, len(payload), **kw)
    return bytes(buf[:n])


def test_ipv4_without_checksum(headers) -> None:
    payload = b"\x5a" * 999
    full = _build(headers, "192.0.2.1", "192.0.2.2", payload)
    none = _build(headers, "192.0.2.1", "192.0.2.2", payload, l4_csum=False)
    assert Ether(full)[UDP].chksum != 0
    assert Ether(none)[UDP].chksum == 0
    assert none[:40] == full[:40] and none[42:] == full[42:]  # only the checksum differs
    assert Ether(none)[IP].chksum == Ether(full)[IP].chksum   # the IP header is still right


def test_ipv6_keeps_its_checksum(headers) -> None:
    payload = b"\xa5" * 333
    full = _build(headers, "2001:db8::1", "2001:db8::2", payload)
    assert _build(headers, "2001:db8::1", "2001:db8::2", payload, l4_csum=False) == full


def test_udp_engine_never_sums_ipv4_payloads(monkeypatch) -> None:
    """Through the engine: a host datagram to an IPv4 guest is built with l4_csum=False."""
    import passtcore
    from passtcore.run.udp import engine as udp_engine
    from tcp.harness import GUEST4, GW4, Harness, guest_port

    calls: list[dict] = []
    real = passtcore.headers.build_udp

    def spy(*args, **kw):
        calls.append(kw)
        return real(*args, **kw)

    h = Harness(udp_engine.UdpEngine)
    h.engine.h = type("H", (), {"build_udp": staticmethod(spy),
                                "header_len": staticmethod(passtcore.headers.header_len)})()
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(5)
    try:
        h.inject(IP(src=GUEST4, dst=GW4) / UDP(sport=guest_port(), dport=srv.getsockname()[1])
                 / b"ping")
        data, peer = srv.recvfrom(100)
        srv.sendto(b"pong", peer)
        h.wait_for(lambda p: UDP in p and bytes(p[UDP].payload) == b"pong")
        assert calls and all(kw.get("l4_csum") is False for kw in calls)
    finally:
        srv.close()
        h.close()
