"""Header parsing / rewriting / building, scapy as the independent oracle; adversarial inputs."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from passtcore_py import csum as pycsum
from passtcore_py.headers import REASONS
from kernel_support import MAC_G, MAC_H, REAL, SCAPY_FRAMES, check_against_scapy, frame_bytes, ip, mac

SETTINGS = settings(max_examples=40, deadline=None)


@pytest.mark.parametrize("name", sorted(SCAPY_FRAMES))
def test_parse_matches_scapy(headers, name):
    frame = frame_bytes(name)
    info = headers.parse_frame(frame)
    check_against_scapy(info, frame)
    # the same frame at an offset inside a bigger buffer, with trailing garbage
    buf = b"\xaa" * 13 + frame + b"\xbb" * 9
    info2 = headers.parse_frame(buf, 13, len(frame))
    assert info2.l3_offset - 13 == info.l3_offset
    if info.payload_offset >= 0:
        assert info2.payload_offset - 13 == info.payload_offset
    assert info2.payload_len == info.payload_len and info2.src == info.src


@pytest.mark.parametrize("name", sorted(REAL))
def test_parse_real_frames(headers, name):
    info = headers.parse_frame(REAL[name])
    check_against_scapy(info, REAL[name])


def test_ethernet_padding_ignored(headers):
    frame = frame_bytes("icmp4")
    padded = frame + b"\x99" * (60 - len(frame))
    assert len(padded) == 60
    info = headers.parse_frame(padded)
    assert info.payload_len == 8 and info.l3_len == 36
    assert padded[info.payload_offset : info.payload_offset + info.payload_len] == b"pingdata"
    udp6 = frame_bytes("udp6") + b"\x77" * 10
    i6 = headers.parse_frame(udp6)
    assert udp6[i6.payload_offset : i6.payload_offset + i6.payload_len] == b"dhcpv6"


def test_ipv6_extension_headers(headers):
    info = headers.parse_frame(frame_bytes("udp6_ext"))
    assert (info.l4_proto, info.sport, info.dport, info.is_fragment) == (17, 7, 9, False)
    atomic = headers.parse_frame(frame_bytes("tcp6_atomic_frag"))
    assert (atomic.l4_proto, atomic.sport, atomic.is_fragment) == (6, 5, False)
    frag = Ether(dst=MAC_H, src=MAC_G) / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrFragment(
        offset=0, m=1, id=5) / UDP(sport=1, dport=2) / (b"f" * 40)
    fi = headers.parse_frame(bytes(frag))
    assert fi.is_fragment and fi.l4_proto == 17 and fi.sport == 0


def test_ipv4_fragments_flagged(headers):
    for kw in ({"flags": "MF"}, {"frag": 10}):
        f = bytes(Ether(dst=MAC_H, src=MAC_G) / IP(src="192.0.2.1", dst="192.0.2.2", proto=17, **kw) / (b"\0" * 16))
        info = headers.parse_frame(f)
        assert info.is_fragment and info.l4_proto == 17 and info.sport == 0
    df = headers.parse_frame(bytes(Ether(dst=MAC_H, src=MAC_G) / IP(flags="DF") / UDP() / b"x"))
    assert not df.is_fragment


def test_unknown_ethertype_and_l4(headers):
    info = headers.parse_frame(bytes(Ether(type=0x88CC) / (b"\0" * 46)))
    assert (info.ethertype, info.ip_version, info.l4_proto) == (0x88CC, 0, -1)
    gre = headers.parse_frame(bytes(Ether(dst=MAC_H, src=MAC_G) / IP(proto=47) / (b"\1" * 8)))
    assert (gre.l4_proto, gre.payload_len, gre.sport) == (47, 8, 0)


def test_frameinfo_defaults(headers):
    info = headers.parse_frame(frame_bytes("udp4"))
    assert info.tcp_mss == -1 and info.tcp_ts_val == -1 and not info.tcp_sack_ok
    assert info.arp_sha == b"" and info.vlan == -1
    assert headers.FrameInfo is type(info)


# -- adversarial ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCAPY_FRAMES))
def test_every_truncation_is_a_parse_error(headers, name):
    frame = frame_bytes(name)
    for n in range(len(frame)):
        try:
            info = headers.parse_frame(frame[:n])
        except headers.ParseError as e:
            assert isinstance(e, ValueError)
            # a truncation is reported as one: a short header or an IP length past the cut
            assert e.reason in REASONS, (n, e.reason)
            assert e.reason.startswith("truncated-") or e.reason == "bad-ip-length", (n, e.reason)
        else:
            pytest.fail(f"{name}: truncated to {n} of {len(frame)} bytes parsed: {info!r}")


def test_bad_ihl_and_lengths(headers):
    base = bytearray(frame_bytes("udp4"))
    for ihl, reason in ((0, "bad-ihl"), (4, "bad-ihl"), (15, "truncated-ipv4")):
        f = bytearray(base)
        f[14] = 0x40 | ihl
        with pytest.raises(headers.ParseError) as ei:
            headers.parse_frame(f)
        assert ei.value.reason == reason
    for tot in (0, 19, len(base) - 14 + 1, 0xFFFF):
        f = bytearray(base)
        f[16:18] = tot.to_bytes(2, "big")
        with pytest.raises(headers.ParseError) as ei:
            headers.parse_frame(f)
        assert ei.value.reason == "bad-ip-length"
    f = bytearray(base)
    f[14] = 0x65
    with pytest.raises(headers.ParseError) as ei:
        headers.parse_frame(f)
    assert ei.value.reason == "bad-ip-version"


def test_bad_udp_length(headers):
    base = bytearray(frame_bytes("udp4"))
    for ulen in (0, 7, 100):
        f = bytearray(base)
        f[38:40] = ulen.to_bytes(2, "big")
        with pytest.raises(headers.ParseError) as ei:
            headers.parse_frame(f)
        assert ei.value.reason == "bad-udp-length"


def test_bad_ipv6_lengths(headers):
    base = bytearray(frame_bytes("udp6_ext"))
    f = bytearray(base)
    f[18:20] = (len(base) - 54 + 1).to_bytes(2, "big")
    with pytest.raises(headers.ParseError) as ei:
        headers.parse_frame(f)
    assert ei.value.reason == "bad-ip-length"
    f = bytearray(base)
    f[55] = 200  # hop-by-hop length running past the payload
    with pytest.raises(headers.ParseError) as ei:
        headers.parse_frame(f)
    assert ei.value.reason == "truncated-ipv6-ext"
    # hop-by-hop not in first position
    chain = Ether(dst=MAC_H, src=MAC_G) / IPv6(nh=60) / (b"\x00\x00" + b"\0" * 6) / (b"\x11\x00" + b"\0" * 6)
    with pytest.raises(headers.ParseError) as ei:
        headers.parse_frame(bytes(chain))
    assert ei.value.reason == "bad-ipv6-ext"
    # endless chain of destination options is bounded
    raw = bytes(Ether(dst=MAC_H, src=MAC_G) / IPv6(nh=60)) + (b"\x3c\x00" + b"\0" * 6) * 20
    raw = bytearray(raw)
    raw[18:20] = (20 * 8).to_bytes(2, "big")
    with pytest.raises(headers.ParseError) as ei:
        headers.parse_frame(bytes(raw))
    assert ei.value.reason == "bad-ipv6-ext"


def _tcp_with_options(opts: bytes, doff: int | None = None) -> bytes:
    hl = 20 + len(opts)
    doff = hl // 4 if doff is None else doff
    tcp = struct.pack("!HHIIBBHHH", 1, 2, 3, 4, doff << 4, 2, 100, 0, 0) + opts
    ipb = IP(src="192.0.2.1", dst="192.0.2.2", proto=6) / Raw(tcp)
    return bytes(Ether(dst=MAC_H, src=MAC_G) / ipb)


@pytest.mark.parametrize(
    "opts,reason",
    [
        (b"\x02\x00\x00\x00", "bad-tcp-option"),  # zero-length option
        (b"\x05\x01\x00\x00", "bad-tcp-option"),  # length 1
        (b"\x01\x01\x01\x08", "bad-tcp-option"),  # kind without a length byte
        (b"\x08\x0a\x00\x00", "bad-tcp-option"),  # timestamp running past the header
        (b"\x02\x05\x00\x00\x00\x00\x00\x00", "bad-tcp-option"),  # MSS with length 5
        (b"\x03\x04\x07\x00", "bad-tcp-option"),  # wscale with length 4
        (b"\x04\x03\x00\x00", "bad-tcp-option"),
    ],
)
def test_bad_tcp_options(headers, opts, reason):
    with pytest.raises(headers.ParseError) as ei:
        headers.parse_frame(_tcp_with_options(opts))
    assert ei.value.reason == reason


def test_tcp_options_end_and_unknown(headers):
    info = headers.parse_frame(_tcp_with_options(b"\x02\x04\x05\xb4\x00\xff\xff\xff"))
    assert info.tcp_mss == 1460
    info = headers.parse_frame(_tcp_with_options(b"\x1e\x04\xab\xcd\x03\x03\x0e\x01"))
    assert info.tcp_wscale == 14 and info.tcp_mss == -1
    assert headers.parse_tcp_options(b"\x04\x02\x01\x00", 0, 4) == (-1, -1, True, -1, -1)


@pytest.mark.parametrize("doff,reason", [(0, "bad-tcp-offset"), (4, "bad-tcp-offset"), (15, "truncated-tcp")])
def test_bad_tcp_offset(headers, doff, reason):
    with pytest.raises(headers.ParseError) as ei:
        headers.parse_frame(_tcp_with_options(b"", doff))
    assert ei.value.reason == reason


def test_bad_arp_and_vlan(headers):
    arp = bytearray(frame_bytes("arp"))
    arp[14 + 4] = 8  # hlen
    with pytest.raises(headers.ParseError) as ei:
        headers.parse_frame(arp)
    assert ei.value.reason == "bad-arp"
    with pytest.raises(headers.ParseError) as ei:
        headers.parse_frame(frame_bytes("vlan_udp4")[:16])
    assert ei.value.reason == "truncated-vlan"


@pytest.mark.parametrize("off,length", [(-1, 10), (0, 10_000), (100, -1), (5, -7)])
def test_bad_bounds(headers, off, length):
    with pytest.raises(headers.ParseError) as ei:
        headers.parse_frame(frame_bytes("udp4"), off, length)
    assert ei.value.reason == "bad-bounds"


def _parses_in_bounds(headers, data) -> None:
    """parse_frame either raises a known ParseError or reports L4 / payload inside ``data``."""
    try:
        info = headers.parse_frame(data)
    except headers.ParseError as e:
        assert e.reason in REASONS
        return
    if info.payload_offset >= 0:
        assert info.payload_offset + info.payload_len <= len(data)
    if info.l4_offset >= 0:
        assert info.l4_offset + info.l4_len <= len(data)


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(headers, junk):
    for prefix in (b"", bytes(12) + b"\x08\x00\x45", bytes(12) + b"\x86\xdd\x60", bytes(12) + b"\x81\x00\x00\x05\x08\x00\x46"):
        _parses_in_bounds(headers, prefix + junk)


@SETTINGS
@given(st.sampled_from(sorted(SCAPY_FRAMES)), st.integers(0, 200), st.integers(0, 255))
def test_bit_flips_never_crash(headers, name, pos, val):
    f = bytearray(frame_bytes(name))
    f[pos % len(f)] = val
    _parses_in_bounds(headers, f)


# -- rewrites ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tcp4", "udp4", "tcp6", "udp6", "icmp6", "icmp4", "udp6_ext", "vlan_udp4"])
def test_set_addresses_keeps_checksums(headers, name):
    f = bytearray(frame_bytes(name))
    info = headers.parse_frame(f)
    if info.ip_version == 4:
        s, d = ip("198.51.100.99"), ip("192.0.2.254")
    else:
        s, d = ip("2001:db8:ffff::1"), ip("fe80::5054:ff:fe12:3456")
    headers.set_addresses(f, info.l3_offset, src=s)
    assert pycsum.verify_frame(f)
    headers.set_addresses(f, info.l3_offset, dst=d)
    assert pycsum.verify_frame(f)
    again = headers.parse_frame(f)
    assert (again.src, again.dst) == (s, d)
    pkt = Ether(bytes(f))  # scapy agrees on the checksums
    ref = pkt.copy()
    for layer in (IP, TCP, UDP, ICMP):
        if ref.haslayer(layer):
            del ref[layer].chksum
    for layer in ref.layers():
        if hasattr(ref[layer], "cksum"):
            del ref[layer].cksum
    assert bytes(Ether(bytes(ref))) == bytes(f)
    with pytest.raises(headers.ParseError):
        headers.set_addresses(f, info.l3_offset, src=b"\1\2\3")


def test_set_addresses_udp4_zero_checksum_stays_zero(headers):
    f = bytearray(bytes(Ether(dst=MAC_H, src=MAC_G) / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(chksum=0) / b"x"))
    headers.set_addresses(f, 14, src=ip("192.0.2.77"))
    assert f[40:42] == b"\0\0" and pycsum.verify_frame(f)


@pytest.mark.parametrize("name", ["tcp4", "udp4", "tcp6", "udp6", "icmp4", "icmp6"])
def test_set_ports_ttl_macs(headers, name):
    f = bytearray(frame_bytes(name))
    info = headers.parse_frame(f)
    headers.set_ports(f, info.l3_offset, info.l4_offset, sport=4242, dport=None)
    headers.set_ports(f, info.l3_offset, info.l4_offset, dport=5353)
    headers.set_ttl(f, info.l3_offset, 7)
    headers.set_macs(f, 0, mac(MAC_G), mac(MAC_H))
    assert pycsum.verify_frame(f)
    new = headers.parse_frame(f)
    assert new.sport == 4242 and new.ttl == 7 and new.eth_dst == mac(MAC_G)
    if info.l4_proto in (6, 17):
        assert new.dport == 5353
    else:
        assert new.icmp_id == 4242


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF), st.integers(0, 0xFF))
def test_set_tcp(headers, seq, ack, win, flags):
    for name in ("tcp4", "tcp6"):
        f = bytearray(frame_bytes(name))
        info = headers.parse_frame(f)
        headers.set_tcp(f, info.l4_offset, seq=seq, ack=ack, window=win, flags=flags)
        assert pycsum.verify_frame(f)
        new = headers.parse_frame(f)
        assert (new.tcp_seq, new.tcp_ack, new.tcp_window, new.tcp_flags) == (seq, ack, win, flags)
        assert new.payload_len == info.payload_len


def test_rewrite_read_only_rejected(headers):
    with pytest.raises(TypeError):
        headers.set_ttl(frame_bytes("udp4"), 14, 3)


# -- builders ---------------------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("plen", [0, 1, 5, 1400])
def test_builders_match_scapy(headers, v6, plen):
    src, dst = ("2001:db8::1", "2001:db8::2") if v6 else ("192.0.2.1", "192.0.2.10")
    IPL = (lambda: IPv6(src=src, dst=dst, hlim=255)) if v6 else (
        lambda: IP(src=src, dst=dst, ttl=255, id=0, flags=0))
    payload = bytes((i * 7) & 0xFF for i in range(plen))
    buf = bytearray(3000)
    opts = b"\x02\x04\x05\xb4\x01\x03\x03\x07"
    hl = headers.header_len(6 if v6 else 4, 6, len(opts))
    buf[100 + hl : 100 + hl + plen] = payload
    n = headers.build_tcp(buf, 100, mac(MAC_G), mac(MAC_H), ip(src), ip(dst), 9000, 40000,
                          1, 2, 0x18, 512, plen, opts)
    ref = Ether(dst=MAC_G, src=MAC_H) / IPL() / TCP(sport=9000, dport=40000, seq=1, ack=2,
                                                       flags=0x18, window=512, options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]) / payload
    assert n == len(bytes(ref)) and bytes(buf[100 : 100 + n]) == bytes(ref)
    hl = headers.header_len(6 if v6 else 4, 17)
    buf[hl : hl + plen] = payload
    n = headers.build_udp(buf, 0, mac(MAC_G), mac(MAC_H), ip(src), ip(dst), 53, 33000, plen)
    ref = Ether(dst=MAC_G, src=MAC_H) / IPL() / UDP(sport=53, dport=33000) / payload
    assert bytes(buf[:n]) == bytes(ref)
    proto = 58 if v6 else 1
    hl = headers.header_len(6 if v6 else 4, proto)
    buf[hl : hl + plen] = payload
    n = headers.build_icmp(buf, 0, mac(MAC_G), mac(MAC_H), ip(src), ip(dst), 129 if v6 else 0, 0, 77, 3, plen)
    if v6:
        from scapy.layers.inet6 import ICMPv6EchoReply

        ref = Ether(dst=MAC_G, src=MAC_H) / IPL() / ICMPv6EchoReply(id=77, seq=3, data=payload)
    else:
        ref = Ether(dst=MAC_G, src=MAC_H) / IPL() / ICMP(type=0, id=77, seq=3) / payload
    assert bytes(buf[:n]) == bytes(ref)


def test_builder_bounds_and_args(headers):
    buf = bytearray(60)
    with pytest.raises(ValueError):
        headers.build_udp(buf, 0, mac(MAC_G), mac(MAC_H), ip("192.0.2.1"), ip("192.0.2.2"), 1, 2, 100)
    with pytest.raises(ValueError):
        headers.build_udp(buf, 0, mac(MAC_G), mac(MAC_H), ip("192.0.2.1"), ip("2001:db8::1"), 1, 2, 0)
    with pytest.raises(ValueError):
        headers.header_len(5, 6)
    assert headers.header_len(4, 6) == 54 and headers.header_len(6, 17) == 62
    assert headers.header_len(4, 6, 3) == 58
    assert bytes(buf) == bytes(60)


def test_real_tcp4_rebuilt_exactly(headers):
    """passt-reference 8.3 (3): our builder reproduces the passt frame byte for byte."""
    buf = bytearray(len(REAL["tcp4"]))
    buf[-5:] = b"hello"
    n = headers.build_tcp(buf, 0, REAL["tcp4"][:6], REAL["tcp4"][6:12], ip("192.0.2.1"),
                          ip("192.0.2.10"), 9000, 40000, 1, 1, 0x18, 512, 5)
    assert bytes(buf[:n]) == REAL["tcp4"]


# -- scapy as the oracle on generated packets -------------------------------------------


@st.composite
def scapy_frames(draw):
    from scapy.layers.inet6 import ICMPv6EchoReply, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
    from scapy.layers.l2 import Dot1Q

    v6 = draw(st.booleans())
    pkt = Ether(dst=MAC_H, src=MAC_G)
    if draw(st.booleans()):
        pkt = pkt / Dot1Q(vlan=draw(st.integers(0, 4095)))
    ttl = draw(st.integers(1, 255))
    if v6:
        pkt = pkt / IPv6(src="2001:db8::%x" % draw(st.integers(1, 0xFFFF)), dst="fe80::1", hlim=ttl)
        if draw(st.booleans()):
            pkt = pkt / IPv6ExtHdrHopByHop()
        if draw(st.booleans()):
            pkt = pkt / IPv6ExtHdrDestOpt()
    else:
        nops = b"\x01" * (4 * draw(st.integers(0, 10)))
        pkt = pkt / IP(src="192.0.2.%d" % draw(st.integers(0, 255)), dst="198.51.100.1", ttl=ttl,
                       options=nops, flags=draw(st.sampled_from([0, 2])))
    kind = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    port = st.integers(0, 0xFFFF)
    if kind == "tcp":
        opts = draw(st.lists(st.sampled_from([
            ("MSS", 1460), ("SAckOK", b""), ("Timestamp", (123456, 654321)), ("WScale", 9), ("NOP", None)]),
            max_size=5, unique=True))
        pkt = pkt / TCP(sport=draw(port), dport=draw(port), seq=draw(st.integers(0, 2**32 - 1)),
                        ack=draw(st.integers(0, 2**32 - 1)), flags=draw(st.integers(0, 255)),
                        window=draw(port), options=opts)
    elif kind == "udp":
        pkt = pkt / UDP(sport=draw(port), dport=draw(port))
    elif v6:
        pkt = pkt / ICMPv6EchoReply(id=draw(port), seq=draw(port))
    else:
        pkt = pkt / ICMP(type=draw(st.sampled_from([0, 8])), id=draw(port), seq=draw(port))
    return bytes(pkt / draw(st.binary(max_size=300)))


@SETTINGS
@given(scapy_frames(), st.integers(0, 20))
def test_generated_frames_match_scapy(headers, frame, pad):
    padded = frame + b"\x55" * pad
    info = headers.parse_frame(padded)
    check_against_scapy(info, frame)
    assert pycsum.verify_frame(padded)
