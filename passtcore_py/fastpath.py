"""The data-plane fast path, pure-Python twin of ``passtcore._fastpath``.

Most guest frames belong to a flow that is already set up and in its quiet,
common state: an in-order TCP segment or a pure ACK of an established
connection, a UDP datagram to a destination the flow has sent to before. The
fast path handles exactly those, for a whole batch in one call, and hands
everything else (SYN/FIN/RST, new flows, out-of-order or old data, duplicate
ACKs, SACK options, L2 services, anything malformed) back to the Python
engines, one frame at a time, in order.

**State.** A flow's state is one object, the same one the Python engine
uses: :class:`TcpConn` (the TCP engine's connection, ``run/tcp/state.py``)
and :class:`UdpFlow` (a UDP port's host socket). In the Cython kernel they are
``cdef class`` es with typed fields, and the fast path reaches them by flow
index (a C array beside the flow table, which it cimports: the lookup of a
frame's 5-tuple is a C call). Python code reads and writes the same fields as
attributes, so there is one copy of the state and nothing to synchronise.

**TCP** (``run``): a segment is taken when its flow is exactly ESTABLISHED
with nothing held, coalesced, unwritten or being recovered; its flags are ACK
(PSH allowed), it has no options, and its sequence number is the next one
expected. The ACK part is applied as ``state.on_ack`` does for new data
(acknowledged bytes are consumed from the socket with ``MSG_TRUNC``, the
window taken, retries reset) or for a window update; a duplicate ACK goes to
Python, which counts it towards a fast retransmit. In-order payload is queued
as an iovec into the frame buffer itself; each flow's queue leaves with one
``sendmsg()`` before the call returns (a slow frame flushes first, so the
socket always sees the guest's bytes in order). What the socket does not
take becomes a ``HOLD`` event (the engine keeps the tail and waits for the
socket to drain), a socket error a ``RESET`` event.

**After the batch** (``finish``): one ACK per flow that got data, with the
window from ``SO_MEMINFO`` (``state.window_to_guest``), built straight into
the front end's slots; then a ``PUSH`` event per flow whose window moved, so
that the engine sends more host data (once per flow per batch, not per ACK).

**UDP**: a datagram is taken when its guest port has a flow whose cached
target (set by the engine after its first, slow, datagram to that
destination: ``UdpFlow.set_fast_target``) matches; consecutive datagrams of
one flow leave with one ``sendmmsg()``. Each handled frame refreshes its
flow's deadline in the flow table.

Events are ``(kind, flow, data)`` tuples in ``FastPath.events``, consumed by
the caller after each call; counters go straight into the counters mapping
(``fastpath_tcp``, ``fastpath_udp``, ``udp_to_host``, ``drop.udp-send-error``).
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import socket
import struct
from typing import Any

from passtcore_py import csum as _csum
from passtcore_py import headers as _headers
from passtcore_py.virtq import ETH_ZLEN, RV_MAX_FRAMES, RV_MAX_SEG
from passtcore_py.flowtable import FlowTable

__all__ = [
    "TcpConn", "UdpFlow", "FastPath", "EV_PUSH", "EV_HOLD", "EV_RESET", "EV_ACK",
    "PUSH_INFLIGHT", "PUSH_READ", "PUSH_NOREAD", "window_to_guest", "read_frames",
    "write_frames", "IoResult",
]

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

# connection events (passt-reference 6.1)
SOCK_ACCEPTED = 0x001
TAP_SYN_RCVD = 0x002
ESTABLISHED = 0x004
TAP_SYN_ACK_SENT = 0x008
SOCK_FIN_RCVD = 0x010
SOCK_FIN_SENT = 0x020
TAP_FIN_RCVD = 0x040
TAP_FIN_SENT = 0x080
TAP_FIN_ACKED = 0x100
CLOSED = 0x200

MSS_DEFAULT = 536
WINDOW_DEFAULT = 14600
MAX_WINDOW = 1 << 24
WS_OFFERED = 8
WND_FRAMES = 128            # window cap in guest segments (see window_to_guest)

SYN_TIMEOUT = 10.0
FIN_TIMEOUT = 60.0
ACT_TIMEOUT = 7200.0
UDP_TIMEOUT = 180.0
REFERENCE = float(1 << 20)  # the flow registry's deadline trick (run/flows.py)

M32 = 0xFFFFFFFF
SO_MEMINFO = 55
UDP_GROUP = 64              # datagrams per sendmmsg()
MAXIOV = 1024               # queued TCP payloads per call (a frame beyond goes to Python)
FLUSH_BYTES = 32768         # a flow's queue leaves at once past this: the host side keeps
                            # working (another core) while the rest of the batch is read
DISCARD = 1 << 24

EV_PUSH = 1     # the window moved: send the guest more host data
EV_HOLD = 2     # data: the bytes the socket did not take (keep them, wait for POLLOUT)
EV_RESET = 3    # a socket error: reset the connection
EV_ACK = 4      # an ACK is due that needs the engine (held data: SACK blocks)
EV_WINDOW = 5   # an ACK told the guest "window 0": tell it when the socket drains

MSG_OUT = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
MSG_DISCARD = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL | socket.MSG_TRUNC)


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b in 32-bit sequence space."""
    return ((a - b + 0x80000000) & M32) - 0x80000000


