"""TCP decisions without sockets: sequence space, windows, SACK, options, events.

Everything here is a function of a connection's state (:class:`Conn`) and of a
parsed guest segment; nothing touches a socket or the clock, so every decision
is testable with frames alone (tests/tcp/test_tcp_state.py). ``engine.py``
does the socket I/O and applies what these functions decide.

State is passt's (reference 6.1): a set of *event* bits, not a classic state
machine. A guest-initiated connection goes ``TAP_SYN_RCVD`` -> (connect done)
``TAP_SYN_ACK_SENT`` -> ``ESTABLISHED``; an accepted host connection goes
``SOCK_ACCEPTED`` -> ``ESTABLISHED``; closing adds ``SOCK_FIN_RCVD``,
``TAP_FIN_SENT``, ``TAP_FIN_RCVD``, ``SOCK_FIN_SENT``, ``TAP_FIN_ACKED``.
"""
from __future__ import annotations

import struct
from typing import Any

import passtcore
# One definition of the constants and of the connection's fields: the fast-path
# kernel's (``passtcore.fastpath``; the twin, ``passtcore_py/fastpath.py``, holds
# the constants), since the established-flow fast path reads and updates the same
# connection objects as this module and engine.py.
from passtcore_py.fastpath import (  # noqa: F401  (re-exported)
    ACK, ACT_TIMEOUT, CLOSED, ESTABLISHED, FIN, FIN_TIMEOUT, M32, MAX_WINDOW, MSS_DEFAULT, PSH,
    RST, SOCK_ACCEPTED, SOCK_FIN_RCVD, SOCK_FIN_SENT, SYN, SYN_TIMEOUT, TAP_FIN_ACKED,
    TAP_FIN_RCVD, TAP_FIN_SENT, TAP_SYN_ACK_SENT, TAP_SYN_RCVD, WINDOW_DEFAULT, WND_FRAMES,
    WS_OFFERED, seq_diff, window_to_guest)

# retransmission to the guest
ACK_TIMEOUT = 2.0
RTO_MIN = 0.25              # first retransmission timeout (then doubling, up to ACK_TIMEOUT)
MAX_RETRANS = 7

#: State of one translated connection: the TCP engine's, the fast path's (a
#: ``cdef class`` with typed fields in the Cython backend). It holds no payload
#: of its own: the host socket is the retransmission store; only guest data the
#: socket cannot take yet is kept (``held``, ``pend``: bounded).
Conn = passtcore.fastpath.TcpConn


# -- handshake ------------------------------------------------------------------

def our_mss(mtu: int, v: int) -> int:
    """The MSS we announce for an MTU (> 0): rounded down to 4 KiB pages when large."""
    mss = mtu - (40 if v == 4 else 60)
    if mss > 4096:
        mss -= mss % 4096
    return max(mss, 88)


def syn_options(mss: int, sack: bool = True) -> bytes:
    """MSS, NOP, WS (passt's 8 bytes) and, if the guest can, NOP NOP SACK-permitted."""
    opts = (struct.pack("!BBH", 2, 4, min(mss, 0xFFFF)) + b"\x01"
            + struct.pack("!BBB", 3, 3, WS_OFFERED))
    return opts + b"\x01\x01\x04\x02" if sack else opts


def learn_syn(c: Conn, info: Any) -> None:
    """The guest's side of a handshake, from its SYN or SYN-ACK: ISN, MSS, window
    scale, SACK (we offer it whenever the guest does), window."""
    c.guest_isn = info.tcp_seq
    c.seq_from_tap = (info.tcp_seq + 1) & M32
    mss = info.tcp_mss if info.tcp_mss and info.tcp_mss > 0 else MSS_DEFAULT
    c.mss = max(64, min(mss, 65535 - 60) & ~3)
    if info.tcp_wscale is not None and info.tcp_wscale >= 0:
        c.ws_from_tap = info.tcp_wscale if info.tcp_wscale <= 14 else 0
        c.ws_to_tap = WS_OFFERED
    c.sack = bool(info.tcp_sack_ok)
    c.wnd_from_tap = max(info.tcp_window, 1)  # SYN windows are unscaled


