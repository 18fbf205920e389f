"""build_tcp_burst: a flow's burst of segments from one call (what the TCP engine
uses for host->guest data), identical to one build_tcp per segment, on both
backends, with sequence numbers wrapping and every slot bounds-checked first."""
from __future__ import annotations

import random
from array import array

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

G, O = bytes.fromhex("525400123456"), bytes.fromhex("9a559a559a55")
V4 = (bytes([198, 51, 100, 7]), bytes([192, 0, 2, 2]))
V6 = (bytes.fromhex("20010db8000000000000000000000007"),
      bytes.fromhex("20010db8000000000000000000000002"))


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_burst_equals_one_build_per_segment(headers, v6: bool) -> None:
    rnd = random.Random(5 if v6 else 4)
    src, dst = V6 if v6 else V4
    stride, base, n = 1600, 4, 9
    hl = headers.header_len(6 if v6 else 4, 6)
    lens = array("q", [rnd.randrange(0, stride - hl) for _ in range(n)])
    seq = 0xFFFFFF00  # wraps inside the burst
    one, burst = bytearray(base + n * stride), bytearray(base + n * stride)
    for i, ln in enumerate(lens):
        payload = rnd.randbytes(ln)
        for b in (one, burst):
            b[base + i * stride + hl:base + i * stride + hl + ln] = payload
    out = array("q", bytes(8 * n))
    assert headers.build_tcp_burst(burst, base, stride, lens, G, O, src, dst, 8080, 40000, seq,
                                   1234, 0x10, 512, out) == n
    s = seq
    for i, ln in enumerate(lens):
        assert out[i] == headers.build_tcp(one, base + i * stride, G, O, src, dst, 8080, 40000,
                                           s & 0xFFFFFFFF, 1234, 0x10, 512, ln) == hl + ln
        s += ln
    assert one == burst
    frame = Ether(bytes(burst[base + 3 * stride:base + 3 * stride + out[3]]))
    assert frame[TCP].seq == (seq + sum(lens[:3])) & 0xFFFFFFFF
    rebuilt = frame.copy()
    del rebuilt[TCP].chksum
    if not v6:
        del rebuilt[IP].chksum
    assert Ether(bytes(rebuilt))[TCP].chksum == frame[TCP].chksum


def test_burst_checks_every_slot_before_writing(headers) -> None:
    buf = bytearray(2 * 1000)
    out = array("q", bytes(16))
    with pytest.raises(ValueError):   # the second frame runs past the buffer
        headers.build_tcp_burst(buf, 500, 1000, array("q", [10, 900]), G, O, *V4, 1, 2, 0, 0,
                                0x10, 1, out)
    with pytest.raises(ValueError):   # a payload longer than its slot
        headers.build_tcp_burst(buf, 0, 1000, array("q", [990]), G, O, *V4, 1, 2, 0, 0, 0x10, 1,
                                out)
    with pytest.raises(ValueError):   # out too short
        headers.build_tcp_burst(buf, 0, 1000, array("q", [1, 1]), G, O, *V4, 1, 2, 0, 0, 0x10, 1,
                                array("q", bytes(8)))
    assert buf == bytearray(2000)     # nothing written
