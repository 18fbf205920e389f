"""Micro-benchmarks of the packet kernels: Cython vs pure twin vs a plain stdlib baseline.

Groups (one per operation; variants ``_cython`` / ``_python`` / ``_stdlib``, see conftest.py):

* ``csum-<size>``: one's-complement checksum of a random buffer of 64, 1500, 9000 and
  65520 bytes (``_cython_scalar`` = the Cython kernel with AVX2 disabled).  The stdlib
  baseline is the textbook RFC 1071 word loop.
* ``parse-rewrite-single``: per frame of a 1000-frame TCP stream, parse the frame, change the
  destination address and the ack number (checksums kept right); one call per frame.
  The stdlib baseline does the same with ``struct`` and a full checksum recomputation.
* ``parse-rewrite-batch``: the same work through the batch API (classify +
  rewrite_addresses + set_tcp_ack_window over all 1000 frames in three calls).
* ``verify-batch`` / ``fill-batch``: verify / fill the checksums of the 1000 frames.
* ``build-tcp-segments``: build 1000 TCP/IPv4 frames of 1400-byte payloads: one
  ``batch.build_tcp_segments`` call (``_cython``) vs one ``headers.build_tcp`` call per frame.
"""
from __future__ import annotations

import importlib
import os
import struct

import numpy as np
import pytest

from passtcore_py import batch as py_batch
from passtcore_py import csum as py_csum
from passtcore_py import headers as py_headers


def _native(name: str):
    try:
        return importlib.import_module(f"passtcore._{name}")
    except ImportError:
        return None


cy_csum, cy_headers, cy_batch = _native("csum"), _native("headers"), _native("batch")
need_cython = pytest.mark.skipif(cy_csum is None or cy_headers is None or cy_batch is None,
                                 reason="Cython kernels not built")
SIZES = [64, 1500, 9000, 65520]
DATA = {n: os.urandom(n) for n in SIZES}


def stdlib_csum(data: bytes) -> int:
    """RFC 1071, the plain way."""
    if len(data) & 1:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# -- checksums --------------------------------------------------------------------------


def _csum_bench(benchmark, fn, size):
    benchmark.group = f"csum-{size:05d}"
    benchmark.extra_info["bytes"] = size
    data = DATA[size]
    result = benchmark(fn, data)
    assert result == py_csum.inet_checksum(data)


@need_cython
@pytest.mark.parametrize("size", SIZES)
def test_csum_cython(benchmark, size):
    _csum_bench(benchmark, cy_csum.inet_checksum, size)


@need_cython
@pytest.mark.parametrize("size", SIZES)
def test_csum_cython_scalar(benchmark, size):
    prev = cy_csum.set_force_scalar(True)
    try:
        _csum_bench(benchmark, cy_csum.inet_checksum, size)
    finally:
        cy_csum.set_force_scalar(prev)


@pytest.mark.parametrize("size", SIZES)
def test_csum_python(benchmark, size):
    _csum_bench(benchmark, py_csum.inet_checksum, size)


@pytest.mark.parametrize("size", SIZES)
def test_csum_stdlib(benchmark, size):
    _csum_bench(benchmark, stdlib_csum, size)


# -- header parse + rewrite -------------------------------------------------------------

N_FRAMES = 1000
MAC_A, MAC_B = bytes.fromhex("525400123456"), bytes.fromhex("9a559a559a55")
SRC, DST = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 10])
NEW_DST = bytes([198, 51, 100, 20])


def make_stream():
    """1000 TCP/IPv4 frames (payload 0..1400 bytes) packed in one bytearray."""
    buf = bytearray(N_FRAMES * 1500)
    offs, lens = [], []
    off = 0
    for i in range(N_FRAMES):
        plen = (i * 97) % 1400
        hl = py_headers.header_len(4, 6)
        buf[off + hl : off + hl + plen] = bytes([i & 0xFF]) * plen
        n = py_headers.build_tcp(buf, off, MAC_A, MAC_B, SRC, DST, 80, 40000 + i % 100,
                                 i * 1000, 1, 0x18, 65535, plen)
        offs.append(off)
        lens.append(n)
        off += n
    return buf, np.array(offs, np.int64), np.array(lens, np.int64)