class TcpConn:
    """State of one translated TCP connection (see ``run/tcp/state.py``). It holds
    no payload of its own: the host socket is the retransmission store; only
    guest data the socket cannot take yet is kept (``held``, ``pend``: bounded)."""

    __slots__ = (
        "idx", "sock", "fd", "v", "gaddr", "gport", "raddr", "rport", "events",
        "seq_to_tap", "seq_ack_from_tap", "seq_from_tap", "isn", "guest_isn",
        "wnd_from_tap", "ws_from_tap", "ws_to_tap", "mss", "reading", "writing",
        "lowat", "dupacks", "retries", "last_progress", "last_activity", "created",
        "last_wnd", "fin_seq", "stalled_since", "peekoff", "held", "held_bytes", "recover",
        "ack_due", "lowat_cap", "pend", "pend_bytes", "sack", "sack_recent", "rexmit_hi",
        "touched", "touched_timeout", "fp_pending", "fp_flags", "fp_batch", "ack_sent",
    )

    def __init__(self) -> None:
        self.idx = -1
        self.sock: Any = None
        self.fd = -1
        self.v = 4
        self.gaddr = self.raddr = b""
        self.gport = self.rport = 0
        self.events = 0
        self.reading = False
        self.writing = False
        self.lowat = 1
        self.dupacks = 0
        self.retries = 0
        self.fin_seq = -1
        self.stalled_since = 0.0
        self.last_wnd = -1
        self.held: list[tuple[int, bytes, bool]] | None = None
        self.held_bytes = 0
        self.recover = -1
        self.ack_due = False
        self.pend: list[bytes] = []   # small in-order guest payloads of this loop pass
        self.pend_bytes = 0
        self.sack = False        # guest and we agreed on SACK: held data is SACKed
        self.sack_recent = -1
        self.rexmit_hi = -1      # SACK recovery: re-sent up to here
        self.ws_to_tap = 0
        self.ws_from_tap = 0
        self.wnd_from_tap = WINDOW_DEFAULT
        self.mss = MSS_DEFAULT
        self.seq_from_tap = 0
        self.seq_to_tap = 0
        self.seq_ack_from_tap = 0
        self.isn = 0
        self.guest_isn = 0
        self.peekoff = False
        self.lowat_cap = 1 << 20
        self.created = self.last_activity = self.last_progress = 0.0
        self.touched = 0.0       # when the registry deadline was last moved ...
        self.touched_timeout = 0.0  # ... and with which timeout
        self.fp_pending = 0      # fast path: bytes queued for this flow's sendmsg()
        self.fp_flags = 0        # fast path: FP_* bits of this batch
        self.fp_batch = 0        # fast path: guest bytes taken in this batch
        self.ack_sent = -1       # the last acknowledgement number sent to the guest

    def flow_timeout(self) -> float:
        """The idle deadline for this state: handshake, closing or established."""
        ev = self.events
        if not ev & ESTABLISHED:
            return SYN_TIMEOUT
        if ev & SOCK_FIN_SENT and ev & TAP_FIN_ACKED:
            return FIN_TIMEOUT
        return ACT_TIMEOUT


