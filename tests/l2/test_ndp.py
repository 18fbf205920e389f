"""NDP responder against passt-reference 5.3 / 4.8: RS -> RA, NS -> NA."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import (ICMPv6NDOptDNSSL, ICMPv6NDOptDstLLAddr, ICMPv6NDOptMTU,
                                ICMPv6NDOptPrefixInfo, ICMPv6NDOptRDNSS, ICMPv6NDOptSrcLLAddr,
                                ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6ND_RS, IPv6)
from scapy.layers.l2 import Ether

import passtcore
from passtcore.run.l2.common import Drop
from passtcore.run.l2.ndp import NdpEngine, ndp_reply

from .conftest import GUEST_LL, GUEST_MAC, OUR_MAC, assert_checksums, ip

# ICMPv6 body of a real RA from passt for the 4.3 setup (reference 5.3 and 8.3 (6)).
PASST_RA = bytes.fromhex(
    "86000163ff802328" "00000000" "00000000"
    "030440c000000e1000000e1000000000" "20010db8000000000000000000000000"
    "050100000000fff0"
    "190300000000003c" "20010db8000000000000000000000053"
    "1f0500000000003c" "076578616d706c6503636f6d00" "04636f7270076578616d706c65036f726700" "00"
    "0101021122334455")


def rs(src: str = GUEST_LL, hlim: int = 255) -> bytes:
    return bytes(Ether(src=GUEST_MAC, dst="33:33:00:00:00:02") /
                 IPv6(src=src, dst="ff02::2", hlim=hlim) / ICMPv6ND_RS())


def ns(target: str, src: str = GUEST_LL, hlim: int = 255) -> bytes:
    return bytes(Ether(src=GUEST_MAC, dst="33:33:ff:00:00:01") /
                 IPv6(src=src, dst="ff02::1:ff00:1", hlim=hlim) / ICMPv6ND_NS(tgt=target) /
                 ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC))


def icmp6_body(frame: bytes) -> bytes:
    return frame[14 + 40:]


def test_ra_matches_passt_bytes(harness):
    h = harness(NdpEngine)
    (reply,) = h.send(rs())
    assert icmp6_body(reply) == PASST_RA  # incl. checksum 0x0163
    pkt = assert_checksums(reply)
    assert (pkt[Ether].src, pkt[Ether].dst) == (OUR_MAC, GUEST_MAC)
    assert (pkt[IPv6].src, pkt[IPv6].dst, pkt[IPv6].hlim) == ("fe80::1", GUEST_LL, 255)
    ra = pkt[ICMPv6ND_RA]
    assert (ra.chlim, ra.M, ra.O, ra.routerlifetime, ra.reachabletime, ra.retranstimer) == \
        (255, 1, 0, 9000, 0, 0)
    pi = pkt[ICMPv6NDOptPrefixInfo]
    assert (pi.prefix, pi.prefixlen, pi.L, pi.A, pi.validlifetime, pi.preferredlifetime) == \
        ("2001:db8::", 64, 1, 1, 3600, 3600)
    assert pkt[ICMPv6NDOptMTU].mtu == 65520
    assert pkt[ICMPv6NDOptRDNSS].dns == ["2001:db8::53"] and pkt[ICMPv6NDOptRDNSS].lifetime == 60
    assert pkt[ICMPv6NDOptDNSSL].searchlist == ["example.com.", "corp.example.org."]
    assert pkt[ICMPv6NDOptDNSSL].lifetime == 60
    assert pkt[ICMPv6NDOptSrcLLAddr].lladdr == OUR_MAC


def _options(body: bytes) -> list[tuple[int, bytes]]:
    """(type, whole option) walking the RA options by their length fields."""
    out, i = [], 16
    while i < len(body):
        ln = body[i + 1] * 8
        assert ln > 0, "option with length 0: the guest would discard the RA"
        out.append((body[i], body[i:i + ln]))
        i += ln
    assert i == len(body)
    return out


@pytest.mark.parametrize("search", [
    ["example123.com"],                   # 16 encoded bytes: multiple of 8 (passt 2023 overflowed)
    ["example.com", "corp.example.org"],  # 31 bytes
    ["a.b"],                              # 5 bytes
    ["x" * 63 + ".example", "y.example"],
])
def test_dnssl_padding_exact(harness, conf, search):
    h = harness(NdpEngine, dataclasses.replace(conf, search=search))
    (reply,) = h.send(rs())
    body = icmp6_body(reply)
    opts = _options(body)
    assert [t for t, _ in opts] == [3, 5, 25, 31, 1]
    dnssl = dict(opts)[31]
    encoded = sum(len(n) + 2 for n in search)
    assert len(dnssl) == 8 + encoded + (-encoded % 8)
    assert dnssl[8 + encoded:] == bytes(len(dnssl) - 8 - encoded)
    pkt = assert_checksums(reply)
    assert pkt[ICMPv6NDOptDNSSL].searchlist == [n + "." for n in search]


def test_dnssl_sent_without_rdnss(harness, conf):
    h = harness(NdpEngine, dataclasses.replace(conf, dns6=[]))
    (reply,) = h.send(rs())
    assert [t for t, _ in _options(icmp6_body(reply))] == [3, 5, 31, 1]


def test_ra_without_mtu_dns_search(harness, conf):
    h = harness(NdpEngine, dataclasses.replace(conf, mtu=0, no_dhcp_dns=True, no_dhcp_search=True))
    (reply,) = h.send(rs())
    assert [t for t, _ in _options(icmp6_body(reply))] == [3, 1]


def test_rs_from_unspecified_goes_to_all_nodes(harness):
    h = harness(NdpEngine)
    (reply,) = h.send(rs(src="::"))
    pkt = assert_checksums(reply)
    assert pkt[IPv6].dst == "ff02::1" and pkt[Ether].dst == "33:33:00:00:00:01"


def test_source_is_our_link_local_when_gateway_is_global(harness, conf):
    c = dataclasses.replace(conf, gw6=ip("2001:db8::1"), gw6_ll=None)
    (reply,) = harness(NdpEngine, c).send(rs())
    assert assert_checksums(reply)[IPv6].src == "fe80::211:22ff:fe33:4455"


def test_no_ra(harness, conf):
    h = harness(NdpEngine, dataclasses.replace(conf, no_ra=True))
    assert h.send(rs()) == []


@pytest.mark.parametrize("target", ["fe80::1", "2001:db8::1", "2001:db8::77", "fe80::99"])
def test_ns_gets_na(harness, target):
    h = harness(NdpEngine)
    (reply,) = h.send(ns(target))
    pkt = assert_checksums(reply)
    na = pkt[ICMPv6ND_NA]
    assert (na.R, na.S, na.O, na.tgt) == (1, 1, 1, target)
    assert pkt[ICMPv6NDOptDstLLAddr].lladdr == OUR_MAC
    assert (pkt[IPv6].src, pkt[IPv6].dst, pkt[IPv6].hlim) == ("fe80::1", GUEST_LL, 255)
    assert pkt[Ether].dst == GUEST_MAC
    assert len(icmp6_body(reply)) == 32


def test_ns_from_global_source(harness):
    (reply,) = harness(NdpEngine).send(ns("2001:db8::1", src="2001:db8::10"))
    assert assert_checksums(reply)[IPv6].dst == "2001:db8::10"


def test_dad_probe_silent(harness):
    h = harness(NdpEngine)
    assert h.send(ns("2001:db8::10", src="::")) == []
    assert h.send(ns(GUEST_LL, src="::")) == []


def test_rfc4861_validity(harness):
    h = harness(NdpEngine)
    assert h.send(ns("fe80::1", hlim=64)) == []
    assert h.send(rs(hlim=1)) == []
    assert h.counters.drops() == {"ndp-bad-hop-limit": 2}


def test_guest_ra_na_ignored(harness):
    h = harness(NdpEngine)
    ra = bytes(Ether(src=GUEST_MAC) / IPv6(src=GUEST_LL, dst="ff02::1") / ICMPv6ND_RA())
    na = bytes(Ether(src=GUEST_MAC) / IPv6(src=GUEST_LL, dst="ff02::1") /
               ICMPv6ND_NA(tgt="fe80::5"))
    assert h.send(ra) == [] and h.send(na) == []
    assert h.counters.drops() == {"ndp-ignored": 2}


def test_padded_ns(harness):
    frame = ns("fe80::1")
    (r1,) = harness(NdpEngine).send(frame)
    (r2,) = harness(NdpEngine).send(frame + b"\x55" * 30)
    assert r1 == r2


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from([133, 135, 134, 136]), body=st.binary(max_size=80))
def test_garbage_never_raises(conf, kind, body):
    frame = bytes(Ether(src=GUEST_MAC) / IPv6(src=GUEST_LL, dst="ff02::2", nh=58, hlim=255)) \
        + bytes((kind, 0, 0, 0)) + body
    frame = frame[:18] + (len(frame) - 54).to_bytes(2, "big") + frame[20:]
    try:
        info = passtcore.headers.parse_frame(frame)
    except passtcore.headers.ParseError:
        return
    try:
        reply = ndp_reply(memoryview(frame), info, conf)
    except Drop:
        return
    if reply is not None:
        assert_checksums(reply)
