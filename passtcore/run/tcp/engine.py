"""TCP socket I/O: guest segments <-> host sockets, applying state.py's decisions.

See the package docstring (``passtcore/run/tcp/__init__.py``) for the design.
This module owns the host sockets and the calls on them; the decisions about
sequence numbers, windows, SACK and events come from ``state.py``.
"""
from __future__ import annotations

import errno
import fcntl
from array import array
import logging
import mmap
import os
import socket
import struct
import time
from typing import Any

import passtcore
from passtcore_py import fastpath as fp
from passtcore.run import nat
from passtcore.run.flows import fastpath_enabled
from passtcore.run.io import listeners
from passtcore.run.io.frontend import SLOT_SIZE
from passtcore.run.migrate import wire
from passtcore.run.tcp import state as st
from passtcore.run.tcp.state import (ACK, CLOSED, ESTABLISHED, FIN, M32, RST, SOCK_ACCEPTED,
                                     SOCK_FIN_RCVD, SOCK_FIN_SENT, SYN, TAP_FIN_ACKED,
                                     TAP_FIN_RCVD, TAP_FIN_SENT, TAP_SYN_ACK_SENT, TAP_SYN_RCVD,
                                     Conn, seq_diff)

log = logging.getLogger("passtcore.tcp")

NSLOTS = 64                 # frames per host->guest burst (front-end slots)
DISCARD = 1 << 24           # MSG_TRUNC / no-SO_PEEK_OFF scratch: an untouched mapping
SO_PEEK_OFF = getattr(socket, "SO_PEEK_OFF", 42)
SO_MEMINFO = 55             # u32[9]: rmem_alloc, rcvbuf, wmem_alloc, sndbuf, fwd_alloc, wmem_queued, ...
FIONREAD = 0x541B           # == SIOCINQ for TCP: bytes in the receive queue
SOCK_BUF = 0x3FFFFFFF       # INT_MAX/2 like passt: the kernel caps it at [rw]mem_max
ACCEPT_BATCH = 64
HOLD_MAX = st.MAX_WINDOW    # guest data held per connection (out of order / socket full)
HOLD_TOTAL = 256 << 20      # ... and in total
COALESCE_MAX = 32768        # guest segments smaller than this are batched into one sendmsg
# plain ints: or-ing socket's IntFlag members costs an enum call each time
MSG_OUT = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
MSG_PEEK_NB = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)
MSG_DISCARD = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL | socket.MSG_TRUNC)