class UdpFlow:
    """One host socket serving one guest port of one family (``run/udp``)."""

    __slots__ = ("sock", "fd", "v", "gport", "gaddr", "forwarded", "idx", "mapped",
                 "fast_dst", "fast_dport", "fast_sa")

    def __init__(self, sock: Any, v: int, gport: int, forwarded: bool) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.v = v
        self.gport = gport
        self.gaddr: bytes | None = None
        self.forwarded = forwarded
        self.idx = -1
        # remote port -> the address the guest sent to, when it was mapped to a
        # local one: replies are shown from that address (connected sockets work)
        self.mapped: dict[int, bytes] = {}
        self.fast_dst: bytes | None = None   # the fast path's cached target ...
        self.fast_dport = -1
        self.fast_sa: Any = None             # ... and its socket address

    def set_fast_target(self, dst: bytes, dport: int, target: bytes, scope_id: int = 0) -> None:
        """Datagrams the guest sends to ``dst``:``dport`` go to ``target``:``dport``
        (``scope_id`` for a link-local IPv6 target) without the engine, until
        :meth:`clear_fast_target`."""
        fam = socket.AF_INET if len(target) == 4 else socket.AF_INET6
        if len(target) != (4 if self.v == 4 else 16) or len(dst) != len(target):
            raise ValueError("target and destination must be addresses of the flow's family")
        if not 0 <= dport <= 65535:
            raise ValueError("port out of range")
        host = socket.inet_ntop(fam, bytes(target))
        self.fast_sa = (host, dport) if fam == socket.AF_INET else (host, dport, 0, scope_id)
        self.fast_dst = bytes(dst)
        self.fast_dport = dport

    def clear_fast_target(self) -> None:
        self.fast_dst, self.fast_dport, self.fast_sa = None, -1, None


def window_to_guest(c: Any, sndbuf: int, queued: int, frame_payload: int = 0) -> int:
    """The window we advertise, scaled: the host socket's free send space.

    ``sndbuf`` and ``queued`` are SO_MEMINFO's sndbuf and wmem_queued (the
    kernel's own accounting, truesize included); a quarter is kept back for skb
    overhead so that what the guest is promised is (almost) always accepted by
    ``send()``. At most WND_FRAMES frames are in flight: the guest's tap/NIC
    queue (1000 frames by default) must not overflow when several flows are busy;
    a frame carries ``frame_payload`` bytes (the MSS, or 64 KiB when the guest's
    segments are offloaded).
    """
    free = (sndbuf - queued) * 3 // 4 - c.held_bytes
    if not c.events & ESTABLISHED:
        free = max(free, WINDOW_DEFAULT)
    free = max(0, min(free, MAX_WINDOW, WND_FRAMES * max(c.mss, frame_payload)))
    return min(free >> c.ws_to_tap, 0xFFFF)


FP_PEND = 1     # data queued in this call
FP_ACK = 2      # an ACK is due after the batch
FP_PUSH = 4     # a PUSH event is due after the batch
FP_DEFER = 8    # the ACK waits for ``flush_deferred`` (or a data frame that carries it)
DEFER_MAX = 1024  # a request, not a bulk segment: at most this much to defer its ACK
SO_RCVLOWAT = 18
FIONREAD = 0x541B

# what ``push`` leaves to the engine (``push_flags``)
PUSH_INFLIGHT = 1   # data went out: the connection has data in flight (RTO scan)
PUSH_READ = 2       # read the socket (its low-water mark is set)
PUSH_NOREAD = 4     # stop reading it (the guest's window is full, or the mark is capped)
MAX_BURST = 256


