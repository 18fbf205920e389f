"""passt's device-state encoding (version 2): layout, round trips, refusals."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passtcore.run.migrate import wire
from passtcore_py import fastpath as fp

u32 = st.integers(0, 0xFFFFFFFF)
u16 = st.integers(0, 0xFFFF)
addr4 = st.binary(min_size=4, max_size=4)
addr6 = st.binary(min_size=16, max_size=16).filter(lambda a: a[:12] != wire.V4MAPPED)


@st.composite
def sides(draw):
    a = draw(st.one_of(addr4, addr6))
    n = len(a)
    b = draw(addr4 if n == 4 else addr6)
    return wire.Side(a, b, draw(u16), draw(u16))


@st.composite
def transfers(draw):
    inbound = draw(st.booleans())
    return wire.TcpTransfer(
        (wire.PIF_HOST, wire.PIF_TAP) if inbound else (wire.PIF_TAP, wire.PIF_HOST),
        (draw(sides()), draw(sides())), retries=draw(st.integers(0, 255)),
        ws_from_tap=draw(st.integers(0, 14)), ws_to_tap=draw(st.integers(0, 14)),
        events=draw(st.integers(0, 255)), tap_mss=draw(st.integers(0, 65535)) & ~3,
        sndbuf=draw(u32), flags=draw(st.integers(0, 255)),
        seq_dup_ack_approx=draw(st.integers(0, 255)), wnd_from_tap=draw(u16),
        wnd_to_tap=draw(u16), seq_to_tap=draw(u32), seq_ack_from_tap=draw(u32),
        seq_from_tap=draw(u32), seq_ack_to_tap=draw(u32), seq_init_from_tap=draw(u32))


def _mapped(s: wire.Side) -> wire.Side:
    return wire.Side(wire.inany(s.oaddr), wire.inany(s.eaddr), s.oport, s.eport)


@settings(max_examples=300, deadline=None)
@given(transfers())
def test_transfer_round_trip(t: wire.TcpTransfer) -> None:
    data = t.pack()
    assert len(data) == 112
    back = wire.TcpTransfer.unpack(data)
    t.side = tuple(_mapped(s) for s in t.side)
    assert back == t


def test_transfer_layout_is_passts() -> None:
    """Offsets of struct tcp_tap_transfer (packed; addresses IPv4-mapped, network order)."""
    tap = wire.Side(bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]), 0x1F90, 0x9C40)
    host = wire.Side(bytes(16), bytes(15) + b"\1", 0x1234, 0x1F90)
    t = wire.TcpTransfer((wire.PIF_TAP, wire.PIF_HOST), (tap, host), retries=3, ws_from_tap=7,
                         ws_to_tap=8, events=0x24, tap_mss=1460, sndbuf=0x00AABBCC, flags=0x11,
                         seq_dup_ack_approx=0x99, wnd_from_tap=0x0102, wnd_to_tap=0x0304,
                         seq_to_tap=0x10203040, seq_ack_from_tap=0x50607080,
                         seq_from_tap=0x90A0B0C0, seq_ack_to_tap=0xD0E0F000,
                         seq_init_from_tap=0x01020304)
    d = t.pack()
    assert d[0:2] == bytes([2, 1])                                  # pif[]
    assert d[2:18] == wire.V4MAPPED + bytes([192, 0, 2, 1])          # side[0].oaddr
    assert d[18:34] == wire.V4MAPPED + bytes([192, 0, 2, 2])         # side[0].eaddr
    assert d[34:38] == struct.pack("<HH", 0x1F90, 0x9C40)            # ports: host order
    assert d[38:54] == bytes(16) and d[54:70] == bytes(15) + b"\1"
    assert d[74:78] == bytes([3, 7, 8, 0x24])                        # retries .. events
    assert d[78:82] == struct.pack("!I", 1460) and d[82:86] == struct.pack("!I", 0xAABBCC)
    assert d[86:88] == bytes([0x11, 0x99])
    assert d[88:92] == struct.pack("!HH", 0x0102, 0x0304)
    assert d[92:112] == struct.pack("!5I", 0x10203040, 0x50607080, 0x90A0B0C0, 0xD0E0F000,
                                    0x01020304)


@settings(max_examples=200, deadline=None)
@given(st.lists(u32, min_size=12, max_size=12), st.lists(st.integers(0, 255), min_size=4,
                                                            max_size=4))
def test_ext_round_trip(words: list[int], small: list[int]) -> None:
    words[2] = words[2] % (wire.QUEUE_MAX + 1)        # sndq
    words[3] = words[3] % (words[2] + 1)              # notsent <= sndq
    words[4] = words[4] % (wire.QUEUE_MAX + 1)        # rcvq
    t = wire.TcpTransferExt(*words, *small)
    assert len(t.pack()) == 52
    assert wire.TcpTransferExt.unpack(t.pack()) == t


def test_header_and_addresses() -> None:
    assert wire.header() == bytes.fromhex("B1BB1D1B0BB1D1B0") + struct.pack("!II", 2, 2)
    assert wire.check_header(wire.header()) == 2
    # a newer source that still reads as 2 is accepted; one that needs 3 is not
    assert wire.check_header(struct.pack("!QII", wire.MAGIC, 5, 2)) == 2
    for bad in (struct.pack("!QII", wire.MAGIC, 5, 3), struct.pack("!QII", wire.MAGIC, 1, 1),
                struct.pack("!QII", 0, 2, 2), struct.pack("!QII", wire.MAGIC, 0, 2)):
        with pytest.raises(wire.StateError):
            wire.check_header(bad)
    a = wire.Addresses(bytes(15) + b"\2", bytes(16), bytes([192, 0, 2, 2]), b"\x52" * 6)
    assert len(a.pack()) == 42 and wire.Addresses.unpack(a.pack()) == a


@pytest.mark.parametrize("field,value", [("pif", (1, 1)), ("pif", (2, 3)),
                                         ("ws_from_tap", 15), ("ws_to_tap", 200)])
def test_bad_transfers_refused(field: str, value) -> None:
    t = wire.TcpTransfer((wire.PIF_TAP, wire.PIF_HOST),
                         (wire.Side(bytes(4), bytes(4), 1, 2), wire.Side(bytes(4), bytes(4), 3, 4)))
    setattr(t, field, value)
    with pytest.raises(wire.StateError):
        wire.TcpTransfer.unpack(t.pack())


def test_mixed_families_refused() -> None:
    t = wire.TcpTransfer((wire.PIF_TAP, wire.PIF_HOST),
                         (wire.Side(bytes(4), bytes(4), 1, 2), wire.Side(bytes(4), bytes(4), 3, 4)))
    data = bytearray(t.pack())
    data[18:34] = bytes(15) + b"\1"          # side[0].eaddr IPv6, oaddr IPv4
    with pytest.raises(wire.StateError):
        wire.TcpTransfer.unpack(bytes(data))


@pytest.mark.parametrize("sndq,notsent,rcvq", [(10, 11, 0), (wire.QUEUE_MAX + 1, 0, 0),
                                               (0, 0, wire.QUEUE_MAX + 1)])
def test_bad_queues_refused(sndq: int, notsent: int, rcvq: int) -> None:
    with pytest.raises(wire.StateError):
        wire.TcpTransferExt.unpack(wire.TcpTransferExt(sndq=sndq, notsent=notsent, rcvq=rcvq,
                                                       tcpi_state=1).pack())
    # a skip record's queue fields are not looked at
    wire.TcpTransferExt.unpack(wire.TcpTransferExt(sndq=sndq, notsent=notsent, rcvq=rcvq).pack())


def test_event_bits_map_to_passts() -> None:
    ours = (fp.ESTABLISHED, fp.SOCK_FIN_RCVD, fp.SOCK_FIN_SENT, fp.TAP_FIN_RCVD,
            fp.TAP_FIN_SENT, fp.TAP_FIN_ACKED)
    theirs = (0x04, 0x08, 0x10, 0x20, 0x40, 0x80)   # passt's tcp_conn.h
    for o, t in zip(ours, theirs):
        assert wire.to_passt_events(o) == t and wire.from_passt_events(t) == o
    every = sum(ours)
    assert wire.from_passt_events(wire.to_passt_events(every)) == every
