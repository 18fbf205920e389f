"""ICMP/ICMPv6 echo engine (passt-reference 5.5).

Unit part: what the engine refuses. Real part (``netns``): the engine's ping
sockets live in a private namespace created here, and the echo goes to that
namespace's loopback, so the kernel's own ICMP stack answers: nothing leaves it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import subprocess
import time
import uuid

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6ND_RS, IPv6
from scapy.layers.l2 import Ether

from passtcore.netns import entered, write_sysctl
from passtcore.run.icmp.engine import ICMP_TIMEOUT, PING_WARNING, IcmpEngine

from .conftest import GUEST_MAC, OUR_MAC, assert_checksums

PAYLOAD = b"pingdata-passtcore"


def echo4(dst: str, ident: int = 0x4242, seq: int = 7, src: str = "192.0.2.10",
          itype: int = 8) -> bytes:
    return bytes(Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src=src, dst=dst) /
                 ICMP(type=itype, id=ident, seq=seq) / PAYLOAD)


def echo6(dst: str, ident: int = 0x4343, seq: int = 9, src: str = "2001:db8::10") -> bytes:
    return bytes(Ether(src=GUEST_MAC, dst=OUR_MAC) / IPv6(src=src, dst=dst) /
                 ICMPv6EchoRequest(id=ident, seq=seq, data=PAYLOAD))


# -- unit: no sockets are opened for what the engine refuses --------------------------

def test_non_echo_dropped(harness):
    h = harness(IcmpEngine)
    assert h.send(echo4("192.0.2.1", itype=0)) == []
    assert h.send(echo4("192.0.2.1", itype=13)) == []
    rs = bytes(Ether(src=GUEST_MAC) / IPv6(src="fe80::1", dst="ff02::2") / ICMPv6ND_RS())
    assert h.send(rs) == []
    # the dispatcher drops them by type; the RS goes to NDP, not built here
    assert h.counters.drops() == {"icmp-type-0": 1, "icmp-type-13": 1, "no-engine-ndp": 1}
    assert h.engine.echos == {}


def test_multicast_and_disabled(harness, conf):
    h = harness(IcmpEngine)
    assert h.send(echo4("224.0.0.1")) == [] and h.send(echo6("ff02::1")) == []
    assert h.counters.drops() == {"icmp-multicast": 2}
    h = harness(IcmpEngine, dataclasses.replace(conf, no_icmp=True))
    assert h.send(echo4("192.0.2.1")) == []
    assert h.counters.drops() == {"disabled-icmp": 1}


# -- real ping sockets in a private namespace ------------------------------------------

@contextlib.contextmanager
def private_ns(ping_range: str = "0 2147483647"):
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    name = f"l2icmp-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        with entered(name):
            write_sysctl("net.ipv4.ping_group_range", ping_range)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def pump(h, n: int, timeout: float = 3.0) -> list[bytes]:
    """Run the loop until ``n`` frames reached the guest (bounded)."""
    deadline = time.monotonic() + timeout
    while len(h.sink.frames) < n and time.monotonic() < deadline:
        h.loop.run_once(0.1)
    return h.sink.frames


@pytest.mark.netns
def test_echo_v4_and_v6_through_ping_sockets(harness):
    h = harness(IcmpEngine)
    with private_ns() as ns:
        with entered(ns):
            h.send(echo4("127.0.0.1", src="192.0.2.10"))
            h.send(echo6("::1", src="2001:db8::10"))
        frames = pump(h, 2)
    assert len(frames) == 2
    by_ver = {Ether(f).type: f for f in frames}
    p4 = assert_checksums(by_ver[0x0800])
    assert (p4[Ether].src, p4[Ether].dst) == (OUR_MAC, GUEST_MAC)
    assert (p4[IP].src, p4[IP].dst, p4[IP].ttl) == ("127.0.0.1", "192.0.2.10", 255)
    assert (p4[ICMP].type, p4[ICMP].code, p4[ICMP].id, p4[ICMP].seq) == (0, 0, 0x4242, 7)
    assert bytes(p4[ICMP].payload) == PAYLOAD
    p6 = assert_checksums(by_ver[0x86DD])
    assert (p6[IPv6].src, p6[IPv6].dst, p6[IPv6].hlim) == ("::1", "2001:db8::10", 255)
    r6 = p6[ICMPv6EchoReply]
    assert (r6.id, r6.seq, r6.data) == (0x4343, 9, PAYLOAD)
    assert h.counters["icmp-request"] == 2 and h.counters["icmp-reply"] == 2
    assert len(h.engine.echos) == 2


@pytest.mark.netns
def test_reply_bytes_match_passt(harness):
    """Reference 5.5 / 8.3 (2): echo to 192.0.2.10, id 0x4242, seq 7, "pingdata"."""
    h = harness(IcmpEngine)
    with private_ns() as ns:
        subprocess.run(["ip", "-n", ns, "addr", "add", "192.0.2.10/32", "dev", "lo"], check=True)
        frame = bytes(Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src="192.0.2.10", dst="192.0.2.10") /
                      ICMP(type=8, id=0x4242, seq=7) / b"pingdata")
        with entered(ns):
            h.send(frame)
        (reply,) = pump(h, 1)
    assert reply[14:] == bytes.fromhex("450000240000" "0000ff0137c4" "c000020ac000020a"
                                       "00000623424200077069" "6e6764617461")


@pytest.mark.netns
def test_id_mapped_back_when_bind_fails(harness):
    """Another socket holds the identifier: the kernel picks one, the guest sees its own."""
    h = harness(IcmpEngine)
    with private_ns() as ns:
        with entered(ns):
            holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        try:
            holder.bind(("0.0.0.0", 0x5151))
            with entered(ns):
                for seq in (1, 2):
                    h.send(echo4("127.0.0.1", ident=0x5151, seq=seq))
            frames = pump(h, 2)
        finally:
            holder.close()
    assert [(Ether(f)[ICMP].id, Ether(f)[ICMP].seq) for f in frames] == [(0x5151, 1), (0x5151, 2)]
    for f in frames:
        assert_checksums(f)
    assert len(h.engine.echos) == 1  # one socket per (family, id)


@pytest.mark.netns
def test_idle_sockets_expire(harness):
    h = harness(IcmpEngine)
    with private_ns() as ns:
        with entered(ns):
            for ident in (5, 64, 1000, 60000):  # passt 2023 only expired ids 0-63
                h.send(echo4("127.0.0.1", ident=ident))
        pump(h, 4)
        fds = [e.sock.fileno() for e in h.engine.echos.values()]
        assert len(fds) == 4
        now = h.loop.now()
        h.dispatcher.tick(now + ICMP_TIMEOUT / 2)
        assert len(h.engine.echos) == 4
        h.dispatcher.tick(now + ICMP_TIMEOUT + 1)
        assert h.engine.echos == {}
        assert h.counters["icmp-socket-expired"] == 4
        assert all(fd not in h.loop._readers for fd in fds)


@pytest.mark.netns
def test_warning_once_without_ping_group(harness, caplog):
    h = harness(IcmpEngine)
    with private_ns(ping_range="1 0") as ns:
        if os.getgid() == 0:
            with entered(ns):
                try:
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).close()
                    pytest.skip("ping sockets allowed outside ping_group_range here")
                except PermissionError:
                    pass
        with caplog.at_level(logging.WARNING, logger="passtcore.icmp"), entered(ns):
            for seq in range(3):
                assert h.send(echo4("127.0.0.1", seq=seq)) == []
    assert [r.getMessage() for r in caplog.records] == [PING_WARNING]
    assert h.counters.drops() == {"icmp-no-ping-socket": 3}


@pytest.mark.netns
def test_unreachable_destination_counted(harness):
    """sendto errors (no route in the empty namespace) are counted, not raised."""
    h = harness(IcmpEngine)
    with private_ns() as ns, entered(ns):
        assert h.send(echo4("198.51.100.99")) == []
    assert h.counters.drops() == {"icmp-send-error": 1}