def _single(headers_mod):
    parse, set_addr, set_tcp = headers_mod.parse_frame, headers_mod.set_addresses, headers_mod.set_tcp

    def run(buf, offs, lens):
        for o, n in zip(offs.tolist(), lens.tolist()):
            info = parse(buf, o, n)
            set_addr(buf, info.l3_offset, None, NEW_DST)
            set_tcp(buf, info.l4_offset, ack=info.tcp_seq + 1)
    return run


_IP = struct.Struct("!BBHHHBBH4s4s")


def stdlib_single(buf, offs, lens):
    """Plain struct parsing + rewriting, checksums recomputed in full."""
    mv = memoryview(buf)
    for o, n in zip(offs.tolist(), lens.tolist()):
        if struct.unpack_from("!H", mv, o + 12)[0] != 0x0800:
            continue
        l3 = o + 14
        vihl, tos, tot, ident, frag, ttl, proto, _ck, src, _dst = _IP.unpack_from(mv, l3)
        ihl = (vihl & 15) * 4
        l4 = l3 + ihl
        seq = struct.unpack_from("!I", mv, l4 + 4)[0]
        hdr = _IP.pack(vihl, tos, tot, ident, frag, ttl, proto, 0, src, NEW_DST)
        struct.pack_into("!H", hdr := bytearray(hdr), 10, stdlib_csum(bytes(hdr)))
        mv[l3 : l3 + 20] = hdr
        struct.pack_into("!I", mv, l4 + 8, (seq + 1) & 0xFFFFFFFF)
        struct.pack_into("!H", mv, l4 + 16, 0)
        l4len = tot - ihl
        pseudo = src + NEW_DST + struct.pack("!BBH", 0, proto, l4len)
        ck = stdlib_csum(pseudo + bytes(mv[l4 : l4 + l4len]))
        struct.pack_into("!H", mv, l4 + 16, ck)


def _batch(batch_mod):
    def run(buf, offs, lens):
        c = batch_mod.classify(buf, offs, lens)
        batch_mod.rewrite_addresses(buf, offs, lens, dst=NEW_DST)
        batch_mod.set_tcp_ack_window(buf, offs, lens, ack=(c.tcp_seq.astype(np.int64) + 1) & 0xFFFFFFFF)
    return run


def _rewrite_bench(benchmark, group, fn):
    benchmark.group = group
    benchmark.extra_info["frames"] = N_FRAMES
    buf, offs, lens = make_stream()
    benchmark(fn, buf, offs, lens)
    ok = np.zeros(N_FRAMES, bool)
    assert py_batch.verify_checksums(bytes(buf), offs, lens, ok) == 0
    c = py_batch.classify(bytes(buf), offs[:5], lens[:5])
    assert bytes(c.dst[0][12:]) == NEW_DST and c.tcp_ack[3] == (3 * 1000 + 1)


@need_cython
def test_parse_rewrite_single_cython(benchmark):
    _rewrite_bench(benchmark, "parse-rewrite-single", _single(cy_headers))


def test_parse_rewrite_single_python(benchmark):
    _rewrite_bench(benchmark, "parse-rewrite-single", _single(py_headers))


def test_parse_rewrite_single_stdlib(benchmark):
    _rewrite_bench(benchmark, "parse-rewrite-single", stdlib_single)


@need_cython
def test_parse_rewrite_batch_cython(benchmark):
    _rewrite_bench(benchmark, "parse-rewrite-batch", _batch(cy_batch))


def test_parse_rewrite_batch_python(benchmark):
    _rewrite_bench(benchmark, "parse-rewrite-batch", _batch(py_batch))


def test_parse_rewrite_batch_stdlib(benchmark):
    _rewrite_bench(benchmark, "parse-rewrite-batch", stdlib_single)


