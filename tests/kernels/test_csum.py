"""Checksum kernels: RFC 1071 / RFC 1624 vectors, real frames, scapy as the oracle."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import checksum as scapy_checksum

from kernel_support import MAC_G, MAC_H, REAL, SCAPY_FRAMES, frame_bytes

SETTINGS = settings(max_examples=60, deadline=None)


def ref_sum(data: bytes) -> int:
    """Word-by-word RFC 1071 sum, folded (the textbook algorithm)."""
    if len(data) & 1:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def test_rfc1071_example(csum):
    # RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 -> sum ddf2, checksum 220d
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert csum.csum_partial(data) == 0xDDF2
    assert csum.inet_checksum(data) == 0x220D
    assert csum.csum_fold(0x2DDF0) == 0x220D  # unfolded sum from the RFC text


def test_ipv4_header_vector(csum):
    hdr = bytearray.fromhex("45000073000040004011b861c0a80001c0a800c7")
    assert csum.ipv4_header_checksum(hdr, 0) == 0xB861
    assert csum.inet_checksum(hdr) == 0
    # RFC 1624: TTL 0x40 -> 0x3f, word 0x4011 -> 0x3f11
    assert csum.csum_update16(0xB861, 0x4011, 0x3F11) == 0xB961
    hdr[8] = 0x3F
    assert csum.ipv4_header_checksum(hdr, 0) == 0xB961


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_frames_verify(csum, name):
    frame = REAL[name]
    assert csum.verify_frame(frame)
    if frame[12:14] == b"\x08\x00":
        assert csum.inet_checksum(frame, 14, 20) == 0
    broken = bytearray(frame)
    broken[-1] ^= 0x01
    assert not csum.verify_frame(broken)
    refilled = bytearray(broken)
    csum.fill_checksums(refilled)
    assert csum.verify_frame(refilled)


def test_real_ra_checksum(csum):
    ra = REAL["ra"]
    assert csum.l4_checksum(ra, 14, 54, 128, 58) == 0x0163
    assert csum.verify_frame(ra)


def test_real_tcp_checksums(csum):
    tcp4, tcp6 = REAL["tcp4"], REAL["tcp6"]
    assert csum.l4_checksum(tcp4, 14, 34, 25, 6) == 0x267F
    assert csum.ipv4_header_checksum(tcp4, 14) == 0x37BF
    assert csum.l4_checksum(tcp6, 14, 54, 25, 6) == 0x4F16
    s4 = ipaddress.ip_address("192.0.2.1").packed
    d4 = ipaddress.ip_address("192.0.2.10").packed
    ps = csum.pseudo_sum_v4(s4, d4, 6, 25)
    assert csum.csum_fold(csum.csum_partial(tcp4, 34, 25, ps)) == 0


def test_empty_and_zero(csum):
    assert csum.csum_partial(b"") == 0
    assert csum.csum_partial(b"\0" * 7) == 0
    assert csum.inet_checksum(b"") == 0xFFFF
    assert csum.csum_partial(b"\xff\xff") == 0xFFFF
    assert csum.csum_partial(b"", init=5) == 5


@SETTINGS
@given(st.binary(max_size=3000))
def test_sum_matches_reference_and_scapy(csum, data):
    s = csum.csum_partial(data)
    assert s == ref_sum(data)
    assert csum.csum_fold(s) == scapy_checksum(data)


@SETTINGS
@given(st.binary(min_size=0, max_size=600), st.integers(0, 40), st.integers(0, 40))
def test_offsets_and_chaining(csum, data, pre, post):
    buf = bytearray(b"\xa5" * pre + data + b"\x5a" * post)
    whole = csum.csum_partial(buf, pre, len(data))
    assert whole == ref_sum(data)
    for cut in range(0, len(data) + 1, max(2, len(data) // 5 & ~1 or 2)):
        a = csum.csum_partial(buf, pre, cut)
        assert csum.csum_fold(csum.csum_partial(buf, pre + cut, len(data) - cut, a)) == csum.csum_fold(whole)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 15, 16, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 1500, 65520])
@pytest.mark.parametrize("start", [0, 1, 3])
def test_sizes_and_alignments(csum, size, start):
    import random

    rnd = random.Random(size * 7 + start)
    data = bytes(rnd.getrandbits(8) for _ in range(size + start))
    assert csum.csum_partial(data, start, size) == ref_sum(data[start:])
    ff = b"\xff" * (size + start)  # carries everywhere
    assert csum.csum_partial(ff, start, size) == ref_sum(ff[start:])


def test_length_minus_one_and_buffers(csum):
    import mmap

    import numpy as np

    data = bytes(range(256)) * 3 + b"\x01"
    want = ref_sum(data[10:])
    assert csum.csum_partial(data, 10) == want
    assert csum.csum_partial(bytearray(data), 10, -1) == want
    assert csum.csum_partial(np.frombuffer(data, dtype=np.uint8), 10) == want
    assert csum.csum_partial(memoryview(data)[10:]) == want
    m = mmap.mmap(-1, len(data))
    try:
        m[:] = data
        assert csum.csum_partial(m, 10) == want
    finally:
        m.close()


@pytest.mark.parametrize("off,length", [(-1, 2), (0, 11), (11, 0), (5, 6), (3, -2)])
def test_out_of_bounds(csum, off, length):
    with pytest.raises(ValueError):
        csum.csum_partial(b"0123456789", off, length)


@SETTINGS
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(min_size=20, max_size=80).filter(lambda b: len(b) % 2 == 0))
def test_update16_matches_recompute(csum, idx, new, data):
    data = bytearray(data)
    pos = (idx % (len(data) // 2)) * 2
    ck = csum.inet_checksum(data)
    old = (data[pos] << 8) | data[pos + 1]
    data[pos : pos + 2] = new.to_bytes(2, "big")
    upd = csum.csum_update16(ck, old, new)
    full = csum.inet_checksum(data)
    # RFC 1624 eq. 3 yields the same value as a full recomputation except for the
    # +0/-0 ambiguity of an all-zero sum, which both mean "verifies".
    assert upd == full or {upd, full} == {0, 0xFFFF}


@SETTINGS
@given(st.binary(min_size=8, max_size=8), st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
def test_update32_and_bytes(csum, four2, old, new):
    base = bytearray(b"\x12\x34" + old + four2)
    ck = csum.inet_checksum(base)
    o32 = int.from_bytes(base[18:22], "big")
    n32 = int.from_bytes(new[:4], "big")
    c1 = csum.csum_update32(ck, o32, n32)
    c2 = csum.csum_update_bytes(ck, bytes(base[18:22]), new[:4])
    assert c1 == c2
    base[18:22] = new[:4]
    c3 = csum.csum_update_bytes(c1, bytes(base[2:18]), new)
    base[2:18] = new
    full = csum.inet_checksum(base)
    assert c3 == full or {c3, full} == {0, 0xFFFF}


def test_update_bytes_rejects_mismatch(csum):
    with pytest.raises(ValueError):
        csum.csum_update_bytes(0, b"\1\2", b"\1\2\3\4")
    with pytest.raises(ValueError):
        csum.csum_update_bytes(0, b"\1\2\3", b"\1\2\3")


def test_pseudo_headers_against_scapy(csum):
    from scapy.layers.inet6 import in6_chksum

    s6 = ipaddress.ip_address("2001:db8::1").packed
    d6 = ipaddress.ip_address("2001:db8::2").packed
    seg = bytes(UDP(sport=53, dport=33000, len=13, chksum=0) / b"hello")
    ps = csum.pseudo_sum_v6(s6, d6, 17, len(seg))
    assert csum.csum_fold(csum.csum_partial(seg, init=ps)) == 0xDF6F
    pkt = IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=53, dport=33000, chksum=0) / b"hello"
    assert in6_chksum(17, pkt, seg) == 0xDF6F
    with pytest.raises(ValueError):
        csum.pseudo_sum_v4(b"\1\2\3", b"\1\2\3\4", 6, 20)


@pytest.mark.parametrize("name", sorted(SCAPY_FRAMES))
def test_scapy_frames_verify_and_fill(csum, name):
    frame = frame_bytes(name)
    assert csum.verify_frame(frame), name
    # zero every checksum field scapy computed, refill, compare bytes with scapy's
    pkt = Ether(frame)
    z = pkt.copy()
    for layer in (IP, TCP, UDP, ICMP):
        if z.haslayer(layer):
            z[layer].chksum = 0
    for layer in z.layers():
        if hasattr(z[layer], "cksum"):
            z[layer].cksum = 0
    zb = bytearray(bytes(z))
    if zb != bytearray(frame):
        assert not csum.verify_frame(zb) or name == "arp"
    csum.fill_checksums(zb)
    assert bytes(zb) == frame


def test_udp4_zero_checksum_means_none(csum):
    pkt = Ether(dst=MAC_H, src=MAC_G) / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=67, dport=68, chksum=0) / b"dhcp"
    frame = bytes(pkt)
    assert csum.verify_frame(frame)


def test_udp_zero_result_sent_as_ffff(csum):
    # choose a payload word so that the UDP checksum computes to 0 -> must be 0xffff
    base = Ether(dst=MAC_H, src=MAC_G) / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1, dport=2, chksum=0)
    frame = bytearray(bytes(base / b"\0\0"))
    c = csum.l4_checksum(frame, 14, 54, 10, 17)
    # put the complement in the payload word so that the sum becomes 0xffff
    word = c if c != 0xFFFF else 0
    frame[62:64] = word.to_bytes(2, "big")
    assert csum.l4_checksum(frame, 14, 54, 10, 17) == 0xFFFF
    csum.fill_checksums(frame)
    assert frame[60:62] == b"\xff\xff"
    assert csum.verify_frame(frame)


def test_verify_rejects_bad_ip_header(csum):
    frame = bytearray(frame_bytes("udp4"))
    frame[14 + 10] ^= 0xFF
    assert not csum.verify_frame(frame)
    assert not csum.verify_frame(frame[:20])  # does not parse -> not correct


def test_padding_not_summed(csum):
    frame = bytearray(frame_bytes("icmp4"))
    padded = frame + b"\xee" * (60 - len(frame)) if len(frame) < 60 else frame + b"\xee" * 4
    assert csum.verify_frame(padded)
    csum.fill_checksums(padded)
    assert padded[: len(frame)] == frame


def test_fill_read_only_rejected(csum):
    frame = frame_bytes("udp4")
    with pytest.raises(TypeError):
        csum.fill_checksums(frame)
    with pytest.raises(TypeError):
        csum.fill_checksums(memoryview(bytearray(frame)).toreadonly())
