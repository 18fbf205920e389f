"""Batch kernels: many frames of one shared buffer; results equal the single-frame kernels."""
from __future__ import annotations

import ipaddress
import mmap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passtcore_py import batch as py_batch
from passtcore_py import csum as py_csum
from passtcore_py import headers as py_headers
from kernel_support import SCAPY_FRAMES, frame_bytes, native_or_none

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = sorted(SCAPY_FRAMES)


def pack(frames: list[bytes], gap: int = 3, kind: str = "bytearray"):
    """Frames one after another (with gaps of junk) in one buffer + offsets/lengths arrays."""
    offs, lens, raw = [], [], bytearray()
    for f in frames:
        raw += b"\xcc" * gap
        offs.append(len(raw))
        lens.append(len(f))
        raw += f
    raw += b"\xcc" * gap
    if kind == "numpy":
        buf = np.frombuffer(bytes(raw), np.uint8).copy()
    elif kind == "mmap":
        buf = mmap.mmap(-1, len(raw))
        buf[:] = raw
    else:
        buf = raw
    return buf, np.array(offs, np.int64), np.array(lens, np.int64)


def broken(frame: bytes) -> bytes:
    f = bytearray(frame)
    f[-1] ^= 0x40
    return bytes(f)


@pytest.mark.parametrize("kind", ["bytearray", "numpy", "mmap"])
def test_verify_checksums(batch, kind):
    frames = [frame_bytes(n) for n in NAMES] + [broken(frame_bytes("tcp4")), frame_bytes("udp6")[:30]]
    buf, offs, lens = pack(frames, kind=kind)
    ok = np.zeros(len(frames), bool)
    bad = batch.verify_checksums(buf, offs, lens, ok)
    assert bad == 2
    assert ok.tolist() == [True] * len(NAMES) + [False, False]
    if kind == "mmap":
        buf.close()


def test_classify_matches_single_frame_parse(batch):
    frames = [frame_bytes(n) for n in NAMES] + [b"\0" * 10, frame_bytes("tcp4")[:40]]
    buf, offs, lens = pack(frames)
    c = batch.classify(buf, offs, lens)
    assert len(c) == len(frames)
    for i, f in enumerate(frames):
        try:
            info = py_headers.parse_frame(buf, int(offs[i]), int(lens[i]))
        except py_headers.ParseError as e:
            assert c.status[i] == py_headers.reason_code(e.reason)
            assert batch.status_reason(int(c.status[i])) == e.reason
            continue
        assert c.status[i] == 0
        assert c.ip_version[i] == info.ip_version and c.ethertype[i] == info.ethertype
        if not info.ip_version:
            assert c.proto[i] == -1
            continue
        addr = lambda a: a if len(a) == 16 else ipaddress.IPv6Address(
            "::ffff:" + str(ipaddress.IPv4Address(a))).packed
        assert bytes(c.src[i]) == addr(info.src) and bytes(c.dst[i]) == addr(info.dst)
        assert (c.proto[i], c.sport[i], c.dport[i]) == (info.l4_proto, info.sport, info.dport)
        assert (c.payload_offset[i], c.payload_len[i]) == (info.payload_offset, info.payload_len)
        assert (c.tcp_seq[i], c.tcp_ack[i], c.tcp_window[i], c.tcp_flags[i]) == (
            info.tcp_seq, info.tcp_ack, info.tcp_window, info.tcp_flags)
    assert c.status[-2] == py_headers.reason_code("truncated-ethernet")
    assert c.status[-1] != 0


def test_bounds_are_status_not_crash(batch):
    buf, offs, lens = pack([frame_bytes("udp4")])
    offs = np.array([offs[0], -5, len(buf) - 4, 0, offs[0]], np.int64)
    lens = np.array([lens[0], 10, 100, 10**9, -1], np.int64)
    c = batch.classify(buf, offs, lens)
    assert c.status.tolist() == [0] + [py_headers.reason_code("bad-bounds")] * 4
    ok = np.ones(5, bool)
    assert batch.verify_checksums(buf, offs, lens, ok) == 4
    assert batch.fill_checksums(buf, offs, lens) == 4
    assert batch.rewrite_addresses(buf, offs, lens, src=b"\1\2\3\4") == 4
    assert batch.set_tcp_ack_window(buf, offs, lens, ack=1) == 5  # and the UDP frame is not TCP
    with pytest.raises(ValueError):
        batch.classify(buf, offs, lens[:2])


