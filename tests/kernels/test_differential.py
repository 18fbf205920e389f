"""Cython kernels vs their pure-Python twins on hypothesis-generated inputs: same results.

Both modules are imported side by side (independently of ``passtcore.backend``);
the whole file is skipped when the extensions are not built or PASSTCORE_PURE=1.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passtcore_py import csum as py_csum
from passtcore_py import headers as py_headers
from kernel_support import SCAPY_FRAMES, frame_bytes, native_or_none

cy_csum = native_or_none("csum")
cy_headers = native_or_none("headers")
pytestmark = pytest.mark.skipif(cy_csum is None or cy_headers is None, reason="Cython kernels not built")

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FRAMES = [frame_bytes(n) for n in sorted(SCAPY_FRAMES)]


def outcome(fn, *args, **kw):
    """(result, None) or (None, exception type and ParseError reason)."""
    try:
        r = fn(*args, **kw)
    except py_headers.ParseError as e:
        return None, ("ParseError", e.reason)
    except (ValueError, TypeError, OverflowError) as e:
        return None, (ValueError if isinstance(e, (ValueError, OverflowError)) else TypeError, "")
    if hasattr(r, "as_dict"):
        r = r.as_dict()
    return r, None


@st.composite
def mutated_frames(draw):
    """A real frame with random byte patches and a random cut/padding."""
    f = bytearray(draw(st.sampled_from(FRAMES)))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(f) - 1))
        f[pos] = draw(st.integers(0, 255))
    if draw(st.integers(0, 3)) == 0:
        f = f[: draw(st.integers(0, len(f)))]
    else:
        f += bytes(draw(st.integers(0, 20)))  # Ethernet padding
    return bytes(f)


def test_parse_error_class_is_shared():
    assert cy_headers.ParseError is py_headers.ParseError
    assert cy_headers.REASONS == py_headers.REASONS


@SETTINGS
@given(st.binary(max_size=5000), st.integers(0, 64), st.integers(-1, 5000), st.integers(0, 2**32 - 1))
def test_csum_partial_same(data, off, length, init):
    assert outcome(cy_csum.csum_partial, data, off, length, init) == outcome(
        py_csum.csum_partial, data, off, length, init)


@SETTINGS
@given(st.binary(min_size=256, max_size=20000))
def test_scalar_and_avx2_same(data):
    want = py_csum.csum_partial(data)
    prev = cy_csum.set_force_scalar(True)
    try:
        assert cy_csum.csum_partial(data) == want
    finally:
        cy_csum.set_force_scalar(prev)
    assert cy_csum.csum_partial(data) == want


@SETTINGS
@given(st.integers(0, 2**64 - 1))
def test_fold_same(s):
    assert cy_csum.csum_fold(s) == py_csum.csum_fold(s)


@SETTINGS
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
       st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(min_size=16, max_size=16),
       st.binary(min_size=16, max_size=16))
def test_updates_same(ck, o, n, o32, n32, ob, nb):
    assert cy_csum.csum_update16(ck, o, n) == py_csum.csum_update16(ck, o, n)
    assert cy_csum.csum_update32(ck, o32, n32) == py_csum.csum_update32(ck, o32, n32)
    assert cy_csum.csum_update_bytes(ck, ob, nb) == py_csum.csum_update_bytes(ck, ob, nb)
    assert cy_csum.csum_update_bytes(ck, ob[:4], nb[:4]) == py_csum.csum_update_bytes(ck, ob[:4], nb[:4])


@SETTINGS
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16),
       st.integers(0, 255), st.integers(0, 2**32 - 1))
def test_pseudo_same(a, b, proto, ln):
    assert cy_csum.pseudo_sum_v6(a, b, proto, ln) == py_csum.pseudo_sum_v6(a, b, proto, ln)
    assert cy_csum.pseudo_sum_v4(a[:4], b[:4], proto, ln & 0xFFFF) == py_csum.pseudo_sum_v4(
        a[:4], b[:4], proto, ln & 0xFFFF)


@SETTINGS
@given(mutated_frames(), st.integers(0, 3))
def test_parse_frame_same(frame, pre):
    buf = b"\xee" * pre + frame
    assert outcome(cy_headers.parse_frame, buf, pre) == outcome(py_headers.parse_frame, buf, pre)
    assert outcome(cy_csum.verify_frame, buf, pre) == outcome(py_csum.verify_frame, buf, pre)
    a, b = bytearray(buf), bytearray(buf)
    assert outcome(cy_csum.fill_checksums, a, pre) == outcome(py_csum.fill_checksums, b, pre)
    assert a == b


@SETTINGS
@given(mutated_frames(), st.integers(0, 80), st.integers(-1, 80))
def test_single_layer_parsers_same(frame, off, length):
    for name in ("parse_ethernet", "parse_arp", "parse_ipv4", "parse_ipv6", "parse_tcp",
                 "parse_udp", "parse_icmp", "parse_tcp_options"):
        assert outcome(getattr(cy_headers, name), frame, off, length) == outcome(
            getattr(py_headers, name), frame, off, length), name


@SETTINGS
@given(mutated_frames(), st.integers(0, 80), st.integers(0, 80), st.binary(min_size=16, max_size=16),
       st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1), st.integers(0, 255), st.booleans())
def test_rewrites_same(frame, l3, l4, addr, port, seq, small, v4):
    a = addr[:4] if v4 else addr
    for fn, args in (
        ("set_addresses", (l3, a, None)),
        ("set_addresses", (l3, None, a)),
        ("set_ports", (l3, l4, port, None)),
        ("set_ports", (l3, l4, None, port)),
        ("set_ttl", (l3, small)),
        ("set_tcp", (l4, seq, seq ^ 0x5A5A5A5A, port, small)),
        ("set_macs", (l3 % 20, addr[:6], addr[6:12])),
    ):
        x, y = bytearray(frame), bytearray(frame)
        assert outcome(getattr(cy_headers, fn), x, *args) == outcome(getattr(py_headers, fn), y, *args), fn
        assert x == y, fn


@SETTINGS
@given(st.booleans(), st.integers(0, 1500), st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1),
       st.binary(max_size=44), st.integers(0, 30), st.integers(0, 255), st.binary(min_size=44, max_size=44))
def test_builders_same(v6, plen, port, seq, opts, off, flags, addrs):
    src, dst = (addrs[:16], addrs[16:32]) if v6 else (addrs[:4], addrs[4:8])
    macs = (addrs[32:38], addrs[38:44])
    for fn, args in (
        ("build_tcp", (off, *macs, src, dst, port, port ^ 1, seq, ~seq & 0xFFFFFFFF, flags, port, plen, opts)),
        ("build_udp", (off, *macs, src, dst, port, port ^ 7, plen)),
        ("build_icmp", (off, *macs, src, dst, flags, 0, port, seq & 0xFFFF, plen)),
    ):
        x = bytearray(range(256)) * 7
        y = bytearray(x)
        assert outcome(getattr(cy_headers, fn), x, *args) == outcome(getattr(py_headers, fn), y, *args), fn
        assert x == y, fn


@pytest.mark.parametrize("args", [(4, 6, 0), (6, 6, 13), (4, 17, 0), (6, 58, 0), (4, 6, 41), (5, 6, 0), (4, 99, 0)])
def test_header_len_same(args):
    assert outcome(cy_headers.header_len, *args) == outcome(py_headers.header_len, *args)


@SETTINGS
@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_csum_add_same(a, b):
    assert cy_csum.csum_add(a, b) == py_csum.csum_add(a, b)
    assert py_csum.csum_fold(py_csum.csum_add(a, b)) == py_csum.csum_fold(a + b)
