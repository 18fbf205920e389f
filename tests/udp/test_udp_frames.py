"""Frame-level tests of the UDP engine: scapy guest, real host sockets on loopback."""
from __future__ import annotations

import socket

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from passtcore.run.udp.engine import UdpEngine

from tcp.harness import (GUEST4, GUEST6, GW4, GW6, Harness, checksums_ok, guest_port,
                         make_conf)


@pytest.fixture
def h():
    harness = Harness(UdpEngine)
    yield harness
    harness.close()


def _udp_server(family: int) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    s.settimeout(2)
    return s


def test_v4_to_gateway_reaches_loopback_and_reply_maps_back(h):
    srv = _udp_server(socket.AF_INET)
    try:
        port = srv.getsockname()[1]
        gport = guest_port()
        h.inject(IP(src=GUEST4, dst=GW4) / UDP(sport=gport, dport=port) / b"ping")
        data, peer = srv.recvfrom(100)
        assert data == b"ping"
        assert peer[0] == "127.0.0.1"
        assert peer[1] == gport  # source port preserved (7.1)
        srv.sendto(b"pong", peer)
        got = h.wait_for(lambda p: UDP in p)
        p = [q for q in got if UDP in q][0]
        assert p[IP].src == GW4 and p[IP].dst == GUEST4
        assert p[UDP].sport == port and p[UDP].dport == gport
        assert p[UDP].chksum == 0  # IPv4: no UDP checksum (7.5)
        assert p[IP].ttl == 255 and checksums_ok(p)
        assert bytes(p[UDP].payload) == b"pong"
    finally:
        srv.close()


def test_v6_to_gateway_and_back(h):
    srv = _udp_server(socket.AF_INET6)
    try:
        port = srv.getsockname()[1]
        gport = guest_port()
        h.inject(IPv6(src=GUEST6, dst=GW6) / UDP(sport=gport, dport=port) / b"ping6")
        data, peer = srv.recvfrom(100)
        assert data == b"ping6" and peer[0] == "::1"
        srv.sendto(b"pong6", peer)
        got = h.wait_for(lambda p: UDP in p)
        p = [q for q in got if UDP in q][0]
        assert p[IPv6].src == GW6               # ::1 -> gateway (link-local)
        assert p[IPv6].dst == GUEST6 or p[IPv6].dst.startswith("fe80")
        assert p[UDP].chksum != 0 and checksums_ok(p)
        assert bytes(p[UDP].payload) == b"pong6"
    finally:
        srv.close()


def test_zero_length_datagram(h):
    srv = _udp_server(socket.AF_INET)
    try:
        port = srv.getsockname()[1]
        h.inject(IP(src=GUEST4, dst=GW4) / UDP(sport=guest_port(), dport=port))
        data, _ = srv.recvfrom(100)
        assert data == b""
    finally:
        srv.close()


def test_flow_expires_after_timeout(h):
    srv = _udp_server(socket.AF_INET)
    try:
        h.inject(IP(src=GUEST4, dst=GW4) / UDP(sport=guest_port(), dport=srv.getsockname()[1]) / b"x")
        assert h.engine.stats()["flows"] == 1
        h.advance(100)
        assert h.engine.stats()["flows"] == 1
        h.advance(81)
        assert h.engine.stats()["flows"] == 0
    finally:
        srv.close()


def test_flow_limit_drops_and_counts():
    h = Harness(UdpEngine, make_conf(max_flows=1))
    srv = _udp_server(socket.AF_INET)
    try:
        port = srv.getsockname()[1]
        a, b = guest_port(), guest_port() + 1
        h.inject(IP(src=GUEST4, dst=GW4) / UDP(sport=a, dport=port) / b"1")
        h.inject(IP(src=GUEST4, dst=GW4) / UDP(sport=b, dport=port) / b"2")
        assert srv.recvfrom(10)[0] == b"1"
        srv.settimeout(0.2)
        with pytest.raises(socket.timeout):
            srv.recvfrom(10)
        assert h.ctx.counters.values["udp_flows_refused"] == 1
        assert h.ctx.counters.values["drop.udp-no-socket"] == 1
    finally:
        srv.close()
        h.close()


def test_inbound_forwarded_port_with_remap_and_reply():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        host_port = probe.getsockname()[1]
    h = Harness(UdpEngine, make_conf(udp_ports=[f"127.0.0.1/{host_port}:7777"]))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.bind(("127.0.0.1", 0))
        client.settimeout(2)
        client.sendto(b"to guest", ("127.0.0.1", host_port))
        got = h.wait_for(lambda p: UDP in p)
        p = [q for q in got if UDP in q][0]
        assert p[IP].src == GW4 and p[IP].dst == GUEST4
        assert p[UDP].dport == 7777 and p[UDP].sport == client.getsockname()[1]
        # the guest's reply from 7777 leaves through the forwarded socket
        h.inject(IP(src=GUEST4, dst=GW4) / UDP(sport=7777, dport=p[UDP].sport) / b"echo")
        data, peer = client.recvfrom(100)
        assert data == b"echo" and peer[1] == host_port
    finally:
        client.close()
        h.close()


def test_forwarded_ports_are_not_flows():
    """Forwarded sockets (``-u``, ``-u all``: 2 x 49151 of them) neither expire nor
    take --max-flows places from the guest's own flows."""
    ports = []
    for _ in range(3):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    h = Harness(UdpEngine, make_conf(max_flows=1, udp_ports=[f"127.0.0.1/{ports[0]},{ports[1]}"]))
    srv = _udp_server(socket.AF_INET)
    try:
        assert h.engine.stats() == {"flows": 0, "forwarded": 2}
        h.inject(IP(src=GUEST4, dst=GW4) / UDP(sport=guest_port(), dport=srv.getsockname()[1]) / b"1")
        assert srv.recvfrom(10)[0] == b"1"          # the one flow --max-flows allows
        assert h.engine.stats() == {"flows": 1, "forwarded": 2}
        h.advance(1000)                               # the guest's flow expires, not these
        assert h.engine.stats() == {"flows": 0, "forwarded": 2}
    finally:
        srv.close()
        h.close()


def test_dns_forward_v4():
    # responder on loopback at a high port stands in for port 53 via a dns_host trick:
    # the engine sends to dns_host:53, so bind a responder on 127.0.0.53:53 if we may.
    try:
        resp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        resp.bind(("127.0.0.53", 53))
    except OSError:
        pytest.skip("cannot bind 127.0.0.53:53 here (the netns test covers DNS forwarding)")
    resp.settimeout(2)
    fwd_addr = "192.0.2.254"
    import ipaddress
    h = Harness(UdpEngine, make_conf(dns_forward4=ipaddress.ip_address(fwd_addr).packed,
                                     dns_host4=ipaddress.ip_address("127.0.0.53").packed))
    try:
        gport = guest_port()
        h.inject(IP(src=GUEST4, dst=fwd_addr) / UDP(sport=gport, dport=53) / b"query")
        data, peer = resp.recvfrom(100)
        assert data == b"query"
        resp.sendto(b"answer", peer)
        got = h.wait_for(lambda p: UDP in p)
        p = [q for q in got if UDP in q][0]
        assert p[IP].src == fwd_addr and p[UDP].sport == 53 and p[UDP].dport == gport
        assert bytes(p[UDP].payload) == b"answer"
    finally:
        resp.close()
        h.close()