@pytest.mark.parametrize("kind", ["bytearray", "numpy"])
def test_fill_checksums(batch, kind):
    good = [frame_bytes(n) for n in NAMES]
    zeroed = []
    for f in good:
        z = bytearray(f)
        info = py_headers.parse_frame(z)
        if info.ip_version == 4:
            z[info.l3_offset + 10 : info.l3_offset + 12] = b"\0\0"
        zeroed.append(bytes(z))
    buf, offs, lens = pack([broken(f) for f in good] + [b"junk"], kind=kind)
    assert batch.fill_checksums(buf, offs, lens) == 1
    for i, f in enumerate(good):
        got = bytes(buf[offs[i] : offs[i] + lens[i]])
        assert py_csum.verify_frame(got)
    ok = np.zeros(len(good) + 1, bool)
    assert batch.verify_checksums(buf, offs, lens, ok) == 1


def test_rewrite_addresses(batch):
    names = ["tcp4", "udp4", "icmp4", "tcp6", "udp6", "icmp6", "vlan_udp4", "arp"]
    buf, offs, lens = pack([frame_bytes(n) for n in names])
    new4 = ipaddress.ip_address("203.0.113.9").packed
    skipped = batch.rewrite_addresses(buf, offs, lens, src=new4)
    assert skipped == 4  # three IPv6 frames (wrong width) and ARP
    c = batch.classify(buf, offs, lens)
    for i, n in enumerate(names):
        f = bytes(buf[offs[i] : offs[i] + lens[i]])
        assert py_csum.verify_frame(f), n
        if c.ip_version[i] == 4:
            assert bytes(c.src[i][12:]) == new4
    per = np.array([ipaddress.ip_address(f"2001:db8::{i + 1}").packed for i in range(len(names))])
    per = np.frombuffer(b"".join(per), np.uint8).reshape(len(names), 16)
    assert batch.rewrite_addresses(buf, offs, lens, dst=per) == 5
    c = batch.classify(buf, offs, lens)
    for i in (3, 4, 5):
        assert bytes(c.dst[i]) == bytes(per[i])
        assert py_csum.verify_frame(bytes(buf[offs[i] : offs[i] + lens[i]]))
    with pytest.raises(ValueError):
        batch.rewrite_addresses(buf, offs, lens, src=b"\1\2\3")
    with pytest.raises(TypeError):
        batch.rewrite_addresses(bytes(buf), offs, lens, src=new4)


def test_set_tcp_ack_window(batch):
    names = ["tcp4", "tcp6", "udp4", "tcp4_opts_ip"]
    buf, offs, lens = pack([frame_bytes(n) for n in names])
    assert batch.set_tcp_ack_window(buf, offs, lens, ack=0xDEADBEEF, window=4242) == 1
    c = batch.classify(buf, offs, lens)
    for i in (0, 1, 3):
        assert (c.tcp_ack[i], c.tcp_window[i]) == (0xDEADBEEF, 4242)
        assert py_csum.verify_frame(bytes(buf[offs[i] : offs[i] + lens[i]]))
    acks = np.array([1, -1, 5, 7], np.int64)
    assert batch.set_tcp_ack_window(buf, offs, lens, ack=acks) == 1
    c = batch.classify(buf, offs, lens)
    assert c.tcp_ack.tolist() == [1, 0xDEADBEEF, 0, 7]
    ok = np.zeros(4, bool)
    assert batch.verify_checksums(buf, offs, lens, ok) == 0


def test_empty_batch(batch):
    e = np.zeros(0, np.int64)
    assert len(batch.classify(b"", e, e)) == 0
    assert batch.verify_checksums(b"", e, e, np.zeros(0, bool)) == 0
    assert batch.fill_checksums(bytearray(), e, e) == 0
    assert batch.rewrite_addresses(bytearray(), e, e, src=b"\1\2\3\4") == 0
    assert batch.set_tcp_ack_window(bytearray(), e, e, ack=1) == 0


