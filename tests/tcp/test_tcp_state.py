"""TCP decisions with frames alone (passtcore.run.tcp.state): no sockets, no clock.

Guest segments are built with scapy and parsed by the kernel, exactly what the
engine gets from the dispatcher; the state functions are then asked what to do.
"""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

import passtcore
from passtcore.run.tcp import state as st
from passtcore.run.tcp.state import (ACK, ESTABLISHED, FIN, SOCK_FIN_SENT, SYN, TAP_FIN_ACKED,
                                     TAP_FIN_RCVD, Conn)

BASE = 1_000_000


def seg(flags: str, seq: int = 0, ack: int = 0, window: int = 1000, payload: bytes = b"",
        options: list | None = None):
    frame = bytes(Ether() / IP(src="192.0.2.2", dst="192.0.2.1") /
                  TCP(sport=40000, dport=80, flags=flags, seq=seq, ack=ack, window=window,
                      options=options or []) / payload)
    return frame, passtcore.headers.parse_frame(frame)


def established(sent: int = 10000, mss: int = 1000, sack: bool = False) -> Conn:
    """An established connection: ``sent`` bytes to the guest in flight from BASE."""
    c = Conn()
    c.events = ESTABLISHED
    c.seq_ack_from_tap = BASE
    c.seq_to_tap = (BASE + sent) & st.M32
    c.seq_from_tap = 5000
    c.mss = mss
    c.sack = sack
    c.wnd_from_tap = 65535
    return c


def test_learn_syn_takes_the_guests_options() -> None:
    _, info = seg("S", seq=41, window=29200,
                  options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7)])
    c = Conn()
    st.learn_syn(c, info)
    assert (c.guest_isn, c.seq_from_tap, c.mss, c.ws_from_tap, c.ws_to_tap, c.sack,
            c.wnd_from_tap) == (41, 42, 1460, 7, st.WS_OFFERED, True, 29200)
    _, plain = seg("S", seq=7, window=512)
    c2 = Conn()
    st.learn_syn(c2, plain)
    assert (c2.mss, c2.ws_to_tap, c2.sack) == (st.MSS_DEFAULT, 0, False)


def test_syn_options_and_mss() -> None:
    assert st.syn_options(1460, sack=False) == bytes.fromhex("020405b4010303" "08")
    assert st.syn_options(1460).endswith(b"\x01\x01\x04\x02")
    assert st.our_mss(1500, 4) == 1460 and st.our_mss(1500, 6) == 1440
    assert st.our_mss(65520, 4) == 61440  # rounded to pages when large


def test_rst_for_a_segment_without_connection() -> None:
    _, syn = seg("S", seq=100)
    assert st.rst_for(syn) == (0, 101)
    _, data = seg("PA", seq=100, ack=777, payload=b"abc")
    assert st.rst_for(data) == (777, 103)


def test_new_ack_consumes_and_pushes() -> None:
    c = established()
    _, info = seg("A", seq=5000, ack=BASE + 3000, window=2000)
    consume, actions = st.on_ack(c, info.tcp_ack, info.tcp_window, 0, info.tcp_flags, False)
    assert consume == 3000 and actions == st.NEW_ACK | st.PUSH
    assert c.seq_ack_from_tap == BASE + 3000 and c.wnd_from_tap == 2000


def test_window_scale_applies_to_acks() -> None:
    c = established()
    c.ws_from_tap = 4
    st.on_ack(c, BASE + 1, 100, 0, ACK, False)
    assert c.wnd_from_tap == 1600


def test_old_and_future_acks_are_ignored() -> None:
    c = established()
    assert st.on_ack(c, BASE - 5, 1000, 0, ACK, False) == (0, 0)
    assert st.on_ack(c, BASE + 20000, 1000, 0, ACK, False) == (0, 0)
    assert c.seq_ack_from_tap == BASE


@pytest.mark.parametrize("sack", [False, True])
def test_third_duplicate_ack_starts_a_fast_retransmit(sack: bool) -> None:
    c = established(sack=sack)
    results = [st.on_ack(c, BASE, 65535, 0, ACK, sack)[1] for _ in range(4)]
    want = st.FAST_RETX | (st.RETX_SACK if sack else st.RETX_ONE)
    assert results[:3] == [0, 0, want]
    assert c.recover == BASE + 10000
    assert results[3] == (st.RETX_SACK if sack else 0)  # later dupacks: more holes with SACK


def test_duplicates_with_payload_or_fin_are_not_dupacks() -> None:
    c = established()
    for _ in range(5):
        st.on_ack(c, BASE, 65535, 100, ACK, False)
        st.on_ack(c, BASE, 65535, 0, ACK | FIN, False)
    assert c.dupacks == 0