# -- batch checksum verify / fill -------------------------------------------------------


def _verify_bench(benchmark, mod):
    benchmark.group = "verify-batch"
    buf, offs, lens = make_stream()
    benchmark.extra_info["frames"] = N_FRAMES
    benchmark.extra_info["bytes"] = int(lens.sum())
    ok = np.zeros(N_FRAMES, bool)
    assert benchmark(mod.verify_checksums, buf, offs, lens, ok) == 0


def _fill_bench(benchmark, mod):
    benchmark.group = "fill-batch"
    buf, offs, lens = make_stream()
    benchmark.extra_info["frames"] = N_FRAMES
    benchmark.extra_info["bytes"] = int(lens.sum())
    assert benchmark(mod.fill_checksums, buf, offs, lens) == 0


def stdlib_verify(buf, offs, lens, ok):
    bad = 0
    for i, (o, n) in enumerate(zip(offs.tolist(), lens.tolist())):
        l3 = o + 14
        ihl = (buf[l3] & 15) * 4
        tot = struct.unpack_from("!H", buf, l3 + 2)[0]
        pseudo = bytes(buf[l3 + 12 : l3 + 20]) + struct.pack("!BBH", 0, buf[l3 + 9], tot - ihl)
        good = stdlib_csum(bytes(buf[l3 : l3 + ihl])) == 0 and stdlib_csum(
            pseudo + bytes(buf[l3 + ihl : l3 + tot])) == 0
        ok[i] = good
        bad += not good
    return bad


@need_cython
def test_verify_batch_cython(benchmark):
    _verify_bench(benchmark, cy_batch)


def test_verify_batch_python(benchmark):
    _verify_bench(benchmark, py_batch)


def test_verify_batch_stdlib(benchmark):
    benchmark.group = "verify-batch"
    buf, offs, lens = make_stream()
    benchmark.extra_info["frames"] = N_FRAMES
    benchmark.extra_info["bytes"] = int(lens.sum())
    ok = np.zeros(N_FRAMES, bool)
    assert benchmark.pedantic(stdlib_verify, (buf, offs, lens, ok), rounds=3, iterations=1) == 0


@need_cython
def test_fill_batch_cython(benchmark):
    _fill_bench(benchmark, cy_batch)


def test_fill_batch_python(benchmark):
    _fill_bench(benchmark, py_batch)


# -- building a burst of TCP segments (host -> guest data path) -------------------------


def _segments():
    plens = np.full(N_FRAMES, 1400, np.int64)
    hl = py_headers.header_len(4, 6)
    offs = np.arange(N_FRAMES, dtype=np.int64) * (hl + 1400)
    return bytearray(int(offs[-1]) + hl + 1400), offs, plens


def _build_bench(benchmark, fn):
    benchmark.group = "build-tcp-segments"
    benchmark.extra_info["frames"] = N_FRAMES
    buf, offs, plens = _segments()
    benchmark(fn, buf, offs, plens)
    ok = np.zeros(N_FRAMES, bool)
    assert py_batch.verify_checksums(bytes(buf), offs, plens + 54, ok) == 0


def _segments_single(headers_mod):
    build = headers_mod.build_tcp

    def run(buf, offs, plens):
        seq = 1000
        for o, p in zip(offs.tolist(), plens.tolist()):
            build(buf, o, MAC_A, MAC_B, SRC, DST, 80, 40000, seq, 1, 0x10, 65535, p)
            seq += p
    return run


@need_cython
def test_build_tcp_segments_cython(benchmark):
    _build_bench(benchmark, lambda b, o, p: cy_batch.build_tcp_segments(
        b, o, p, MAC_A, MAC_B, SRC, DST, 80, 40000, 1000, 1, 0x10, 65535))


@need_cython
def test_build_tcp_segments_cython_single(benchmark):
    _build_bench(benchmark, _segments_single(cy_headers))


def test_build_tcp_segments_python(benchmark):
    _build_bench(benchmark, _segments_single(py_headers))