def rst_for(info: Any) -> tuple[int, int]:
    """(seq, ack) of the RST|ACK answering a segment that has no connection."""
    flags = info.tcp_flags
    ack = (info.tcp_seq + info.payload_len + (1 if flags & SYN else 0)
           + (1 if flags & FIN else 0)) & M32
    return (info.tcp_ack if flags & ACK else 0), ack


# -- windows ----------------------------------------------------------------------

def rto(c: Conn) -> float:
    """Retransmission timeout: RTO_MIN doubling per try, up to ACK_TIMEOUT (passt: 2 s flat)."""
    return min(RTO_MIN * (1 << c.retries), ACK_TIMEOUT)


# -- guest ACKs --------------------------------------------------------------------

# what an ACK asks the engine to do (bits)
NEW_ACK = 0x1        # data (or our FIN) acknowledged: consume it from the socket
PUSH = 0x2           # the window opened or moved: send more
RETX_ONE = 0x4       # re-send the first unacknowledged segment
RETX_SACK = 0x8      # re-send the holes the guest's SACK blocks show
FAST_RETX = 0x10     # (with RETX_*) a fast retransmit started: count it


def on_ack(c: Conn, ack: int, window: int, plen: int, flags: int, has_sack: bool
           ) -> tuple[int, int]:
    """Apply a guest ACK to ``c``: returns (bytes to consume from the socket, actions).

    New data acknowledged: the window is taken, retries reset, and during a
    recovery a partial ACK re-sends the next hole (NewReno, or SACK holes). No
    progress: the third duplicate ACK without payload starts a fast retransmit.
    """
    wnd = min(window << c.ws_from_tap, MAX_WINDOW)
    acked = seq_diff(ack, c.seq_ack_from_tap)
    sent = seq_diff(c.seq_to_tap, c.seq_ack_from_tap)
    if 0 < acked <= sent:
        data = acked
        if c.fin_seq >= 0 and seq_diff(ack, c.fin_seq) > 0:
            data -= 1
            c.events |= TAP_FIN_ACKED
        c.seq_ack_from_tap = ack
        c.retries = 0
        c.dupacks = 0
        c.wnd_from_tap = wnd
        actions = NEW_ACK | PUSH
        if c.recover >= 0:
            if seq_diff(ack, c.recover) < 0:
                actions |= RETX_SACK if c.sack and has_sack else RETX_ONE
            else:
                c.recover = -1
                c.rexmit_hi = -1
        return data, actions
    if acked != 0:
        return 0, 0  # old or beyond what we sent: ignored
    old_wnd = c.wnd_from_tap
    c.wnd_from_tap = wnd
    actions = 0
    if sent > 0 and plen == 0 and not flags & (FIN | SYN):
        c.dupacks += 1
        if c.dupacks == 3 and c.recover < 0:
            c.recover = c.seq_to_tap
            c.rexmit_hi = -1
            actions = FAST_RETX | (RETX_SACK if c.sack and has_sack else RETX_ONE)
        elif c.dupacks > 3 and c.sack and has_sack:
            actions = RETX_SACK
    if wnd > old_wnd:
        actions |= PUSH
    return 0, actions


# -- guest data ----------------------------------------------------------------------

SEG_NEW = 0          # in order (possibly overlapping what we have): write from ``skip``
SEG_FUTURE = 1       # beyond a gap: hold it, duplicate ACK
SEG_OLD = 2          # nothing new (retransmission, keep-alive probe): ACK only
SEG_AFTER_FIN = 3    # the guest already closed: ACK data, ignore the rest
SEG_IGNORE = 4