def test_partial_ack_in_recovery_resends_the_next_hole() -> None:
    c = established()
    for _ in range(3):
        st.on_ack(c, BASE, 65535, 0, ACK, False)
    consume, actions = st.on_ack(c, BASE + 2000, 65535, 0, ACK, False)
    assert consume == 2000 and actions & st.RETX_ONE and c.recover >= 0
    consume, actions = st.on_ack(c, BASE + 10000, 65535, 0, ACK, False)
    assert not actions & (st.RETX_ONE | st.RETX_SACK) and c.recover == -1


def test_ack_of_our_fin() -> None:
    c = established(sent=101)
    c.fin_seq = BASE + 100
    consume, _ = st.on_ack(c, BASE + 101, 1000, 0, ACK, False)
    assert consume == 100 and c.events & TAP_FIN_ACKED


def test_a_window_update_pushes() -> None:
    c = established()
    c.wnd_from_tap = 0
    assert st.on_ack(c, BASE, 3000, 0, ACK, False)[1] & st.PUSH


@pytest.mark.parametrize("seq,plen,fin,want", [
    (5000, 100, False, (st.SEG_NEW, 0)),
    (4950, 100, False, (st.SEG_NEW, 50)),       # overlaps what we have
    (5100, 100, False, (st.SEG_FUTURE, 0)),     # beyond a gap
    (4800, 100, False, (st.SEG_OLD, 0)),        # a retransmission
    (4999, 0, False, (st.SEG_OLD, 0)),          # keep-alive
    (5000, 0, True, (st.SEG_NEW, 0)),           # a bare FIN in order
])
def test_classify_segment(seq: int, plen: int, fin: bool, want: tuple[int, int]) -> None:
    c = established()
    assert st.classify_segment(c, seq, plen, fin) == want


def test_after_the_guests_fin_data_is_only_acked() -> None:
    c = established()
    c.events |= TAP_FIN_RCVD
    assert st.classify_segment(c, 5000, 10, False)[0] == st.SEG_AFTER_FIN
    assert st.classify_segment(c, 4000, 0, True)[0] == st.SEG_IGNORE


def test_sack_blocks_from_a_segment_and_holes_to_resend() -> None:
    blocks_opt = [("SAck", (BASE + 3000, BASE + 5000, BASE + 7000, BASE + 10000))]
    frame, info = seg("A", ack=BASE + 2000, options=blocks_opt)
    blocks = st.sack_blocks(frame, info.l4_offset)
    assert blocks == [(BASE + 3000, BASE + 5000), (BASE + 7000, BASE + 10000)]
    c = established(sack=True)
    c.seq_ack_from_tap = BASE + 2000
    assert st.sack_holes(c, blocks, 8) == [(BASE + 2000, 1000), (BASE + 5000, 2000)]
    c.rexmit_hi = BASE + 3000     # the first hole went already
    assert st.sack_holes(c, blocks, 8) == [(BASE + 5000, 2000)]
    assert st.sack_holes(c, blocks, 1) == [(BASE + 5000, 2000)]


def test_held_data_and_our_sack_option() -> None:
    c = established()
    assert st.hold(c, 5100, b"x" * 100, False) == 100
    assert st.hold(c, 5300, b"y" * 100, False) == 100
    assert st.hold(c, 5100, b"x" * 100, False) == 0    # a duplicate
    assert st.hold(c, 5200, b"z" * 100, False) == 100  # joins the two
    assert [h[0] for h in c.held] == [5100, 5200, 5300] and c.held_bytes == 300
    opt = st.sack_option(c, recent=5300)
    assert opt == b"\x01\x01\x05\x0a" + (5100).to_bytes(4, "big") + (5400).to_bytes(4, "big")
    _, info = seg("A", options=[("SAck", (5100, 5400))])
    assert info.l4_len > 20  # scapy agrees it is a well-formed option


def test_window_to_guest() -> None:
    c = established(mss=1000)
    c.ws_to_tap = 0
    assert st.window_to_guest(c, 400000, 0) == 0xFFFF
    c.ws_to_tap = 8
    assert st.window_to_guest(c, 400000, 0) == (st.WND_FRAMES * 1000) >> 8
    assert st.window_to_guest(c, 100000, 99000) == (750 >> 8)
    c.held_bytes = 10 ** 6
    assert st.window_to_guest(c, 400000, 0) == 0


def test_flow_timeouts_by_state() -> None:
    c = Conn()
    assert c.flow_timeout() == st.SYN_TIMEOUT
    c.events = ESTABLISHED
    assert c.flow_timeout() == st.ACT_TIMEOUT
    c.events |= SOCK_FIN_SENT | TAP_FIN_ACKED
    assert c.flow_timeout() == st.FIN_TIMEOUT


def test_rto_doubles_up_to_the_ack_timeout() -> None:
    c = Conn()
    got = []
    for retries in range(6):
        c.retries = retries
        got.append(st.rto(c))
    assert got == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert SYN  # the flag constants are part of the module's API