# -- differential: Cython vs twin over random batches -----------------------------------

cy_batch = native_or_none("batch")


@st.composite
def batches(draw):
    frames = []
    for _ in range(draw(st.integers(0, 12))):
        f = bytearray(frame_bytes(draw(st.sampled_from(NAMES))))
        for _ in range(draw(st.integers(0, 2))):
            f[draw(st.integers(0, len(f) - 1))] = draw(st.integers(0, 255))
        if draw(st.integers(0, 4)) == 0:
            f = f[: draw(st.integers(0, len(f)))]
        frames.append(bytes(f))
    return frames


@pytest.mark.skipif(cy_batch is None, reason="Cython kernels not built")
@SETTINGS
@given(batches(), st.binary(min_size=16, max_size=16), st.booleans(), st.integers(0, 2**32 - 1))
def test_batch_differential(frames, addr, v4, ack):
    b1, offs, lens = pack(frames)
    b2 = bytearray(b1)
    c1, c2 = cy_batch.classify(b1, offs, lens), py_batch.classify(b2, offs, lens)
    for k, v in c1.as_dict().items():
        assert np.array_equal(v, c2.as_dict()[k]), k
    ok1, ok2 = np.zeros(len(frames), bool), np.zeros(len(frames), bool)
    assert cy_batch.verify_checksums(b1, offs, lens, ok1) == py_batch.verify_checksums(b2, offs, lens, ok2)
    assert np.array_equal(ok1, ok2)
    a = addr[:4] if v4 else addr
    assert cy_batch.rewrite_addresses(b1, offs, lens, src=a) == py_batch.rewrite_addresses(b2, offs, lens, src=a)
    assert b1 == b2
    assert cy_batch.set_tcp_ack_window(b1, offs, lens, ack=ack, window=ack & 0xFFFF) == (
        py_batch.set_tcp_ack_window(b2, offs, lens, ack=ack, window=ack & 0xFFFF))
    assert b1 == b2
    assert cy_batch.fill_checksums(b1, offs, lens) == py_batch.fill_checksums(b2, offs, lens)
    assert b1 == b2


# -- segment builder --------------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True])
def test_build_tcp_segments(batch, v6):
    src, dst = (bytes(range(16)), bytes(range(16, 32))) if v6 else (b"\xc0\0\2\1", b"\xc0\0\2\x0a")
    mac_a, mac_b = b"\x52\x54\0\x12\x34\x56", b"\x9a\x55" * 3
    opts = b"\x01\x01\x08\x0a\0\0\0\1\0\0\0\2"
    hl = py_headers.header_len(6 if v6 else 4, 6, len(opts))
    plens = np.array([0, 1, 1400, 7, 513], np.int64)
    offs = np.cumsum(np.concatenate([[5], plens[:-1] + hl + 3]))
    buf = bytearray(int(offs[-1] + hl + plens[-1] + 10))
    for o, p in zip(offs, plens):
        buf[o + hl : o + hl + p] = bytes((o + k) & 0xFF for k in range(p))
    ref = bytearray(buf)
    lens = batch.build_tcp_segments(buf, offs, plens, mac_a, mac_b, src, dst, 9000, 40000,
                                    0xFFFFFFF0, 77, 0x18, 512, opts)
    assert lens.tolist() == (plens + hl).tolist()
    seq = 0xFFFFFFF0
    for o, p in zip(offs.tolist(), plens.tolist()):
        n = py_headers.build_tcp(ref, o, mac_a, mac_b, src, dst, 9000, 40000, seq & 0xFFFFFFFF, 77,
                                 0x18, 512, p, opts)
        seq += p
        assert bytes(buf[o : o + n]) == bytes(ref[o : o + n])
    assert buf == ref
    ok = np.zeros(len(offs), bool)
    assert batch.verify_checksums(buf, offs, lens, ok) == 0
    with pytest.raises(ValueError):
        batch.build_tcp_segments(buf, offs + len(buf), plens, mac_a, mac_b, src, dst, 1, 2, 0, 0, 0, 0)
    assert len(batch.build_tcp_segments(buf, offs[:0], plens[:0], mac_a, mac_b, src, dst, 1, 2, 0, 0, 0, 0)) == 0