class FastPath:
    """The fast path over one flow table (see the module docstring).

    ``attach(idx, flow)`` / ``detach(idx)`` keep the flow object of each flow
    index (the registry does it); forwarded UDP ports, which are not flows, are
    ``set_forwarded(v, port, flow_or_None)``. ``run`` handles frames of a batch
    until one needs Python (``slow``) or the batch ends; ``finish`` builds the
    ACKs and queues the PUSH events."""

    def __init__(self, table: Any, counters: dict | None = None) -> None:
        self.table = table
        self.capacity = table.capacity
        self.objs: dict[int, Any] = {}
        self.fwd: dict[tuple[int, int], Any] = {}
        self.guest_mac = b"\xff" * 6
        self.our_mac = bytes(6)
        self.frame_payload = 0
        self.events: list[tuple[int, Any, Any]] = []
        self.counters: dict = counters if counters is not None else {}
        self.slow = False
        self.push_flags = 0
        self._pend: list[tuple[Any, list]] = []
        self._acks: list[Any] = []
        self._pushes: list[Any] = []
        self._deferred: list[Any] = []
        self._ugroup: list[Any] = []      # payloads of the current group
        self._udp_flow: Any = None
        self._stop = False
        self._niov = 0
        self._n_tcp = self._n_udp = self._n_udp_sent = self._n_udp_err = 0
        self.discard = memoryview(mmap.mmap(-1, DISCARD, mmap.MAP_PRIVATE))

    # -- flows ---------------------------------------------------------------
    def attach(self, idx: int, flow: Any) -> None:
        if not 0 <= idx < self.capacity:
            raise IndexError(f"flow index {idx} out of range")
        self.objs[idx] = flow

    def detach(self, idx: int) -> None:
        if 0 <= idx < self.capacity:
            self.objs.pop(idx, None)

    def set_forwarded(self, v: int, port: int, flow: Any) -> None:
        if v not in (4, 6) or not 0 <= port <= 65535:
            raise ValueError("bad forwarded UDP port")
        if flow is None:
            self.fwd.pop((v, port), None)
        else:
            self.fwd[(v, port)] = flow

    # -- the batch -------------------------------------------------------------
    def run(self, buf: Any, offsets: Any, lengths: Any, start: int, count: int,
            now: float) -> int:
        """Handle frames ``start..`` until one needs Python: returns its index
        (``slow`` True) or ``count``; may return early after an event (``slow``
        False). Everything queued has been written when it returns."""
        self.slow = False
        self._stop = False
        i = start
        view = memoryview(buf)
        try:
            while i < count:
                off, n = offsets[i], lengths[i]
                if off < 0 or n < 0 or off + n > len(view):
                    self.slow = True
                    break
                if not self._frame(view, off, n, now):
                    self.slow = True
                    break
                i += 1
                if self._stop:
                    break
            self._flush_all()
        finally:
            view.release()
        self._add_counts()
        return i

    def _frame(self, view: memoryview, off: int, n: int, now: float) -> bool:
        if n < 14 or view[off + 6:off + 12] != self.guest_mac:
            return False
        try:
            info = _headers.parse_frame(view, off, n)
        except _headers.ParseError:
            return False
        if info.vlan >= 0 or info.is_fragment or info.ip_version == 0:
            return False
        if info.l4_proto == 6:
            return self._tcp(view, info, now)
        if info.l4_proto == 17:
            return self._udp(view, info, now)
        return False

    def _tcp(self, view: memoryview, info: Any, now: float) -> bool:
        flags = info.tcp_flags
        if flags & (SYN | FIN | RST | URG) or not flags & ACK:
            return False
        if info.payload_offset - info.l4_offset != 20:
            return False
        idx = self.table.lookup(6, 0, info.src, info.sport, info.dst, info.dport)
        if idx < 0:
            return False
        c = self.objs.get(idx)
        if (type(c) is not TcpConn or c.events != ESTABLISHED or c.sock is None
                or c.held is not None or c.pend_bytes or c.writing or c.recover >= 0
                or c.fin_seq >= 0):
            return False
        plen = info.payload_len
        if plen and self._niov == MAXIOV:
            return False
        if seq_diff(info.tcp_seq, (c.seq_from_tap + c.fp_pending) & M32) != 0:
            return False  # out of order, old, a keep-alive probe: Python decides
        ack = info.tcp_ack
        wnd = min(info.tcp_window << c.ws_from_tap, MAX_WINDOW)
        acked = seq_diff(ack, c.seq_ack_from_tap)
        sent = seq_diff(c.seq_to_tap, c.seq_ack_from_tap)
        if 0 < acked <= sent:
            c.seq_ack_from_tap = ack
            c.retries = 0
            c.dupacks = 0
            c.wnd_from_tap = wnd
            c.last_progress = now
            if not self._consume(c, acked):
                self.events.append((EV_RESET, c, None))
                self._stop = True
                self._n_tcp += 1
                return True
            self._acked(c)
        elif acked == 0:
            if sent > 0 and plen == 0:
                return False  # duplicate ACK: counted towards a fast retransmit by Python
            if wnd > c.wnd_from_tap and not c.reading:
                self._want_push(c)
            c.wnd_from_tap = wnd
        if plen:
            po = info.payload_offset
            if not c.fp_flags & FP_PEND:
                c.fp_flags |= FP_PEND
                self._pend.append((c, []))
            for pc, iov in reversed(self._pend):
                if pc is c:
                    iov.append(view[po:po + plen])
                    break
            c.fp_pending += plen
            c.fp_batch += plen
            self._niov += 1
            if not c.fp_flags & FP_ACK:
                c.fp_flags |= FP_ACK
                self._acks.append(c)
            if c.fp_pending >= FLUSH_BYTES:
                self._flush_conn(c, iov)
        c.last_activity = now
        if now - c.touched >= 1.0 or c.touched_timeout != ACT_TIMEOUT:
            c.touched, c.touched_timeout = now, ACT_TIMEOUT
            self.table.touch(idx, now - (REFERENCE - ACT_TIMEOUT))
        self._n_tcp += 1
        return True

    def _acked(self, c: Any) -> None:
        """New data acknowledged. While the engine reads the socket, only its
        low-water mark moves (it becomes readable for data the guest has not
        been sent, ``TcpEngine._set_lowat``); a connection that stopped reading
        (the window was full) gets a PUSH."""
        if c.reading and c.peekoff:
            if self._lowat(c, seq_diff(c.seq_to_tap, c.seq_ack_from_tap) + 1):
                return
        self._want_push(c)

    def _want_push(self, c: Any) -> None:
        if not c.fp_flags & FP_PUSH:
            c.fp_flags |= FP_PUSH
            self._pushes.append(c)

    def _consume(self, c: Any, n: int) -> bool:
        """Drop n acknowledged bytes from the socket's receive queue (no copy)."""
        for _ in range(n // DISCARD + 2):
            if n <= 0:
                break
            try:
                k = c.sock.recv_into(self.discard, min(n, DISCARD), MSG_DISCARD)
            except BlockingIOError:
                break
            except OSError:
                return False
            if k <= 0:
                break
            n -= k
        return True

    def _flush_tcp(self) -> None:
        pend, self._pend = self._pend, []
        self._niov = 0
        for c, iov in pend:
            self._flush_conn(c, iov)

    def _flush_conn(self, c: Any, iov: list) -> None:
        """One sendmsg() of what is queued for ``c``; its iovecs are then spent."""
        if not iov:
            return   # flushed already (a flow can be queued more than once per call)
        c.fp_flags &= ~FP_PEND
        total, c.fp_pending = c.fp_pending, 0
        data, iov[:] = list(iov), []
        try:
            written = c.sock.sendmsg(data, (), MSG_OUT)
        except BlockingIOError:
            written = 0
        except BrokenPipeError:
            written = total
        except OSError:
            self.events.append((EV_RESET, c, None))
            self._stop = True
            return
        c.seq_from_tap = (c.seq_from_tap + written) & M32
        if written < total:
            tail = b"".join(bytes(v) for v in data)[written:]
            self.events.append((EV_HOLD, c, tail))
            self._stop = True

    def _udp(self, view: memoryview, info: Any, now: float) -> bool:
        v = info.ip_version
        dport = info.dport
        if (v == 4 and dport == 67) or (v == 6 and dport == 547):
            return False
        f = self.fwd.get((v, info.sport))
        idx = -1
        if f is None:
            any_ = bytes(4 if v == 4 else 16)
            idx = self.table.lookup(17, 0, any_, info.sport, any_, 0)
            if idx < 0:
                return False
            f = self.objs.get(idx)
        if (type(f) is not UdpFlow or f.sock is None or f.fast_sa is None
                or f.fast_dport != dport or f.fast_dst != info.dst or f.gaddr != info.src):
            return False
        if idx >= 0:
            self.table.touch(idx, now - (REFERENCE - UDP_TIMEOUT))
        if self._udp_flow is not f:
            self._flush_udp()
            self._udp_flow = f
        po = info.payload_offset
        self._ugroup.append(view[po:po + info.payload_len])
        if len(self._ugroup) == UDP_GROUP:
            self._flush_udp()
        self._n_udp += 1
        return True

    def _flush_udp(self) -> None:
        f, group = self._udp_flow, self._ugroup
        self._udp_flow, self._ugroup = None, []
        for payload in group:   # the twin: one sendto() each; the kernel: sendmmsg()
            try:
                f.sock.sendto(payload, f.fast_sa)
                self._n_udp_sent += 1
            except OSError:
                self._n_udp_err += 1

    def _flush_all(self) -> None:
        self._flush_tcp()
        if self._udp_flow is not None:
            self._flush_udp()

    def _add_counts(self) -> None:
        d = self.counters
        for name, n in (("fastpath_tcp", self._n_tcp), ("fastpath_udp", self._n_udp),
                        ("udp_to_host", self._n_udp_sent),
                        ("drop.udp-send-error", self._n_udp_err)):
            if n:
                d[name] = d.get(name, 0) + n
        self._n_tcp = self._n_udp = self._n_udp_sent = self._n_udp_err = 0

    def finish(self, txbuf: Any, first: int, stride: int, nslots: int, out: Any) -> int:
        """After the batch: the ACKs due, built into slots ``first + k * stride`` (at
        most ``nslots``; their lengths in ``out``): how many. Call again while it
        returns ``nslots``. When no ACK is left, the PUSH events are queued.

        A flow that got less than one MSS in the batch, and at most DEFER_MAX
        bytes (a request, typically, not the tail of a bulk write) is not
        acknowledged now: its ACK is deferred (``deferred``, then
        ``flush_deferred``), and the reply's first frame usually carries it."""
        k = 0
        acks = self._acks
        taken = 0
        for c in acks:
            if k == nslots:
                break
            taken += 1
            c.fp_flags &= ~FP_ACK
            small, c.fp_batch = c.fp_batch < c.mss and c.fp_batch <= DEFER_MAX, 0
            if c.sock is None or c.events & CLOSED or c.ack_due:
                continue  # gone, or the engine's own ACK is queued and covers it
            if c.held is not None:
                self.events.append((EV_ACK, c, None))
                continue
            if small:
                if not c.fp_flags & FP_DEFER:
                    c.fp_flags |= FP_DEFER
                    self._deferred.append(c)
                continue
            out[k] = self._ack(txbuf, first + k * stride, c)
            k += 1
        del acks[:taken]
        if not acks:
            pushes, self._pushes = self._pushes, []
            for c in pushes:
                c.fp_flags &= ~FP_PUSH
                if c.sock is not None and not c.events & CLOSED:
                    self.events.append((EV_PUSH, c, None))
        return k

    @property
    def deferred(self) -> int:
        """Flows whose ACK waits for ``flush_deferred``."""
        return len(self._deferred)

    def flush_deferred(self, txbuf: Any, first: int, stride: int, nslots: int, out: Any) -> int:
        """The deferred ACKs not carried by a frame since (``ack_sent``), like ``finish``."""
        k = 0
        taken = 0
        for c in self._deferred:
            if k == nslots:
                break
            taken += 1
            c.fp_flags &= ~FP_DEFER
            if c.sock is None or c.events & CLOSED or c.ack_due or c.ack_sent == c.seq_from_tap:
                continue
            if c.held is not None:
                self.events.append((EV_ACK, c, None))
                continue
            out[k] = self._ack(txbuf, first + k * stride, c)
            k += 1
        del self._deferred[:taken]
        return k

    def _ack(self, txbuf: Any, off: int, c: Any) -> int:
        wnd = self._window(c)
        c.last_wnd = wnd
        if not wnd and not c.writing:
            self.events.append((EV_WINDOW, c, None))
        c.ack_sent = c.seq_from_tap
        return _headers.build_tcp(txbuf, off, self.guest_mac, self.our_mac, c.raddr, c.gaddr,
                                  c.rport, c.gport, c.seq_to_tap, c.seq_from_tap, ACK, wnd, 0)

    # -- host -> guest -------------------------------------------------------------
    def push(self, c: Any, woken: bool, txbuf: Any, first: int, stride: int, nslots: int,
             seg: int, now: float, out: Any) -> int:
        """Host data the guest has not seen, within its window, peeked from the socket
        straight into slots as segments of ``seg`` bytes (``TcpEngine._push``, its
        common case): the number of frames built (their lengths in ``out``, to
        commit with ``gso_size = c.mss``), or -1 when the engine must decide (a
        state other than plain ESTABLISHED, a full window, EOF, an error, nothing
        queued). ``push_flags`` says what the engine does next (PUSH_*)."""
        self.push_flags = 0
        if type(c) is not TcpConn:
            raise TypeError("push() needs a TcpConn")
        if (c.events != ESTABLISHED or not c.peekoff
                or c.sock is None or seg <= 0 or nslots <= 0):
            return -1
        want = self._want(c, woken)
        if want <= 0:
            return want
        outstanding = seq_diff(c.seq_to_tap, c.seq_ack_from_tap)
        hl = 54 if len(c.raddr) == 4 else 74
        if seg + hl > stride:
            raise ValueError("a segment does not fit in its slot")
        nslots = min(nslots, MAX_BURST)
        count = min(nslots, (want + seg - 1) // seg)
        want = min(want, count * seg)
        view = memoryview(txbuf)
        iov = []
        for k in range(count):
            base = first + k * stride + hl
            iov.append(view[base:base + min(seg, want - k * seg)])
        try:
            got = c.sock.recvmsg_into(iov, 0, int(socket.MSG_PEEK | socket.MSG_DONTWAIT))[0]
        except OSError:
            return -1
        if got <= 0:
            return -1
        count = (got + seg - 1) // seg
        wnd = self._window(c)
        seq = c.seq_to_tap
        for k in range(count):
            plen = min(seg, got - k * seg)
            out[k] = _headers.build_tcp(txbuf, first + k * stride, self.guest_mac, self.our_mac,
                                        c.raddr, c.gaddr, c.rport, c.gport, seq, c.seq_from_tap,
                                        ACK, wnd, plen)
            seq = (seq + plen) & M32
        return self._pushed(c, seq, got, outstanding, wnd, now, count)

    def push_vq(self, c: Any, woken: bool, q: Any, mergeable: bool, gso: int, hdr_len: int,
                seg: int, now: float, out: Any) -> int:
        """push() with the guest's receive buffers as the slots (vhost-user): up to
        ``len(out)`` frames reserved in virtqueue ``q`` (``rx_reserve``), the host
        data peeked straight into them behind room for a ``hdr_len``-byte
        virtio-net header and the frame's headers, which are written in place
        (with ``gso``, the guest's MSS, a frame of more than one segment gets
        NEEDS_CSUM and GSO_TCPV4/6 instead of a payload checksum), and the frames
        handed to the guest (``rx_finish``): the number delivered (lengths in
        ``out``, header excluded), -1 as push() (or when the guest's buffers do
        not fit: the slot path decides), or -2 when the guest has no receive
        buffer at all (the caller waits for its kick; nothing is lost)."""
        self.push_flags = 0
        if type(c) is not TcpConn:
            raise TypeError("push_vq() needs a TcpConn")
        if (c.events != ESTABLISHED or not c.peekoff or c.sock is None
                or seg <= 0 or hdr_len < 10 or len(out) < 1):
            return -1
        want = self._want(c, woken)
        if want <= 0:
            return want
        outstanding = seq_diff(c.seq_to_tap, c.seq_ack_from_tap)
        hl = 54 if len(c.raddr) == 4 else 74
        count = min(RV_MAX_FRAMES, len(out), (want + seg - 1) // seg)
        n = q.rx_reserve(count, hdr_len + hl + seg, hdr_len + max(hl, ETH_ZLEN), mergeable)
        if n <= 0:
            if q.pending():
                return -1   # buffers there but not for us (small, malformed): slot path
            # none at all: publish how far we got (EVENT_IDX: the guest kicks for the
            # next buffer), look once more, else the caller waits for a kick
            q.rx_finish(0, out, hdr_len)
            if not q.pending():
                return -2
            n = q.rx_reserve(count, hdr_len + hl + seg, hdr_len + max(hl, ETH_ZLEN), mergeable)
            if n <= 0:
                return -1
        count = n
        iov: list[memoryview] = []
        per_frame: list[list[memoryview]] = []
        ends: list[int] = []    # where each frame's payload ends in the peeked data
        planned = 0
        for k in range(count):
            left = min(seg, q.rx_capacity(k) - hdr_len - hl, want - planned)
            planned += left
            ends.append(planned)
            views = []
            for j, b in enumerate(q.rx_buffers(k)):
                if left <= 0 or len(iov) >= RV_MAX_SEG:
                    break
                v = b[hdr_len + hl:] if j == 0 else b
                v = v[:left]
                if len(v):
                    views.append(v)
                    left -= len(v)
            iov += views
            per_frame.append(views)
        try:
            got = c.sock.recvmsg_into(iov, 0, int(socket.MSG_PEEK | socket.MSG_DONTWAIT))[0]
        except OSError:
            got = 0
        if got <= 0:
            q.rx_finish(0, out, hdr_len)
            return -1
        count = 1
        while count < n and ends[count - 1] < got:
            count += 1
        wnd = self._window(c)
        seq = c.seq_to_tap
        for k in range(count):
            plen = min(ends[k], got) - (ends[k - 1] if k else 0)
            frame = bytearray(hl) + b"".join(per_frame[k])[:plen]
            out[k] = _headers.build_tcp(frame, 0, self.guest_mac, self.our_mac, c.raddr, c.gaddr,
                                        c.rport, c.gport, seq, c.seq_from_tap, ACK, wnd, plen)
            h = q.rx_buffers(k)[0]
            vnet = bytes(10)
            if gso > 0 and plen > gso:
                # the receiver segments at the MSS and completes the checksum
                pseudo = (_csum.pseudo_sum_v4 if hl == 54 else _csum.pseudo_sum_v6)(
                    c.raddr, c.gaddr, 6, 20 + plen)
                struct.pack_into("!H", frame, hl - 4, pseudo)
                vnet = struct.pack("<BBHHHH", 1, 1 if hl == 54 else 4, hl, gso, hl - 20, 16)
            h[:10] = vnet
            h[hdr_len:hdr_len + hl] = frame[:hl]
            seq = (seq + plen) & M32
        q.rx_finish(count, out, hdr_len)
        return self._pushed(c, seq, got, outstanding, wnd, now, count)

    def _want(self, c: Any, woken: bool) -> int:
        """push()'s first question: the bytes the guest may be sent now (> 0), or
        0 (nothing new, the low-water mark follows what is outstanding) or -1 (the
        engine decides: a shut window, EOF, a wake-up with nothing new, an error)."""
        outstanding = seq_diff(c.seq_to_tap, c.seq_ack_from_tap)
        avail = c.wnd_from_tap - outstanding
        if avail <= 0:
            return -1
        # the window opened again (the engine forgets a stalled connection lazily)
        c.stalled_since = 0.0
        try:
            queued = struct.unpack("i", fcntl.ioctl(c.fd, FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return -1
        if queued <= outstanding:
            if not c.reading or woken:
                return -1   # EOF, or a wake-up with nothing new: the engine reads it
            return 0 if self._lowat(c, outstanding + 1) else -1
        return min(avail, queued - outstanding)

    def _window(self, c: Any) -> int:
        """The window to advertise to the guest, from the socket's send buffer."""
        try:
            mi = struct.unpack_from("9I", c.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))
            return window_to_guest(c, mi[3], mi[5], self.frame_payload)
        except OSError:
            return window_to_guest(c, WINDOW_DEFAULT * 4 // 3, 0, self.frame_payload)

    def _pushed(self, c: Any, seq: int, got: int, outstanding: int, wnd: int, now: float,
                count: int) -> int:
        """After a burst of ``count`` frames (``got`` bytes, up to ``seq``): the
        connection's state, the low-water mark and ``push_flags``; ``count``."""
        c.last_wnd = wnd
        c.ack_sent = c.seq_from_tap
        if not outstanding:
            c.last_progress = now
        c.seq_to_tap = seq
        outstanding += got
        flags = PUSH_INFLIGHT
        if c.wnd_from_tap - outstanding <= 0:
            flags |= PUSH_NOREAD
        else:
            flags |= PUSH_READ if self._lowat(c, outstanding + 1) else PUSH_NOREAD
        self.push_flags = flags
        d = self.counters
        d["tcp_segments_to_guest"] = d.get("tcp_segments_to_guest", 0) + count
        return count

    def _lowat(self, c: Any, lowat: int) -> bool:
        """SO_RCVLOWAT = ``lowat`` (``TcpEngine._set_lowat``); False past the cap."""
        if lowat > c.lowat_cap:
            return False
        if lowat != c.lowat:
            try:
                c.sock.setsockopt(socket.SOL_SOCKET, SO_RCVLOWAT, lowat)
                c.lowat = lowat
            except OSError:
                pass
        return True

    def stats(self) -> dict[str, int]:
        return {"attached": len(self.objs), "forwarded": len(self.fwd)}


# -- frame I/O on a descriptor that keeps frame boundaries (a tap) -------------------

class IoResult:
    """What ``read_frames``/``write_frames`` did: frames, bytes (without headroom),
    runts (reads shorter than an Ethernet header), gso (reads whose virtio-net
    header announces a segment beyond the MTU), failed (writes the device refused:
    full or an error), error (the errno of a read error that ends the device, else 0) and
    drained (the read stopped at EAGAIN)."""

    __slots__ = ("frames", "nbytes", "runts", "gso", "failed", "error", "drained")

    def __init__(self) -> None:
        self.frames = self.nbytes = self.runts = self.gso = self.failed = self.error = 0
        self.drained = False


def read_frames(fd: int, buf: Any, stride: int, headroom: int, max_frames: int,
                offsets: Any, lengths: Any, res: IoResult) -> int:
    """Read up to ``max_frames`` frames from ``fd`` (one ``read`` each) into
    ``buf`` at ``k * stride``; frame ``k`` is at ``offsets[k]`` (after
    ``headroom`` bytes: a virtio-net header), ``lengths[k]`` long. Runts are
    skipped and counted. The number of frames; ``res`` says the rest."""
    view = memoryview(buf)
    res.frames = res.nbytes = res.runts = res.gso = res.error = 0
    res.drained = False
    count = 0
    for _ in range(max_frames + 64):   # bounded: runts take no slot
        if count >= max_frames or count >= len(offsets):
            break
        slot = view[count * stride:(count + 1) * stride]
        try:
            n = os.readv(fd, (slot,)) - headroom
        except (BlockingIOError, InterruptedError):
            res.drained = True
            break
        except OSError as exc:
            res.error = exc.errno or -1
            break
        if n < 14:
            res.runts += 1
            continue
        if headroom and slot[1]:
            res.gso += 1
        offsets[count] = count * stride + headroom
        lengths[count] = n
        res.nbytes += n
        count += 1
    res.frames = count
    return count


def write_frames(fd: int, buf: Any, first: int, stride: int, lengths: Any, count: int,
                 headroom: int, res: IoResult) -> int:
    """Write ``count`` frames (frame ``k``: ``lengths[k]`` bytes at ``first + k *
    stride``, with the ``headroom`` bytes before it) with one ``write`` each: the
    number written; refused ones are counted in ``res.failed``."""
    view = memoryview(buf)
    res.frames = res.nbytes = res.failed = 0
    for k in range(count):
        base = first + k * stride
        n = lengths[k]
        try:
            os.write(fd, view[base - headroom:base + n])
        except OSError:
            res.failed += 1
            continue
        res.frames += 1
        res.nbytes += n
    return res.frames