class TcpEngine:
    """The TCP engine: ``handle(frame, info)`` for guest segments, ``end_batch()``
    after each batch, ``flow_expired(conn)`` from the registry, ``close()``."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.conf = conf = ctx.conf
        self.h = passtcore.headers
        self.flows = ctx.flows
        self.fast = ctx.flows.fast if fastpath_enabled() else None
        self.key = os.urandom(16)
        self.discard = memoryview(mmap.mmap(-1, DISCARD, mmap.MAP_PRIVATE))  # never written
        self.held_total = 0
        self._ack_queue: list[Conn] = []
        self.inflight: set[Conn] = set()   # data or FIN sent, not yet acknowledged
        self.rx_blocked: set[Conn] = set()  # waiting for the guest's receive buffers
        self.stalled: set[Conn] = set()    # the guest's window is shut: probe it
        self._views: dict[tuple[int, int, int], list[memoryview]] = {}
        self._seg_lens: dict[int, array] = {}       # payload lengths of full bursts, by size
        self._frame_lens = array("q", bytes(8 * NSLOTS))
        ctx.loop.call_every(st.RTO_MIN / 2, self._rto_scan)
        self.listeners = listeners.ListenerSet(ctx.loop, socket.SOCK_STREAM, self._on_accept,
                                               v4=bool(conf.v4), v6=bool(conf.v6))
        self.listeners.open(listeners.conf_specs(conf, "tcp"))

    # -- helpers -------------------------------------------------------------
    def _count(self, name: str, n: int = 1) -> None:
        self.ctx.counters.inc(name, n)

    def _now(self) -> float:
        return self.ctx.loop.now()

    def _isn(self, raddr: bytes, gport: int, gaddr: bytes, rport: int) -> int:
        # RFC 6528 as passt does it: keyed SipHash of the 4-tuple plus a 32 ns clock
        # (the kernel's SipHash: no libcrypto in the daemon).
        h = passtcore.flowtable.siphash24(self.key, nat.to16(raddr) + struct.pack("!H", gport)
                                          + nat.to16(gaddr) + struct.pack("!H", rport))
        return (h + (time.monotonic_ns() >> 5)) & M32

    def _our_mss(self, c: Conn) -> int:
        mtu = int(self.conf.mtu or 0)
        if mtu > 0:
            return st.our_mss(mtu, c.v)
        try:  # --mtu 0: the host socket's MSS
            return c.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        except OSError:
            return st.MSS_DEFAULT

    def _seg_size(self, c: Conn) -> int:
        """Payload per frame to the guest: its MSS, or a whole 64 KiB frame when the
        front end segments at the MSS itself (``tso``: the tap's offloads)."""
        hl = self.h.header_len(c.v, 6)
        if self.ctx.frontend.tso:
            # whole MSS multiples: the kernel cuts the frame into full segments only
            return max(1, (SLOT_SIZE - hl) // c.mss) * c.mss if c.mss <= SLOT_SIZE - hl \
                else SLOT_SIZE - hl
        return max(1, min(c.mss, 65535 - hl))

    def _wnd_to_tap(self, c: Conn) -> int:
        big = SLOT_SIZE if self.ctx.frontend.tso else 0  # the guest's segments are offloaded too
        try:
            mi = struct.unpack_from("9I", c.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))
            return st.window_to_guest(c, mi[3], mi[5], big)
        except OSError:
            return st.window_to_guest(c, st.WINDOW_DEFAULT * 4 // 3, 0, big)

    def _syn_options(self, c: Conn, sack: bool = True) -> bytes:
        return st.syn_options(self._our_mss(c), sack)

    def _ctrl(self, c: Conn, flags: int, seq: int | None = None, options: bytes = b"",
              window: int | None = None) -> None:
        """Send one segment without payload."""
        if window is None:
            window = self._wnd_to_tap(c) if flags & ACK and not flags & SYN else 0xFFFF
        if not options and c.sack and c.held and flags == ACK:
            options = st.sack_option(c, c.sack_recent)
        c.last_wnd = window
        c.ack_sent = c.seq_from_tap   # every segment we send acknowledges this far
        if not window and flags == ACK and c.events & ESTABLISHED and not c.writing:
            self._set_writing(c, True)   # a window update once the socket drains
        ctx = self.ctx
        slot = ctx.tx_slots(1)[0]
        n = self.h.build_tcp(slot, 0, ctx.guest_mac, self.conf.our_mac, c.raddr, c.gaddr,
                             c.rport, c.gport, c.seq_to_tap if seq is None else seq,
                             c.seq_from_tap, flags, window, 0, options)
        ctx.tx_commit((n,))

    def _reply_rst(self, info: Any) -> None:
        """RST|ACK to a guest segment that has no connection (refused SYN)."""
        seq, ack = st.rst_for(info)
        ctx = self.ctx
        slot = ctx.tx_slots(1)[0]
        n = self.h.build_tcp(slot, 0, ctx.guest_mac, self.conf.our_mac, info.dst, info.src,
                             info.dport, info.sport, seq, ack, RST | ACK, 0, 0)
        ctx.tx_commit((n,))

    def _set_reading(self, c: Conn, on: bool) -> None:
        if on != c.reading and c.sock is not None:
            if on:
                self.ctx.loop.add_reader(c.fd, lambda c=c: self._on_readable(c))
            else:
                self.ctx.loop.remove_reader(c.fd)
            c.reading = on

    def _set_writing(self, c: Conn, on: bool, cb: Any = None) -> None:
        if on != c.writing and c.sock is not None:
            if on:
                self.ctx.loop.add_writer(c.fd, cb or (lambda c=c: self._on_writable(c)))
            else:
                self.ctx.loop.remove_writer(c.fd)
            c.writing = on

    def _new_conn(self, v: int, gaddr: bytes, gport: int, raddr: bytes, rport: int,
                  sock: socket.socket, events: int) -> Conn | None:
        c = Conn()
        c.events = events
        idx = self.flows.add(self, 6, gaddr, gport, raddr, rport, c, st.SYN_TIMEOUT)
        if idx < 0:
            return None
        c.idx, c.sock, c.fd, c.v = idx, sock, sock.fileno(), v
        c.gaddr, c.gport, c.raddr, c.rport = gaddr, gport, raddr, rport
        c.created = c.last_activity = c.last_progress = self._now()
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
            except OSError:
                pass
        try:
            c.lowat_cap = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        except OSError:
            pass
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
            c.peekoff = True
        except OSError:
            c.peekoff = False
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return c

    def _free(self, c: Conn, abort: bool = False) -> None:
        if c.events & CLOSED:
            return
        c.events = CLOSED
        self.inflight.discard(c)
        self.stalled.discard(c)
        self.rx_blocked.discard(c)
        c.pend, c.pend_bytes = [], 0
        if c.held:
            self.held_total -= c.held_bytes
            c.held, c.held_bytes = None, 0
        self._set_reading(c, False)
        self._set_writing(c, False)
        if c.sock is not None:
            if abort:
                try:
                    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            c.sock.close()
            c.sock = None
        self.flows.remove(c.idx, c)

    def _reset(self, c: Conn, abort_host: bool = True) -> None:
        """RST to the guest and drop the connection."""
        if c.events & (ESTABLISHED | TAP_SYN_ACK_SENT | SOCK_ACCEPTED):
            self._ctrl(c, RST | ACK, window=0)
        elif c.events & TAP_SYN_RCVD:  # connect() still pending: fail the guest's connect
            self._ctrl(c, RST | ACK, seq=0, window=0)
        self._count("tcp_rst_to_guest")
        self._free(c, abort=abort_host)

    def _active(self, c: Conn) -> None:
        """Activity on an established connection: its deadline moves (the handshake
        keeps the one set at the SYN). Expiry runs once a second, so moving it more
        often than that buys nothing: once per second per connection, or at once
        when its state's timeout changes (both FINs: 60 s)."""
        if not c.events & ESTABLISHED:
            return
        timeout = c.flow_timeout()
        if c.last_activity - c.touched >= 1.0 or timeout != c.touched_timeout:
            c.touched, c.touched_timeout = c.last_activity, timeout
            self.flows.touch(c.idx, timeout)

    def flow_expired(self, c: Conn) -> None:
        """The registry's deadline passed (the flow is already out of the table)."""
        if not c.events & ESTABLISHED:
            self._count("tcp_handshake_timeouts")
        elif c.flow_timeout() == st.ACT_TIMEOUT:
            self._count("tcp_idle_timeouts")
        self._reset(c)

    # -- guest side ------------------------------------------------------------
    def handle(self, frame: Any, info: Any) -> None:
        c = self.flows.lookup(6, info.src, info.sport, info.dst, info.dport)
        flags = info.tcp_flags
        if c is None:
            if flags & (SYN | ACK | RST) == SYN:
                self._guest_syn(info)
            else:
                # RFC 9293 3.10.7.1: a segment of no connection gets a reset (a guest
                # whose connection did not survive a migration learns it at once)
                self.ctx.counters.drop("tcp-no-flow")
                if not flags & RST:
                    self._reply_rst(info)
            return
        c.last_activity = self._now()
        if flags & RST:
            self._count("tcp_rst_from_guest")
            # an accepted connection refused by the guest: orderly EOF to the client (6.3)
            self._free(c, abort=bool(c.events & ESTABLISHED))
            return
        if c.events & ESTABLISHED:
            self._established(c, frame, info)
        elif c.events & SOCK_ACCEPTED:
            self._guest_syn_ack(c, frame, info)
        elif c.events & TAP_SYN_RCVD:
            self._handshake_ack(c, frame, info)
        if not c.events & CLOSED:
            self._active(c)

    def _handshake_ack(self, c: Conn, frame: Any, info: Any) -> None:
        """The guest's answer to our SYN-ACK (guest-initiated connection)."""
        flags = info.tcp_flags
        if flags & SYN:
            if c.events & TAP_SYN_ACK_SENT and info.tcp_seq == c.guest_isn:
                self._ctrl(c, SYN | ACK, seq=c.isn, options=self._syn_options(c, c.sack),
                           window=min(c.wnd_from_tap, 0xFFFF) or 0xFFFF)
            return  # else: duplicate SYN while connect() pends: ignored
        if not c.events & TAP_SYN_ACK_SENT:
            return
        if not flags & ACK or info.tcp_ack != c.seq_to_tap:
            self._reset(c)
            return
        c.events = ESTABLISHED
        c.retries = 0
        self.inflight.discard(c)
        c.wnd_from_tap = info.tcp_window << c.ws_from_tap
        c.last_progress = c.last_activity
        self._established(c, frame, info)
        if c.sock is not None and not c.events & CLOSED:
            self._push(c)

    def _guest_syn(self, info: Any) -> None:
        ctx = self.ctx
        v = info.ip_version
        dst = nat.outbound_target(ctx, info.dst)
        family = socket.AF_INET if v == 4 else socket.AF_INET6
        try:
            s = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as exc:
            log.warning("tcp: socket(): %s", exc)
            self._count("tcp_socket_errors")
            self._reply_rst(info)
            return
        c = self._new_conn(v, info.src, info.sport, info.dst, info.dport, s, TAP_SYN_RCVD)
        if c is None:
            s.close()
            self._reply_rst(info)
            return
        st.learn_syn(c, info)
        c.isn = self._isn(info.dst, info.sport, info.src, info.dport)
        c.seq_to_tap = c.seq_ack_from_tap = c.isn
        # No TCP_MAXSEG from the guest's MSS (passt sets it): we re-segment for the
        # guest anyway, and a 1460-byte MSS on a loopback socket only multiplies the
        # host-side packets.
        self._bind_outbound(s, v, dst)
        err = s.connect_ex(nat.sockaddr(dst, info.dport, nat.scope_id(self.conf, dst)))
        if err == 0:
            self._syn_ack(c)
        elif err in (errno.EINPROGRESS, errno.EAGAIN):
            self._set_writing(c, True, lambda c=c: self._on_connect(c))
        else:
            log.debug("tcp: connect to %s: %s", nat.sockaddr(dst, info.dport), os.strerror(err))
            self._count("tcp_connect_refused")
            self._free(c)
            self._reply_rst(info)

    def _bind_outbound(self, s: socket.socket, v: int, dst: bytes) -> None:
        if (len(dst) == 4 and dst[0] == 127) or dst == nat.V6_LOOPBACK or nat.is_v6_ll(dst):
            return
        conf = self.conf
        addr = conf.outbound4 if v == 4 else conf.outbound6
        ifname = conf.outbound_if4 if v == 4 else conf.outbound_if6
        try:
            if ifname:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, str(ifname).encode())
            if addr:
                s.bind(nat.sockaddr(addr, 0))
        except OSError as exc:
            log.debug("tcp: outbound bind: %s", exc)

    def _on_connect(self, c: Conn) -> None:
        self._set_writing(c, False)
        if c.sock is None:
            return
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._count("tcp_connect_refused")
            # RST|ACK acknowledging the SYN: the guest's connect() fails at once
            c.seq_to_tap = 0
            self._ctrl(c, RST | ACK, seq=0, window=0)
            self._free(c)
            return
        self._syn_ack(c)

    def _syn_ack(self, c: Conn) -> None:
        c.events = TAP_SYN_RCVD | TAP_SYN_ACK_SENT
        c.last_progress = self._now()
        self._ctrl(c, SYN | ACK, seq=c.isn, options=self._syn_options(c, c.sack),
                   window=0xFFFF)  # SYN windows are unscaled; passt offers 65535
        c.seq_to_tap = (c.isn + 1) & M32
        c.seq_ack_from_tap = c.seq_to_tap
        self.inflight.add(c)  # a lost SYN-ACK or a lost final ACK: repeated until answered

    def _guest_syn_ack(self, c: Conn, frame: Any, info: Any) -> None:
        flags = info.tcp_flags
        if flags & (SYN | ACK | FIN) != SYN | ACK or info.tcp_ack != c.seq_to_tap:
            self._reset(c)
            return
        st.learn_syn(c, info)
        c.events = ESTABLISHED
        c.retries = 0
        c.last_progress = self._now()
        self.inflight.discard(c)
        self._ctrl(c, ACK)
        self._push(c)

    def _established(self, c: Conn, frame: Any, info: Any) -> None:
        flags = info.tcp_flags
        if flags & SYN:
            self._ctrl(c, ACK)  # challenge ACK: we are past the handshake
            return
        plen = info.payload_len
        if flags & ACK:
            self._guest_ack(c, frame, info, plen)
            if c.events & CLOSED:
                return
        if plen or flags & FIN:
            self._guest_data(c, frame, info, plen)
        elif seq_diff(info.tcp_seq, c.seq_from_tap) < 0:
            self._ctrl(c, ACK)  # zero-length keep-alive probe (11.1 bug 4: answered)
        if (c.events & TAP_FIN_RCVD and c.events & TAP_FIN_ACKED) and not c.events & CLOSED:
            if c.ack_due:  # the guest's FIN: ACK it now, the queued ACK dies with the flow
                self._ctrl(c, ACK)
            self._free(c)

    def _guest_ack(self, c: Conn, frame: Any, info: Any, plen: int) -> None:
        has_sack = info.payload_offset - info.l4_offset > 20
        consume, actions = st.on_ack(c, info.tcp_ack, info.tcp_window, plen, info.tcp_flags,
                                     has_sack)
        if actions & st.NEW_ACK:
            self._consume(c, consume)
            if c.sock is None:
                return
            c.last_progress = c.last_activity
        if actions & st.FAST_RETX:
            self._count("tcp_fast_retransmits")
        if actions & st.RETX_SACK:
            self._retransmit_holes(c, st.sack_blocks(frame, info.l4_offset))
        elif actions & st.RETX_ONE:
            self._retransmit_at(c, c.seq_ack_from_tap, self._seg_size(c))
        if actions & st.PUSH and c.sock is not None:
            self._push(c)

    def _consume(self, c: Conn, n: int) -> None:
        """Drop n acknowledged bytes from the socket's receive queue."""
        while n > 0:
            try:
                # MSG_TRUNC: TCP discards without copying (the buffer is never written)
                k = c.sock.recv_into(self.discard, min(n, DISCARD), MSG_DISCARD)
            except BlockingIOError:
                break
            except OSError:
                self._reset(c)
                return
            if k <= 0:
                break
            n -= k

    def _retransmit_at(self, c: Conn, seq: int, length: int) -> int:
        """Re-send up to ``length`` bytes from ``seq`` (peeked from the socket at
        that offset), in guest-MSS segments; returns the bytes sent."""
        if c.sock is None:
            return 0
        data_out = seq_diff(c.seq_to_tap, c.seq_ack_from_tap)
        if c.fin_seq >= 0:
            data_out -= 1
        offset = seq_diff(seq, c.seq_ack_from_tap)
        if data_out <= 0 or offset >= data_out:
            if c.fin_seq >= 0 and not c.events & TAP_FIN_ACKED and offset >= data_out:
                self._ctrl(c, FIN | ACK, seq=c.fin_seq)
            return 0
        seg = self._seg_size(c)
        length = min(length, data_out - offset, NSLOTS * seg)
        if c.peekoff:
            try:
                c.sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, offset)
            except OSError:
                self._reset(c)
                return 0
            got = self._peek_burst(c, seq, length, 0)
            try:
                c.sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, data_out)
            except OSError:
                pass
        else:
            got = self._peek_burst(c, seq, length, offset)
        if got > 0:
            self._count("tcp_segments_retransmitted", (got + seg - 1) // seg)
        return max(got, 0)

    def _peek_burst(self, c: Conn, seq: int, want: int, skip: int) -> int:
        """Peek up to ``want`` bytes (after ``skip`` already-sent ones, without
        SO_PEEK_OFF) straight into front-end slots, as guest-MSS segments from
        ``seq``, and send them in one commit. Bytes sent; 0 at EOF; -1 if nothing
        was queued; the connection is reset on a socket error."""
        ctx = self.ctx
        h = self.h
        seg = self._seg_size(c)
        hl = h.header_len(c.v, 6)
        nslots = min(NSLOTS, (want + seg - 1) // seg)
        slots = ctx.tx_slots(nslots)
        nslots = len(slots)
        want = min(want, nslots * seg)
        iov = self._payload_views(slots, hl, seg)[:nslots]
        last = want - (nslots - 1) * seg
        if last < seg:
            iov[-1] = iov[-1][:last]
        if skip:
            iov.insert(0, self.discard[:skip])
        try:
            got = c.sock.recvmsg_into(iov, 0, MSG_PEEK_NB)[0]
        except BlockingIOError:
            return -1
        except OSError:
            self._reset(c)
            return -1
        if skip:
            if got <= skip:
                return -1 if got else 0
            got -= skip
        if got <= 0:
            return got
        wnd = self._wnd_to_tap(c)
        # the burst's headers from one kernel call: full segments, then the rest
        count = (got + seg - 1) // seg
        plens = self._seg_lens.get(seg)
        if plens is None:
            if len(self._seg_lens) > 8:
                self._seg_lens.clear()
            plens = self._seg_lens[seg] = array("q", [seg]) * NSLOTS
        plens = plens[:count]
        plens[count - 1] = got - (count - 1) * seg
        lengths = self._frame_lens
        buf, first, stride = ctx.frontend.slot_layout()
        h.build_tcp_burst(buf, first, stride, plens, ctx.guest_mac, self.conf.our_mac, c.raddr,
                          c.gaddr, c.rport, c.gport, seq, c.seq_from_tap, ACK, wnd, lengths)
        c.last_wnd = wnd
        c.ack_sent = c.seq_from_tap
        ctx.tx_commit(lengths[:count], c.mss)
        ctx.counters.inc("tcp_segments_to_guest", count)
        return got

    def _payload_views(self, slots: list[memoryview], hl: int, seg: int) -> list[memoryview]:
        """The payload areas of the front end's slots for a header length and segment
        size (cached: the slots are the front end's, the same objects every time)."""
        cache = self._views
        key = (id(slots[0]), hl, seg)
        views = cache.get(key)
        if views is None or len(views) < len(slots):
            if len(cache) > 8:
                cache.clear()
            views = cache[key] = [s[hl:hl + seg] for s in self.ctx.tx_slots(NSLOTS)]
        return views

    def _retransmit_holes(self, c: Conn, blocks: list[tuple[int, int]]) -> None:
        """Selective retransmission (RFC 2018/6675, simplified): re-send the gaps
        between the guest's SACK blocks that were not re-sent in this recovery."""
        if not blocks:
            return
        if c.rexmit_hi < 0 or seq_diff(c.rexmit_hi, c.seq_ack_from_tap) < 0:
            c.rexmit_hi = c.seq_ack_from_tap
        for lo, length in st.sack_holes(c, blocks, NSLOTS):
            sent = self._retransmit_at(c, lo, length)
            if sent <= 0 or c.sock is None:
                return
            c.rexmit_hi = (lo + sent) & M32

    def _rewind(self, c: Conn) -> None:
        """Retransmit from the last byte the guest acknowledged."""
        c.recover = -1
        c.seq_to_tap = c.seq_ack_from_tap
        if c.fin_seq >= 0 and not c.events & TAP_FIN_ACKED:
            c.events &= ~TAP_FIN_SENT
            c.fin_seq = -1
        try:
            c.sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        except OSError:
            pass
        c.dupacks = 0
        self._push(c)

    def _guest_data(self, c: Conn, frame: Any, info: Any, plen: int) -> None:
        fin = bool(info.tcp_flags & FIN)
        if c.pend_bytes:
            # small in-order segments of one batch: one sendmsg() at the batch's end
            if (plen and not fin and plen < COALESCE_MAX
                    and seq_diff(info.tcp_seq, c.seq_from_tap) == c.pend_bytes):
                c.pend.append(bytes(frame[info.payload_offset:info.payload_offset + plen]))
                c.pend_bytes += plen
                return
            if not self._flush_pend(c):
                return
        kind, skip = st.classify_segment(c, info.tcp_seq, plen, fin)
        if kind == st.SEG_FUTURE:
            # beyond a gap: held (bounded, never ACKed) until the gap is filled
            self._count("tcp_out_of_order")
            self._hold(c, info.tcp_seq, frame[info.payload_offset:info.payload_offset + plen], fin)
            c.sack_recent = info.tcp_seq
            self._ctrl(c, ACK)  # duplicate ACK: the guest retransmits the gap
            return
        if kind != st.SEG_NEW:
            if kind != st.SEG_IGNORE:
                self._ctrl(c, ACK)  # old data, keep-alive probe, data after FIN
            return
        start = info.payload_offset + skip
        end = info.payload_offset + plen
        if not c.held and not fin and not skip and plen < COALESCE_MAX:
            c.pend.append(bytes(frame[start:end]))
            c.pend_bytes = plen
            self._ack_later(c)
            return
        if c.held:
            self._hold(c, c.seq_from_tap, frame[start:end], fin)
        elif not self._write(c, frame[start:end], fin):
            return
        if c.held and not self._drain(c):
            return
        self._ack_later(c)

    def _ack_later(self, c: Conn) -> None:
        """ACK in-order data once per batch (``end_batch``): one ACK covers them all."""
        if not c.ack_due:
            c.ack_due = True
            self._ack_queue.append(c)

    def end_batch(self) -> None:
        """After the dispatcher's batch: write coalesced data, send the ACKs due."""
        if not self._ack_queue:
            return
        queue, self._ack_queue = self._ack_queue, []
        for c in queue:
            c.ack_due = False
            if c.sock is None or c.events & CLOSED:
                continue
            if c.pend_bytes and not self._flush_pend(c):
                continue
            if c.held and not self._drain(c):
                continue
            self._ctrl(c, ACK)

    def _flush_pend(self, c: Conn) -> bool:
        """Write the coalesced small segments with one sendmsg(); False if reset."""
        data, n = c.pend, c.pend_bytes
        c.pend, c.pend_bytes = [], 0
        try:
            written = c.sock.sendmsg(data, (), MSG_OUT)
        except BlockingIOError:
            written = 0
        except BrokenPipeError:
            written = n
        except OSError:
            self._reset(c)
            return False
        c.seq_from_tap = (c.seq_from_tap + written) & M32
        if written < n:
            self._count("tcp_sndbuf_full")
            self._hold(c, c.seq_from_tap, b"".join(data)[written:], False)
            self._set_writing(c, True)
        return True

    def _write(self, c: Conn, data: Any, fin: bool) -> bool:
        """Write in-order guest data; an unwritten tail is held until the socket drains."""
        written = 0
        if len(data):
            try:
                written = c.sock.send(data, MSG_OUT)
            except BlockingIOError:
                written = 0
            except BrokenPipeError:
                written = len(data)
            except OSError:
                self._reset(c)
                return False
            c.seq_from_tap = (c.seq_from_tap + written) & M32
        if written < len(data):
            self._count("tcp_sndbuf_full")
            self._hold(c, c.seq_from_tap, data[written:], fin)
            self._set_writing(c, True)
            return True
        if fin:
            c.seq_from_tap = (c.seq_from_tap + 1) & M32
            c.events |= TAP_FIN_RCVD
            try:
                c.sock.shutdown(socket.SHUT_WR)
                c.events |= SOCK_FIN_SENT
            except OSError:
                pass
        return True

    def _hold(self, c: Conn, seq: int, data: Any, fin: bool) -> None:
        """Keep a segment the socket can't take yet (bounded per connection and in total)."""
        n = len(data)
        if c.held_bytes + n > HOLD_MAX or self.held_total + n > HOLD_TOTAL:
            self._count("tcp_hold_full")
            return  # dropped: the guest retransmits it
        self.held_total += st.hold(c, seq, data, fin)

    def _drain(self, c: Conn) -> bool:
        """Write held segments that are now in order; False if the connection died."""
        held = c.held
        while held:
            seq, data, fin = held[0]
            off = seq_diff(seq, c.seq_from_tap)
            if off > 0:
                break
            held.pop(0)
            c.held_bytes -= len(data)
            self.held_total -= len(data)
            if -off > len(data) or (-off == len(data) and not fin):
                continue  # already written
            if not self._write(c, memoryview(data)[-off:], fin):
                return False
            if c.writing:
                break  # socket full again: the tail went back to the queue
        if not held:
            c.held = None
        return True

    def _on_writable(self, c: Conn) -> None:
        """The socket drained: write what is held, tell the guest its window reopened."""
        self._set_writing(c, False)
        if c.sock is not None and c.events & ESTABLISHED:
            if c.held and not self._drain(c):
                return
            self._ctrl(c, ACK)
            if c.events & TAP_FIN_RCVD and c.events & TAP_FIN_ACKED:
                self._free(c)

    def fast_event(self, kind: int, c: Conn, data: Any) -> None:
        """What the fast path (``passtcore.fastpath``) leaves to the engine."""
        if c.events & CLOSED or c.sock is None:
            return
        if kind == fp.EV_PUSH:
            if c.events & ESTABLISHED:
                self._push(c)
        elif kind == fp.EV_HOLD:
            # the socket took part of the batch's data: keep the rest, wait for POLLOUT
            self._count("tcp_sndbuf_full")
            self._hold(c, c.seq_from_tap, data, False)
            self._set_writing(c, True)
            self._ack_later(c)
        elif kind == fp.EV_RESET:
            self._reset(c)
        elif kind == fp.EV_ACK:
            self._ack_later(c)
        elif kind == fp.EV_WINDOW:
            self._set_writing(c, True)   # _on_writable: the update, once there is room

    # -- host side -------------------------------------------------------------
    def _on_rx_space(self) -> None:
        """The guest posted receive buffers: connections that found none go on."""
        blocked, self.rx_blocked = self.rx_blocked, set()
        for c in blocked:
            if c.sock is not None and not c.events & CLOSED:
                self._push(c)

    def _on_readable(self, c: Conn) -> None:
        if c.sock is not None:
            c.last_activity = self._now()
            self._active(c)
            self._push(c, woken=True)

    def _push(self, c: Conn, woken: bool = False) -> None:
        """Send host data the guest has not seen, within its window (6.4). ``woken``:
        the socket is readable (new data, or EOF, which only a read can tell)."""
        if c.sock is None or not c.events & ESTABLISHED:
            return
        fast = self.fast
        if fast is not None and c.events == ESTABLISHED:
            # the common case in one kernel call: peek, headers, window, low-water mark
            ctx = self.ctx
            frontend = ctx.frontend
            lengths = self._frame_lens
            n = -1
            direct = frontend.push_direct if ctx.pcap is None else None
            if direct is not None:   # into guest memory: sent already
                n = direct(fast, c, woken, self._seg_size(c), self._now(), lengths)
                if n > 0:
                    self.inflight.add(c)
                elif n == -2:
                    # the guest has no receive buffer: read nothing until it posts
                    # some (rather than drop frames and wait for retransmissions)
                    self.rx_blocked.add(c)
                    frontend.rx_wakeup = self._on_rx_space
                    self._set_reading(c, False)
                    return
            if n < 0:
                buf, first, stride = frontend.slot_layout()
                n = fast.push(c, woken, buf, first, stride, min(NSLOTS, frontend.nslots),
                              self._seg_size(c), self._now(), lengths)
                if n > 0:
                    ctx.tx_commit(lengths[:n], c.mss)
                    self.inflight.add(c)
            if n >= 0:
                flags = fast.push_flags
                if flags & fp.PUSH_NOREAD:
                    self._set_reading(c, False)
                elif flags & fp.PUSH_READ:
                    self._set_reading(c, True)
                return
        if c.events & TAP_FIN_SENT:
            self._set_reading(c, False)
            return
        outstanding = seq_diff(c.seq_to_tap, c.seq_ack_from_tap)
        avail = c.wnd_from_tap - outstanding
        if avail <= 0:
            if not c.stalled_since:
                c.stalled_since = self._now()
                self.stalled.add(c)
            self._set_reading(c, False)
            return
        if c.stalled_since:
            c.stalled_since = 0.0
            self.stalled.discard(c)
        want = avail
        if c.peekoff:
            try:  # bytes queued: peek only what is there (EOF still needs one slot)
                queued = struct.unpack("i", fcntl.ioctl(c.fd, FIONREAD, b"\0\0\0\0"))[0]
            except OSError:
                queued = outstanding + 1
            if queued <= outstanding and c.reading and not woken:
                # nothing new: the reader wakes us for new data or EOF, once the
                # low-water mark follows what the guest has acknowledged
                self._set_lowat(c, outstanding + 1)
                return
            want = min(avail, max(queued - outstanding, 1))
        got = self._peek_burst(c, c.seq_to_tap, want, 0 if c.peekoff else outstanding)
        if c.sock is None:
            return
        if got == 0:
            c.events |= SOCK_FIN_RCVD
        if got > 0:
            if not outstanding:
                c.last_progress = self._now()
            c.seq_to_tap = (c.seq_to_tap + got) & M32
            self.inflight.add(c)
            outstanding += got
        if c.events & SOCK_FIN_RCVD and got <= 0:
            # everything the host sent has been sent to the guest: FIN
            c.fin_seq = c.seq_to_tap
            self._ctrl(c, FIN | ACK)
            c.seq_to_tap = (c.seq_to_tap + 1) & M32
            c.events |= TAP_FIN_SENT
            self.inflight.add(c)
            self._set_reading(c, False)
            return
        if c.wnd_from_tap - outstanding <= 0:
            self._set_reading(c, False)
            return
        if self._set_lowat(c, outstanding + 1):
            self._set_reading(c, True)

    def _set_lowat(self, c: Conn, lowat: int) -> bool:
        """SO_RCVLOWAT = ``lowat``: the socket is readable only for data the guest has
        not been sent (or EOF). False (and not reading) past the kernel's cap of
        rcvbuf/2, where it would stay readable with nothing new: the guest's ACKs
        call _push instead."""
        if lowat > c.lowat_cap:
            self._set_reading(c, False)
            return False
        if lowat != c.lowat:
            try:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
                c.lowat = lowat
            except OSError:
                pass
        return True

    def _on_accept(self, lsock: socket.socket, fw: listeners.Forward) -> None:
        ctx = self.ctx
        for _ in range(ACCEPT_BATCH):
            try:
                s, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("tcp: accept: %s", exc)
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # out of descriptors: the listener would stay readable and spin
                    self.listeners.pause(lsock, 1.0)
                    self._count("tcp_accept_errors")
                return
            s.setblocking(False)
            src = nat.peer_bytes(s.family, peer)
            v = 4 if len(src) == 4 else 6
            rsrc, gdst = nat.inbound_source(ctx, src)
            if not gdst:
                self._count("tcp_flows_refused")
                s.close()
                continue
            c = self._new_conn(v, gdst, fw.guest_port, rsrc, peer[1], s, SOCK_ACCEPTED)
            if c is None:
                s.close()
                continue
            c.ws_to_tap = st.WS_OFFERED
            c.isn = self._isn(rsrc, fw.guest_port, gdst, peer[1])
            self._ctrl(c, SYN, seq=c.isn, options=self._syn_options(c), window=0xFFFF)
            c.seq_to_tap = c.seq_ack_from_tap = (c.isn + 1) & M32
            self.inflight.add(c)  # the SYN is retransmitted until the guest answers
            self._count("tcp_accepted")

    def set_auto_ports(self, ports: set[int]) -> None:
        """``-t auto``: the forwarded ports are now ``ports`` (see autofwd.py)."""
        self.listeners.set_ports(ports)

    # -- timers ----------------------------------------------------------------
    def _rto_scan(self) -> None:
        """Retransmission timeouts of connections with data in flight to the guest,
        and window probes of those whose window is shut (every RTO_MIN / 2).

        RTO_MIN doubling up to ACK_TIMEOUT (passt: a flat 2 s); after MAX_RETRANS
        timeouts without progress, RST. Only connections in ``inflight`` and
        ``stalled`` are looked at.
        """
        now = self._now()
        for c in list(self.inflight):
            if c.events & SOCK_ACCEPTED:  # our SYN to the guest, unanswered
                if now - c.last_progress >= st.rto(c):
                    c.retries += 1
                    c.last_progress = now
                    self._ctrl(c, SYN, seq=c.isn, options=self._syn_options(c), window=0xFFFF)
                continue
            if c.events & TAP_SYN_ACK_SENT and not c.events & (ESTABLISHED | CLOSED):
                # our SYN-ACK or the guest's ACK of it was lost; a guest that only
                # receives sends nothing else, so repeat it (its duplicate gets an ACK)
                if now - c.last_progress >= st.rto(c):
                    c.retries += 1
                    c.last_progress = now
                    self._count("tcp_syn_ack_retransmits")
                    self._ctrl(c, SYN | ACK, seq=c.isn, options=self._syn_options(c, c.sack),
                               window=0xFFFF)
                continue
            if c.events & CLOSED or c.seq_to_tap == c.seq_ack_from_tap:
                self.inflight.discard(c)
                continue
            if now - c.last_progress < st.rto(c):
                continue
            if c.wnd_from_tap == 0 and c.stalled_since:
                # persist: the guest's window is shut, not our data lost; probe
                # for a window update instead of counting towards the RST
                c.last_progress = now
                self._ctrl(c, ACK, seq=(c.seq_ack_from_tap - 1) & M32)
                continue
            c.retries += 1
            if c.retries > st.MAX_RETRANS:
                self._count("tcp_retransmit_timeouts")
                self._reset(c)
                continue
            c.last_progress = now
            self._count("tcp_retransmits")
            self._rewind(c)
        for c in list(self.stalled):
            if c.events & CLOSED or not c.stalled_since:
                self.stalled.discard(c)
            elif c.seq_to_tap == c.seq_ack_from_tap and now - c.stalled_since >= st.ACK_TIMEOUT:
                # zero window, nothing in flight: probe so that a lost window update is repeated
                c.stalled_since = now
                self._ctrl(c, ACK, seq=(c.seq_to_tap - 1) & M32)

    # -- live migration (run/migrate/device.py) ---------------------------------
    sock_buf = SOCK_BUF

    def migratable(self) -> list[Conn]:
        """The connections a migration carries over (passt's: established ones)."""
        return [c for c in self.flows.objects(self)
                if c.events & ESTABLISHED and not c.events & CLOSED and c.sock is not None]

    def transfer(self, c: Conn) -> wire.TcpTransfer:
        """``c`` in passt's migration format (the guest side; the socket's own
        state travels separately, see migrate/sockets.py)."""
        s = c.sock
        local, peer = s.getsockname(), s.getpeername()
        host = wire.Side(nat.peer_bytes(s.family, local), nat.peer_bytes(s.family, peer),
                         local[1], peer[1])
        tap = wire.Side(c.raddr, c.gaddr, c.rport, c.gport)
        inbound = local[1] in self.listeners.ports()
        try:
            sndbuf = s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        except OSError:
            sndbuf = 0
        return wire.TcpTransfer(
            (wire.PIF_HOST, wire.PIF_TAP) if inbound else (wire.PIF_TAP, wire.PIF_HOST),
            (host, tap) if inbound else (tap, host),
            retries=min(c.retries, 255), ws_from_tap=c.ws_from_tap, ws_to_tap=c.ws_to_tap,
            events=wire.to_passt_events(c.events), tap_mss=c.mss,
            sndbuf=min(sndbuf, 0xFFFFFFFF) >> 8,     # passt keeps it in 256-byte units
            seq_dup_ack_approx=c.seq_from_tap & 0xFF,
            wnd_from_tap=min(c.wnd_from_tap >> c.ws_from_tap, 0xFFFF),
            wnd_to_tap=max(c.last_wnd, 0) & 0xFFFF,
            seq_to_tap=c.seq_to_tap, seq_ack_from_tap=c.seq_ack_from_tap,
            seq_from_tap=c.seq_from_tap,
            seq_ack_to_tap=c.ack_sent if c.ack_sent >= 0 else c.seq_from_tap,
            seq_init_from_tap=c.guest_isn)

    def detach(self, c: Conn, close: bool) -> None:
        """The connection leaves with the guest: out of the loop and the registry.
        Its socket is in repair mode: kept (a rollback can bring it back) or
        closed, which in repair mode sends the peer nothing."""
        self._set_reading(c, False)
        self._set_writing(c, False)
        for group in (self.inflight, self.stalled, self.rx_blocked):
            group.discard(c)
        self.flows.remove(c.idx, c)
        c.idx = -1
        if close and c.sock is not None:
            c.sock.close()
            c.sock = None

    def reattach(self, c: Conn) -> None:
        """A detached connection comes back (the migration failed): its socket is
        out of repair mode again."""
        idx = self.flows.add(self, 6, c.gaddr, c.gport, c.raddr, c.rport, c, c.flow_timeout())
        if idx < 0:
            self.reset_lost(c)
            return
        c.idx = idx
        self.wake(c)

    def repair_socket(self, family: int) -> socket.socket:
        """A socket for a migrated connection, sized before its queues are restored."""
        s = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
            except OSError:
                pass
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return s

    def adopt(self, t: wire.TcpTransfer, s: socket.socket) -> Conn | None:
        """A connection restored on the migration target joins the engine; it
        hears from us once the guest's rings run (``wake``)."""
        tap = t.tap()
        gaddr, raddr = wire.uninany(tap.eaddr), wire.uninany(tap.oaddr)
        c = self._new_conn(4 if len(gaddr) == 4 else 6, gaddr, tap.eport, raddr, tap.oport, s,
                           ESTABLISHED)
        if c is None:
            return None
        c.events = wire.from_passt_events(t.events) | ESTABLISHED
        c.ws_from_tap, c.ws_to_tap = t.ws_from_tap, t.ws_to_tap
        c.mss = max(64, min(t.tap_mss, 65535 - 60) & ~3)
        c.wnd_from_tap = min(t.wnd_from_tap << t.ws_from_tap, st.MAX_WINDOW)
        c.seq_ack_from_tap, c.seq_from_tap = t.seq_ack_from_tap, t.seq_from_tap
        c.guest_isn, c.ack_sent = t.seq_init_from_tap, t.seq_ack_to_tap
        c.isn = (t.seq_ack_from_tap - 1) & M32
        c.seq_to_tap = t.seq_to_tap
        if c.events & TAP_FIN_SENT:
            c.fin_seq = (t.seq_to_tap - 1) & M32
        c.touched, c.touched_timeout = c.last_activity, c.flow_timeout()
        self.flows.touch(c.idx, c.touched_timeout)
        return c

    def wake(self, c: Conn) -> None:
        """After a move: an ACK (the guest learns our window), then everything the
        guest has not acknowledged again, from the socket (where it still is)."""
        if c.sock is None or c.events & CLOSED:
            return
        c.last_progress = self._now()
        self._ctrl(c, ACK)
        self.inflight.add(c)
        self._rewind(c)

    def ghost(self, t: wire.TcpTransfer) -> Conn:
        """A connection that could not be restored, enough of it to reset."""
        tap = t.tap()
        c = Conn()
        c.gaddr, c.raddr = wire.uninany(tap.eaddr), wire.uninany(tap.oaddr)
        c.gport, c.rport, c.v = tap.eport, tap.oport, 4 if len(c.gaddr) == 4 else 6
        c.seq_to_tap, c.seq_from_tap, c.events = t.seq_to_tap, t.seq_from_tap, ESTABLISHED
        return c

    def reset_lost(self, c: Conn) -> None:
        """RST to the guest for a connection that did not survive a move."""
        self._ctrl(c, RST | ACK, window=0)
        self._count("tcp_rst_to_guest")
        if c.idx >= 0:
            self._free(c, abort=True)
        elif c.sock is not None:
            c.sock.close()
            c.sock = None

    def close(self) -> None:
        for c in self.flows.objects(self):
            self._free(c, abort=True)
        self.listeners.close()

    def stats(self) -> dict[str, int]:
        return {"connections": len(self.flows.objects(self)), "listeners": len(self.listeners)}
