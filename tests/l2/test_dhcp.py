"""DHCPv4 server against passt-reference 5.2 / 4.3-4.5: scapy-built requests,
replies compared with the bytes the Debian passt binary sent and parsed by scapy."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

import passtcore
from passtcore.run.l2.dhcp import DhcpEngine, dhcp_reply
from passtcore.run.l2.common import Drop, encode_domains

from .conftest import GUEST_MAC, OUR_MAC, assert_checksums, decode_names, ip, mac

XID = 0x1A2B3C4D

# The options area of a real OFFER from passt for the 4.3 setup (reference 5.2).
PASST_OFFER_OPTIONS = bytes.fromhex(
    "0104ffffff00" "0304c0000201" "0604c0000235" "1a02fff0" "3304ffffffff"
    "350102" "3604c0000201"
    "771f" "076578616d706c6503636f6d00" "04636f727007" "6578616d706c65036f726700"
    "ff00")


def dhcp_frame(msg: str, flags: int = 0, ciaddr: str = "0.0.0.0", extra: list | None = None,
               src: str = "0.0.0.0", dst: str = "255.255.255.255") -> bytes:
    opts = [("message-type", msg), ("param_req_list", [1, 3, 6, 15, 26, 119])]
    opts += extra or []
    return bytes(Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") /
                 IP(src=src, dst=dst) / UDP(sport=68, dport=67) /
                 BOOTP(op=1, xid=XID, flags=flags, ciaddr=ciaddr,
                       chaddr=mac(GUEST_MAC) + bytes(10)) /
                 DHCP(options=opts + ["end"]))


def options(pkt) -> dict:
    return {o[0]: o[1:] if len(o) > 2 else o[1] for o in pkt[DHCP].options if isinstance(o, tuple)}


def raw_options(reply: bytes) -> bytes:
    return reply[14 + 20 + 8 + 240:]


def test_offer_matches_passt_bytes(harness):
    h = harness(DhcpEngine)
    (reply,) = h.send(dhcp_frame("discover"))
    assert len(reply) == 354
    assert raw_options(reply) == PASST_OFFER_OPTIONS
    pkt = assert_checksums(reply)
    assert pkt[Ether].dst == GUEST_MAC and pkt[Ether].src == OUR_MAC
    assert (pkt[IP].src, pkt[IP].dst, pkt[IP].ttl) == ("192.0.2.1", "192.0.2.10", 255)
    assert (pkt[UDP].sport, pkt[UDP].dport) == (67, 68)
    b = pkt[BOOTP]
    assert (b.op, b.xid, b.yiaddr, b.secs) == (2, XID, "192.0.2.10", 0)
    assert b.chaddr[:6] == mac(GUEST_MAC)
    o = options(pkt)
    assert o["message-type"] == 2
    assert o["subnet_mask"] == "255.255.255.0"
    assert o["router"] == "192.0.2.1"
    assert o["server_id"] == "192.0.2.1"
    assert o["name_server"] == "192.0.2.53"
    assert o["lease_time"] == 0xFFFFFFFF
    assert o["interface-mtu"] == 65520
    assert h.counters["dhcp-reply"] == 1


def test_request_gets_ack_keeping_fields(harness):
    h = harness(DhcpEngine)
    (reply,) = h.send(dhcp_frame("request", flags=0x8000, ciaddr="192.0.2.99",
                                 extra=[("requested_addr", "192.0.2.99"),
                                        ("server_id", "198.51.100.9")]))
    pkt = assert_checksums(reply)
    b = pkt[BOOTP]
    assert (b.op, b.xid, b.flags, b.ciaddr, b.yiaddr) == (2, XID, 0x8000, "192.0.2.99",
                                                          "192.0.2.10")
    assert options(pkt)["message-type"] == 5  # always ACK, never NAK
    assert pkt[IP].dst == "192.0.2.10"  # unicast, as passt, even with the broadcast flag


@pytest.mark.parametrize("msg", ["inform", "release", "decline"])
def test_unanswered_types(harness, msg):
    h = harness(DhcpEngine)
    assert h.send(dhcp_frame(msg, ciaddr="192.0.2.10", src="192.0.2.10")) == []
    assert h.counters["dhcp-ignored"] == 1


def test_padding_and_trailing_bytes_ignored(harness):
    h = harness(DhcpEngine)
    clean = dhcp_frame("discover")
    (r1,) = h.send(clean)
    (r2,) = h.send(clean + b"\xde\xad" * 20)  # bytes past the IP total length
    assert r1 == r2


def test_repeated_replies_identical(harness):
    h = harness(DhcpEngine)
    replies = [h.send(dhcp_frame("discover"))[0] for _ in range(3)]
    assert replies[0] == replies[1] == replies[2]


def test_search_compression_many_domains(harness, conf):
    names = ["example.com", "a.example.com", "b.a.example.com", "example.org", "x.example.org"]
    h = harness(DhcpEngine, dataclasses.replace(conf, search=names))
    for _ in range(2):
        (reply,) = h.send(dhcp_frame("discover"))
        area = raw_options(reply)
        at = area.index(b"\x77")
        data = area[at + 2:at + 2 + area[at + 1]]
        assert decode_names(data) == names
        assert b"\xc0\x00" in data  # "a.example.com" points back at "example.com"
        assert len(data) < len(encode_domains(names))


def test_long_search_list_split_into_several_options(harness, conf):
    names = [("d%d-" % i) + "x" * 55 + ".example" for i in range(6)]
    h = harness(DhcpEngine, dataclasses.replace(conf, search=names))
    (reply,) = h.send(dhcp_frame("discover"))
    area = raw_options(reply)
    data, i = b"", 0
    while area[i] != 255:
        if area[i] == 119:
            data += area[i + 2:i + 2 + area[i + 1]]
        i += 2 + area[i + 1]
    assert decode_names(data) == names


def test_options_without_dns_search_mtu(harness, conf):
    c = dataclasses.replace(conf, dns4=[], search=[], mtu=0)
    h = harness(DhcpEngine, c)
    (reply,) = h.send(dhcp_frame("discover"))
    area = raw_options(reply)
    expected = bytes.fromhex(
        "0104ffffff00" "0304c0000201" "3304ffffffff" "350102" "3604c0000201" "ff00")
    assert area[:len(expected)] == expected
    assert area[len(expected):] == bytes(60 - len(expected))
    assert len(area) == 60  # padded options area: a 300-byte BOOTP message
    assert len(reply) == 42 + 300


def test_no_dhcp_dns_and_search_flags(harness, conf):
    h = harness(DhcpEngine, dataclasses.replace(conf, no_dhcp_dns=True, no_dhcp_search=True))
    o = options(assert_checksums(h.send(dhcp_frame("discover"))[0]))
    assert "name_server" not in o and 119 not in o


def test_gateway_outside_subnet_adds_option_121(harness, conf):
    c = dataclasses.replace(conf, addr4=ip("198.51.100.5"), prefix4=32, gw4=ip("192.0.2.1"))
    (reply,) = harness(DhcpEngine, c).send(dhcp_frame("discover"))
    area = raw_options(reply)
    assert bytes.fromhex("790e" "20c0000201" "00000000" "00" "c0000201") in area
    o = options(assert_checksums(reply))
    assert list(o["classless_static_routes"]) == ["192.0.2.1/32:0.0.0.0", "0.0.0.0/0:192.0.2.1"]


def test_no_dhcp_swallows(harness, conf):
    h = harness(DhcpEngine, dataclasses.replace(conf, no_dhcp=True))
    assert h.send(dhcp_frame("discover")) == []
    assert h.counters.drops() == {"disabled-dhcp": 1}


def _mangled(payload: bytes) -> bytes:
    return bytes(Ether(src=GUEST_MAC) / IP(src="0.0.0.0", dst="255.255.255.255") /
                 UDP(sport=68, dport=67) / payload)


@pytest.mark.parametrize("payload,reason", [
    (b"\x01" * 100, "dhcp-short"),
    (bytes(BOOTP(op=2, xid=1) / DHCP(options=[("message-type", "discover"), "end"])),
     "dhcp-not-request"),
    (bytes(BOOTP(op=1, xid=1, options=b"\x00\x00\x00\x00")) + b"\x35\x01\x01\xff",
     "dhcp-bad-cookie"),
    (bytes(BOOTP(op=1, xid=1) / DHCP(options=["end"])), "dhcp-no-message-type"),
    (bytes(BOOTP(op=1, xid=1)) + b"\x63\x82\x53\x63\x35\x01\x01\x0c\x20abc",
     "dhcp-truncated-option"),
])
def test_malformed_dropped_and_counted(harness, payload, reason):
    h = harness(DhcpEngine)
    assert h.send(_mangled(payload)) == []
    assert h.counters.drops() == {reason: 1}


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=400), opts=st.binary(max_size=120), cut=st.integers(0, 400))
def test_garbage_never_raises(conf, body, opts, cut):
    """Arbitrary payloads (and valid headers with arbitrary options) either yield a
    well-formed reply or a Drop; nothing else escapes."""
    header = bytes(BOOTP(op=1, xid=7, chaddr=mac(GUEST_MAC)))[:236] + b"\x63\x82\x53\x63"
    for payload in (body, header + opts, (header + b"\x35\x01\x01" + opts)[:cut]):
        frame = _mangled(payload)
        info = passtcore.headers.parse_frame(frame)
        try:
            reply = dhcp_reply(memoryview(frame), info, conf)
        except Drop:
            continue
        if reply is not None:
            pkt = assert_checksums(reply)
            assert pkt[BOOTP].yiaddr == "192.0.2.10"



_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
_name = st.lists(_label, min_size=1, max_size=5).map(".".join)


@settings(max_examples=300, deadline=None)
@given(names=st.lists(_name, max_size=6), compress=st.booleans())
def test_domain_encoding_roundtrip(names, compress):
    """scapy's RFC 1035 decoder reads back what we encode, with or without pointers."""
    data = encode_domains(names, compress=compress)
    assert decode_names(data) == names
    if not compress:
        assert len(data) == sum(len(n) + 2 for n in names)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(opts=st.lists(st.tuples(st.sampled_from([0, 1, 50, 53, 54, 55, 61, 119, 255, 77]),
                               st.binary(max_size=12)), max_size=8))
def test_structured_options_never_raise(conf, opts):
    """Well-framed options with arbitrary contents (odd message-type lengths...)."""
    area = b"".join(bytes((c,)) if c in (0, 255) else bytes((c, len(v))) + v for c, v in opts)
    frame = _mangled(bytes(BOOTP(op=1, xid=9, chaddr=mac(GUEST_MAC)))[:236] + b"\x63\x82\x53\x63"
                     + area)
    info = passtcore.headers.parse_frame(frame)
    try:
        reply = dhcp_reply(memoryview(frame), info, conf)
    except Drop:
        return
    if reply is not None:
        assert options(assert_checksums(reply))["message-type"] in (2, 5)