def classify_segment(c: Conn, seq: int, plen: int, fin: bool) -> tuple[int, int]:
    """Where a guest segment with data or FIN falls: (SEG_*, bytes to skip)."""
    off = seq_diff(seq, c.seq_from_tap)
    if c.events & TAP_FIN_RCVD:
        return (SEG_AFTER_FIN if plen or (fin and off >= 0) else SEG_IGNORE), 0
    if off > 0:
        return SEG_FUTURE, 0
    if off + plen < 0 or (off + plen == 0 and (not fin or off < 0)):
        return SEG_OLD, 0
    return SEG_NEW, -off


# -- SACK ---------------------------------------------------------------------------

def sack_blocks(frame: Any, l4: int) -> list[tuple[int, int]]:
    """The SACK blocks of a guest segment (TCP option 5), as (start, end) pairs."""
    end = l4 + (frame[l4 + 12] >> 4) * 4
    i = l4 + 20
    blocks = []
    while i < end:
        kind = frame[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end or frame[i + 1] < 2:
            break
        length = frame[i + 1]
        if kind == 5:
            for j in range(i + 2, min(i + length, end) - 7, 8):
                blocks.append(struct.unpack_from("!II", frame, j))
        i += length
    return blocks


def sack_option(c: Conn, recent: int = -1) -> bytes:
    """SACK blocks (RFC 2018) for the held out-of-order data, the block holding
    ``recent`` (the latest segment) first; at most 4."""
    blocks: list[list[int]] = []
    base = c.seq_from_tap
    for seq, data, _fin in c.held or ():
        if seq_diff(seq, base) <= 0 or not data:
            continue
        end = (seq + len(data)) & M32
        if blocks and seq_diff(seq, blocks[-1][1]) <= 0:
            if seq_diff(end, blocks[-1][1]) > 0:
                blocks[-1][1] = end
        else:
            blocks.append([seq, end])
    if not blocks:
        return b""
    if recent >= 0:
        blocks.sort(key=lambda b: 0 if seq_diff(recent, b[0]) >= 0
                    and seq_diff(b[1], recent) > 0 else 1)
    blocks = blocks[:4]
    return (b"\x01\x01" + struct.pack("!BB", 5, 2 + 8 * len(blocks))
            + b"".join(struct.pack("!II", a, b) for a, b in blocks))


def sack_holes(c: Conn, blocks: list[tuple[int, int]], budget: int) -> list[tuple[int, int]]:
    """The gaps (seq, length) between the guest's SACK blocks not re-sent yet in
    this recovery, lowest first, at most ``budget``. Updates nothing: the engine
    moves ``rexmit_hi`` as it re-sends."""
    ack = c.seq_ack_from_tap
    hi = c.rexmit_hi if c.rexmit_hi >= 0 and seq_diff(c.rexmit_hi, ack) >= 0 else ack
    edge = ack
    holes = []
    for start, end in sorted(blocks, key=lambda b: seq_diff(b[0], ack)):
        if seq_diff(start, edge) > 0 and seq_diff(start, hi) > 0:
            lo = edge if seq_diff(edge, hi) >= 0 else hi
            holes.append((lo, seq_diff(start, lo)))
            if len(holes) >= budget:
                break
        if seq_diff(end, edge) > 0:
            edge = end
    return holes


# -- held guest data -------------------------------------------------------------------

def hold(c: Conn, seq: int, data: Any, fin: bool) -> int:
    """Keep a segment the socket can't take yet, in sequence order; the bytes added
    (0 for a duplicate). The engine bounds the totals before calling."""
    held = c.held
    if held is None:
        held = c.held = []
    n = len(data)
    for hseq, hdata, _ in held:
        if hseq == seq and len(hdata) >= n:
            return 0
    held.append((seq, bytes(data), fin))
    base = c.seq_from_tap
    held.sort(key=lambda e: seq_diff(e[0], base))
    c.held_bytes += n
    return n
