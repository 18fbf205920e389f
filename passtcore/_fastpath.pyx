# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The data-plane fast path, Cython kernel.

Same classes, methods and results as the pure twin ``passtcore_py.fastpath``,
whose docstring explains what is handled here and what goes back to Python.
Here:

* flow state is ``cdef class`` es with typed fields (``TcpConn``, ``UdpFlow``);
  the Python engines use the same objects through their attributes;
* flows are found from C: the frame is parsed by the nogil parser of
  ``_kern.pxd`` into a C struct, its 5-tuple becomes a flow-table key and the
  table (cimported from ``_flowtable.pxd``) is probed inline; the flow object
  is a C array entry indexed by the flow index (a strong reference);
* in-order TCP payload is queued as ``iovec`` s pointing into the front end's
  read buffer and leaves with one ``sendmsg()`` per flow, consumed ACKs with
  ``recv(MSG_TRUNC)``, UDP datagrams of one flow with one ``sendmmsg()``;
* the after-batch ACKs are built in place in the front end's TX slots.

No Python object is created per frame; the GIL is held throughout (the flow
objects are shared with the Python engines).
"""
cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.errno cimport EAGAIN, EINTR, EPIPE, errno
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset
from posix.mman cimport MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, PROT_READ, PROT_WRITE, mmap, munmap
from posix.uio cimport iovec

from passtcore._flowtable cimport FlowKey, FlowTable, key_fill
from passtcore._virtq cimport RV_MAX_FRAMES, RV_MAX_SEG, Virtqueue
from passtcore._kern cimport PInfo, p_frame, pc_csum, pc_fold, pc_store16, pc_store32, wbuf

import socket as _socket
import struct as _struct

# the twin's constants and helpers: one definition of each
from passtcore_py.fastpath import (ACT_TIMEOUT, EV_ACK, EV_HOLD, EV_PUSH, EV_RESET, EV_WINDOW,
                                   FIN_TIMEOUT, PUSH_INFLIGHT, PUSH_NOREAD, PUSH_READ,
                                   SYN_TIMEOUT, UDP_TIMEOUT, window_to_guest)

__all__ = [
    "TcpConn", "UdpFlow", "FastPath", "EV_PUSH", "EV_HOLD", "EV_RESET", "EV_ACK",
    "PUSH_INFLIGHT", "PUSH_READ", "PUSH_NOREAD", "window_to_guest", "read_frames",
    "write_frames", "IoResult",
]

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void* buf, size_t n)
    ssize_t write(int fd, const void* buf, size_t n)

cdef inline void pc_put16le(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = v >> 8


cdef extern from "<sys/ioctl.h>" nogil:
    int ioctl(int fd, unsigned long request, ...)

cdef extern from "<sys/socket.h>" nogil:
    enum:
        MSG_PEEK


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    cdef struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    cdef struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    ssize_t sendmsg(int fd, const msghdr* msg, int flags)
    int sendmmsg(int fd, mmsghdr* msgvec, unsigned int vlen, int flags)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    ssize_t recvmsg(int fd, msghdr* msg, int flags)
    int getsockopt(int fd, int level, int name, void* val, socklen_t* optlen)
    int setsockopt(int fd, int level, int name, const void* val, socklen_t optlen)
    enum:
        MSG_DONTWAIT
        MSG_NOSIGNAL
        MSG_TRUNC
        SOL_SOCKET


cdef enum:
    F_FIN = 0x01
    F_SYN = 0x02
    F_RST = 0x04
    F_ACK = 0x10
    F_URG = 0x20
    ESTABLISHED = 0x004
    CLOSED = 0x200
    FP_PEND = 1
    FP_ACK = 2
    FP_PUSH = 4
    FP_DEFER = 8
    DEFER_MAX = 1024       # a request, not a bulk segment: at most this much to defer its ACK
    SO_RCVLOWAT = 18
    FIONREAD = 0x541B
    C_PUSH_INFLIGHT = 1
    C_PUSH_READ = 2
    C_PUSH_NOREAD = 4
    MAX_BURST = 256
    ETH_ZLEN = 60
    MAXIOV = 1024          # queued TCP payloads per call (a frame beyond goes to Python)
    FLUSH_BYTES = 32768    # a flow's queue leaves at once past this: the host side keeps
                           # working (another core) while the rest of the batch is read
    UDP_GROUP = 64         # datagrams per sendmmsg()
    SO_MEMINFO = 55
    WINDOW_DEFAULT = 14600
    MAX_WINDOW = 1 << 24
    WND_FRAMES = 128
    ACK_FRAME_MAX = 74     # Ethernet + IPv6 + TCP, no options
    EINTR_RETRIES = 8

cdef long long M32 = 0xFFFFFFFF
cdef double REFERENCE = <double>(1 << 20)
cdef size_t DISCARD = 1 << 24
cdef double C_ACT_TIMEOUT = ACT_TIMEOUT
cdef double C_UDP_TIMEOUT = UDP_TIMEOUT


cdef inline long long seq_diff(long long a, long long b) noexcept nogil:
    return ((a - b + 0x80000000LL) & 0xFFFFFFFFLL) - 0x80000000LL


cdef inline void put16(uint8_t* d, const uint8_t* a, int alen) noexcept nogil:
    """An address as the flow table's 16-byte key form (IPv4 -> ::ffff:a.b.c.d)."""
    if alen == 16:
        memcpy(d, a, 16)
    else:
        memset(d, 0, 10)
        d[10] = 0xFF
        d[11] = 0xFF
        memcpy(d + 12, a, 4)


cdef inline bint bytes_eq(object o, const uint8_t* p, int n):
    """``o`` is a bytes object equal to p[0..n)."""
    return (type(o) is bytes and PyBytes_GET_SIZE(o) == n
            and memcmp(PyBytes_AS_STRING(o), p, n) == 0)


@cython.final
cdef class TcpConn:
    """State of one translated TCP connection (see ``run/tcp/state.py``). It holds
    no payload of its own: the host socket is the retransmission store; only
    guest data the socket cannot take yet is kept (``held``, ``pend``: bounded)."""

    cdef public long long idx, fd, v, gport, rport, events
    cdef public long long seq_to_tap, seq_ack_from_tap, seq_from_tap, isn, guest_isn
    cdef public long long wnd_from_tap, ws_from_tap, ws_to_tap, mss, lowat, dupacks, retries
    cdef public long long last_wnd, fin_seq, held_bytes, recover, lowat_cap, pend_bytes
    cdef public long long sack_recent, rexmit_hi, fp_pending, fp_flags, fp_batch, ack_sent
    cdef public bint reading, writing, peekoff, ack_due, sack
    cdef public double last_progress, last_activity, created, stalled_since
    cdef public double touched, touched_timeout
    cdef public object sock, gaddr, raddr, held, pend

    def __init__(self):
        self.idx = -1
        self.sock = None
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
        self.held = None
        self.held_bytes = 0
        self.recover = -1
        self.ack_due = False
        self.pend = []
        self.pend_bytes = 0
        self.sack = False
        self.sack_recent = -1
        self.rexmit_hi = -1
        self.ws_to_tap = 0
        self.ws_from_tap = 0
        self.wnd_from_tap = WINDOW_DEFAULT
        self.mss = 536
        self.seq_from_tap = 0
        self.seq_to_tap = 0
        self.seq_ack_from_tap = 0
        self.isn = 0
        self.guest_isn = 0
        self.peekoff = False
        self.lowat_cap = 1 << 20
        self.created = self.last_activity = self.last_progress = 0.0
        self.touched = 0.0
        self.touched_timeout = 0.0
        self.fp_pending = 0
        self.fp_flags = 0
        self.fp_batch = 0
        self.ack_sent = -1

    def flow_timeout(self):
        """The idle deadline for this state: handshake, closing or established."""
        cdef long long ev = self.events
        if not ev & ESTABLISHED:
            return SYN_TIMEOUT
        if ev & 0x020 and ev & 0x100:      # SOCK_FIN_SENT and TAP_FIN_ACKED
            return FIN_TIMEOUT
        return ACT_TIMEOUT


@cython.final
cdef class UdpFlow:
    """One host socket serving one guest port of one family (``run/udp``)."""

    cdef public object sock, gaddr, mapped, fast_dst, fast_sa
    cdef public long long fd, v, gport, idx, fast_dport
    cdef public bint forwarded

    def __init__(self, sock, v, gport, forwarded):
        self.sock = sock
        self.fd = sock.fileno()
        self.v = v
        self.gport = gport
        self.gaddr = None
        self.forwarded = forwarded
        self.idx = -1
        self.mapped = {}
        self.fast_dst = None
        self.fast_dport = -1
        self.fast_sa = None

    def set_fast_target(self, dst, int dport, target, int scope_id=0):
        """Datagrams the guest sends to ``dst``:``dport`` go to ``target``:``dport``
        (``scope_id`` for a link-local IPv6 target) without the engine, until
        :meth:`clear_fast_target`."""
        target = bytes(target)
        dst = bytes(dst)
        if len(target) != (4 if self.v == 4 else 16) or len(dst) != len(target):
            raise ValueError("target and destination must be addresses of the flow's family")
        if not 0 <= dport <= 65535:
            raise ValueError("port out of range")
        if len(target) == 4:   # struct sockaddr_in
            sa = (_struct.pack("=H", _socket.AF_INET) + _struct.pack("!H", dport) + target
                  + bytes(8))
        else:                  # struct sockaddr_in6
            sa = (_struct.pack("=H", _socket.AF_INET6) + _struct.pack("!HI", dport, 0) + target
                  + _struct.pack("=I", scope_id))
        self.fast_sa = sa
        self.fast_dst = dst
        self.fast_dport = dport

    def clear_fast_target(self):
        self.fast_dst = None
        self.fast_dport = -1
        self.fast_sa = None


cdef inline long long c_window(TcpConn c, long long sndbuf, long long queued,
                               long long frame_payload) noexcept:
    """state.window_to_guest (the twin's), for an ESTABLISHED connection."""
    cdef long long free_ = ((sndbuf - queued) * 3 >> 2) - c.held_bytes   # >> 2: floor, as //
    cdef long long cap = WND_FRAMES * (c.mss if c.mss > frame_payload else frame_payload)
    if not c.events & ESTABLISHED and free_ < WINDOW_DEFAULT:
        free_ = WINDOW_DEFAULT
    if free_ > MAX_WINDOW:
        free_ = MAX_WINDOW
    if free_ > cap:
        free_ = cap
    if free_ < 0:
        free_ = 0
    free_ >>= c.ws_to_tap
    return free_ if free_ < 0xFFFF else 0xFFFF


@cython.final
cdef class FastPath:
    """The fast path over one flow table (see the twin's docstring).

    ``attach(idx, flow)`` / ``detach(idx)`` keep the flow object of each flow
    index (the registry does it); forwarded UDP ports, which are not flows, are
    ``set_forwarded(v, port, flow_or_None)``. ``run`` handles frames of a batch
    until one needs Python (``slow``) or the batch ends; ``finish`` builds the
    ACKs and queues the PUSH events."""

    cdef FlowTable table
    cdef Py_ssize_t _capacity
    cdef PyObject** _objs          # by flow index: strong references
    cdef PyObject** _fwd           # [family][guest port]: forwarded UDP flows
    cdef Py_ssize_t _nobjs, _nfwd
    cdef uint8_t _gmac[6]
    cdef uint8_t _omac[6]
    cdef public long long frame_payload
    cdef public list events
    cdef public dict counters
    cdef public bint slow
    cdef public int push_flags
    cdef bint _stop
    cdef uint8_t* _discard
    # TCP payload queued in this call
    cdef iovec _iov[MAXIOV]
    cdef PyObject* _iov_owner[MAXIOV]   # borrowed: the owner is in _pend
    cdef Py_ssize_t _niov
    cdef list _pend, _acks, _pushes, _deferred
    # the UDP group being built
    cdef mmsghdr _msgs[UDP_GROUP]
    cdef iovec _uiov[UDP_GROUP]
    cdef Py_ssize_t _nudp
    cdef object _udp_flow
    cdef long long _n_tcp, _n_udp, _n_udp_sent, _n_udp_err

    def __cinit__(self, FlowTable table not None, dict counters=None):
        self.table = table
        self._capacity = table._capacity
        self._objs = <PyObject**>calloc(<size_t>self._capacity + 1, sizeof(PyObject*))
        self._fwd = <PyObject**>calloc(2 * 65536, sizeof(PyObject*))
        if self._objs == NULL or self._fwd == NULL:
            raise MemoryError("fast path tables")
        self._discard = <uint8_t*>mmap(NULL, DISCARD, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if <void*>self._discard == MAP_FAILED:
            self._discard = NULL
            raise MemoryError("fast path discard area")
        memset(self._gmac, 0xFF, 6)
        memset(self._omac, 0, 6)
        self.events = []
        self.counters = {} if counters is None else counters
        self._pend = []
        self._acks = []
        self._pushes = []
        self._deferred = []
        self._udp_flow = None

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self._objs != NULL:
            for i in range(self._capacity):
                Py_XDECREF(self._objs[i])
            free(self._objs)
        if self._fwd != NULL:
            for i in range(2 * 65536):
                Py_XDECREF(self._fwd[i])
            free(self._fwd)
        if self._discard != NULL:
            munmap(self._discard, DISCARD)

    property table:
        def __get__(self):
            return self.table

    property capacity:
        def __get__(self):
            return self._capacity

    property guest_mac:
        def __get__(self):
            return PyBytes_FromStringAndSize(<const char*>self._gmac, 6)

        def __set__(self, value):
            value = bytes(value)
            if len(value) != 6:
                raise ValueError("a MAC address is 6 bytes")
            memcpy(self._gmac, PyBytes_AS_STRING(value), 6)

    property our_mac:
        def __get__(self):
            return PyBytes_FromStringAndSize(<const char*>self._omac, 6)

        def __set__(self, value):
            value = bytes(value)
            if len(value) != 6:
                raise ValueError("a MAC address is 6 bytes")
            memcpy(self._omac, PyBytes_AS_STRING(value), 6)

    # -- flows ---------------------------------------------------------------
    def attach(self, Py_ssize_t idx, flow):
        if idx < 0 or idx >= self._capacity:
            raise IndexError(f"flow index {idx} out of range")
        Py_INCREF(flow)
        if self._objs[idx] == NULL:
            self._nobjs += 1
        Py_XDECREF(self._objs[idx])
        self._objs[idx] = <PyObject*>flow

    def detach(self, Py_ssize_t idx):
        if 0 <= idx < self._capacity and self._objs[idx] != NULL:
            Py_XDECREF(self._objs[idx])
            self._objs[idx] = NULL
            self._nobjs -= 1

    def set_forwarded(self, int v, int port, flow):
        if (v != 4 and v != 6) or not 0 <= port <= 65535:
            raise ValueError("bad forwarded UDP port")
        cdef Py_ssize_t j = (65536 if v == 6 else 0) + port
        if self._fwd[j] != NULL:
            self._nfwd -= 1
        Py_XDECREF(self._fwd[j])
        self._fwd[j] = NULL
        if flow is not None:
            Py_INCREF(flow)
            self._fwd[j] = <PyObject*>flow
            self._nfwd += 1

    def stats(self):
        return {"attached": self._nobjs, "forwarded": self._nfwd}

    # -- the batch -------------------------------------------------------------
    def run(self, buf, offsets, lengths, Py_ssize_t start, Py_ssize_t count, double now):
        """Handle frames ``start..`` until one needs Python: returns its index
        (``slow`` True) or ``count``; may return early after an event (``slow``
        False). Everything queued has been written when it returns."""
        cdef const int64_t[::1] offs = offsets
        cdef const int64_t[::1] lens = lengths
        cdef Py_buffer v
        cdef Py_ssize_t i = start
        cdef int64_t off, n
        if count > offs.shape[0] or count > lens.shape[0] or start < 0:
            raise ValueError("count exceeds the offsets/lengths arrays")
        PyObject_GetBuffer(buf, &v, PyBUF_SIMPLE)
        self.slow = False
        self._stop = False
        try:
            while i < count:
                off = offs[i]
                n = lens[i]
                if off < 0 or n < 0 or off > v.len - n:
                    self.slow = True
                    break
                if not self._frame(<const uint8_t*>v.buf, off, off + n, now):
                    self.slow = True
                    break
                i += 1
                if self._stop:
                    break
            self._flush_tcp()
            if self._udp_flow is not None:
                self._flush_udp()
        finally:
            PyBuffer_Release(&v)
        self._add_counts()
        return i

    cdef int _frame(self, const uint8_t* b, Py_ssize_t off, Py_ssize_t end, double now) except -1:
        cdef PInfo pi
        if end - off < 14 or memcmp(b + off + 6, self._gmac, 6) != 0:
            return 0
        if p_frame(b, off, end, &pi) != 0:
            return 0
        if pi.vlan >= 0 or pi.is_fragment or pi.ip_version == 0:
            return 0
        if pi.l4_proto == 6:
            return self._tcp(b, &pi, now)
        if pi.l4_proto == 17:
            return self._udp(b, &pi, now)
        return 0

    cdef int _tcp(self, const uint8_t* b, PInfo* pi, double now) except -1:
        cdef int flags = pi.tcp_flags
        cdef FlowKey k
        cdef int32_t idx
        cdef PyObject* o
        cdef TcpConn c
        cdef long long plen, ack, wnd, acked, sent
        if flags & (F_SYN | F_FIN | F_RST | F_URG) or not flags & F_ACK:
            return 0
        if pi.payload_offset - pi.l4_offset != 20:
            return 0
        key_fill(&k, 6, 0, <uint16_t>pi.sport, <uint16_t>pi.dport)
        put16(<uint8_t*>&k + 6, b + pi.addr_off, pi.addr_len)
        put16(<uint8_t*>&k + 22, b + pi.addr_off + pi.addr_len, pi.addr_len)
        idx = self.table._lookup(&k)
        if idx < 0:
            return 0
        o = self._objs[idx]
        if o == NULL or type(<object>o) is not TcpConn:
            return 0
        c = <TcpConn>o
        if (c.events != ESTABLISHED or c.sock is None or c.held is not None or c.pend_bytes
                or c.writing or c.recover >= 0 or c.fin_seq >= 0):
            return 0
        plen = pi.payload_len
        if plen and self._niov == MAXIOV:
            return 0
        if seq_diff(pi.tcp_seq, (c.seq_from_tap + c.fp_pending) & M32) != 0:
            return 0   # out of order, old, a keep-alive probe: Python decides
        ack = pi.tcp_ack
        wnd = (<long long>pi.tcp_window) << c.ws_from_tap
        if wnd > MAX_WINDOW:
            wnd = MAX_WINDOW
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
                return 1
            self._acked(c)
        elif acked == 0:
            if sent > 0 and plen == 0:
                return 0   # duplicate ACK: counted towards a fast retransmit by Python
            if wnd > c.wnd_from_tap and not c.reading:
                self._want_push(c)
            c.wnd_from_tap = wnd
        if plen:
            if not c.fp_flags & FP_PEND:
                c.fp_flags |= FP_PEND
                self._pend.append(c)
            self._iov[self._niov].iov_base = <void*>(b + pi.payload_offset)
            self._iov[self._niov].iov_len = <size_t>plen
            self._iov_owner[self._niov] = <PyObject*>c
            self._niov += 1
            c.fp_pending += plen
            c.fp_batch += plen
            if not c.fp_flags & FP_ACK:
                c.fp_flags |= FP_ACK
                self._acks.append(c)
            if c.fp_pending >= FLUSH_BYTES:
                self._flush_conn(c)
        c.last_activity = now
        if now - c.touched >= 1.0 or c.touched_timeout != C_ACT_TIMEOUT:
            c.touched = now
            c.touched_timeout = C_ACT_TIMEOUT
            self.table._seen[idx] = now - (REFERENCE - C_ACT_TIMEOUT)
        self._n_tcp += 1
        return 1

    cdef void _acked(self, TcpConn c) except *:
        """New data acknowledged (see the twin): the low-water mark follows while
        the engine reads the socket; otherwise a PUSH."""
        if c.reading and c.peekoff:
            if self._lowat(c, seq_diff(c.seq_to_tap, c.seq_ack_from_tap) + 1):
                return
        self._want_push(c)

    cdef inline void _want_push(self, TcpConn c) except *:
        if not c.fp_flags & FP_PUSH:
            c.fp_flags |= FP_PUSH
            self._pushes.append(c)

    cdef bint _consume(self, TcpConn c, long long n) noexcept:
        """Drop n acknowledged bytes from the socket's receive queue (no copy)."""
        cdef ssize_t k
        cdef int tries = 0
        cdef long long bound = n // <long long>DISCARD + 2 + EINTR_RETRIES
        while n > 0 and bound > 0:
            bound -= 1
            k = recv(<int>c.fd, self._discard, <size_t>(n if n < <long long>DISCARD else DISCARD),
                     MSG_DONTWAIT | MSG_NOSIGNAL | MSG_TRUNC)
            if k < 0:
                if errno == EINTR:
                    continue
                if errno == EAGAIN:
                    break
                return False
            if k == 0:
                break
            n -= k
        return True

    cdef void _flush_tcp(self) except *:
        if not self._pend:
            return
        pend = self._pend
        self._pend = []
        for obj in pend:
            self._flush_conn(<TcpConn>obj)
        self._niov = 0

    cdef void _flush_conn(self, TcpConn c) except *:
        """One sendmsg() of what is queued for ``c``; its iovecs are then spent."""
        cdef iovec local[MAXIOV]
        cdef msghdr msg
        cdef Py_ssize_t j, m = 0
        cdef ssize_t r
        cdef long long total, written, skip
        cdef bytes tail
        cdef char* t
        cdef int tries = 0
        for j in range(self._niov):
            if self._iov_owner[j] == <PyObject*>c:
                local[m] = self._iov[j]
                self._iov_owner[j] = NULL
                m += 1
        if m == 0:
            return   # flushed already (a flow can be queued more than once per call)
        c.fp_flags &= ~FP_PEND
        total = c.fp_pending
        c.fp_pending = 0
        memset(&msg, 0, sizeof(msg))
        msg.msg_iov = local
        msg.msg_iovlen = <size_t>m
        while True:
            r = sendmsg(<int>c.fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL)
            if r < 0 and errno == EINTR and tries < EINTR_RETRIES:
                tries += 1
                continue
            break
        if r >= 0:
            written = r
        elif errno == EAGAIN:
            written = 0
        elif errno == EPIPE:
            written = total
        else:
            self.events.append((EV_RESET, c, None))
            self._stop = True
            return
        c.seq_from_tap = (c.seq_from_tap + written) & M32
        if written < total:
            tail = PyBytes_FromStringAndSize(NULL, total - written)
            t = PyBytes_AS_STRING(tail)
            skip = written
            for j in range(m):
                if skip >= <long long>local[j].iov_len:
                    skip -= local[j].iov_len
                    continue
                memcpy(t, <char*>local[j].iov_base + skip, local[j].iov_len - skip)
                t += local[j].iov_len - skip
                skip = 0
            self.events.append((EV_HOLD, c, tail))
            self._stop = True

    cdef int _udp(self, const uint8_t* b, PInfo* pi, double now) except -1:
        cdef int v = pi.ip_version
        cdef int dport = pi.dport
        cdef int alen = pi.addr_len
        cdef FlowKey k
        cdef int32_t idx = -1
        cdef PyObject* o
        cdef UdpFlow f
        cdef uint8_t anyaddr[16]
        cdef Py_ssize_t m
        if (v == 4 and dport == 67) or (v == 6 and dport == 547):
            return 0
        o = self._fwd[(65536 if v == 6 else 0) + pi.sport]
        if o == NULL:
            memset(anyaddr, 0, 16)
            key_fill(&k, 17, 0, <uint16_t>pi.sport, 0)
            put16(<uint8_t*>&k + 6, anyaddr, alen)
            put16(<uint8_t*>&k + 22, anyaddr, alen)
            idx = self.table._lookup(&k)
            if idx < 0:
                return 0
            o = self._objs[idx]
            if o == NULL:
                return 0
        if type(<object>o) is not UdpFlow:
            return 0
        f = <UdpFlow>o
        if (f.sock is None or f.fast_sa is None or f.fast_dport != dport
                or not bytes_eq(f.fast_dst, b + pi.addr_off + alen, alen)
                or not bytes_eq(f.gaddr, b + pi.addr_off, alen)):
            return 0
        if idx >= 0:
            self.table._seen[idx] = now - (REFERENCE - C_UDP_TIMEOUT)
        if self._udp_flow is not f:
            if self._udp_flow is not None:
                self._flush_udp()
            self._udp_flow = f
        m = self._nudp
        self._uiov[m].iov_base = <void*>(b + pi.payload_offset)
        self._uiov[m].iov_len = <size_t>pi.payload_len
        memset(&self._msgs[m], 0, sizeof(mmsghdr))
        self._msgs[m].msg_hdr.msg_name = <void*>PyBytes_AS_STRING(f.fast_sa)
        self._msgs[m].msg_hdr.msg_namelen = <socklen_t>PyBytes_GET_SIZE(f.fast_sa)
        self._msgs[m].msg_hdr.msg_iov = &self._uiov[m]
        self._msgs[m].msg_hdr.msg_iovlen = 1
        self._nudp += 1
        self._n_udp += 1
        if self._nudp == UDP_GROUP:
            self._flush_udp()
        return 1

    cdef void _flush_udp(self) except *:
        cdef UdpFlow f = <UdpFlow>self._udp_flow
        cdef Py_ssize_t n = self._nudp, done = 0
        cdef int r
        cdef int bound = 2 * <int>n + EINTR_RETRIES
        self._udp_flow = None
        self._nudp = 0
        while done < n and bound > 0:
            bound -= 1
            r = sendmmsg(<int>f.fd, &self._msgs[done], <unsigned int>(n - done), MSG_DONTWAIT)
            if r < 0:
                if errno == EINTR:
                    continue
                self._n_udp_err += 1     # the first datagram failed: count it, go on
                done += 1
            else:
                self._n_udp_sent += r
                done += r
                if r == 0:
                    break

    cdef void _add_counts(self) except *:
        cdef dict d = self.counters
        if self._n_tcp:
            d["fastpath_tcp"] = d.get("fastpath_tcp", 0) + self._n_tcp
        if self._n_udp:
            d["fastpath_udp"] = d.get("fastpath_udp", 0) + self._n_udp
        if self._n_udp_sent:
            d["udp_to_host"] = d.get("udp_to_host", 0) + self._n_udp_sent
        if self._n_udp_err:
            d["drop.udp-send-error"] = d.get("drop.udp-send-error", 0) + self._n_udp_err
        self._n_tcp = self._n_udp = self._n_udp_sent = self._n_udp_err = 0

    # -- after the batch -----------------------------------------------------------
    def finish(self, txbuf, Py_ssize_t first, Py_ssize_t stride, Py_ssize_t nslots, out):
        """After the batch: the ACKs due, built into slots ``first + k * stride`` (at
        most ``nslots``; their lengths in ``out``): how many. Call again while it
        returns ``nslots``. When no ACK is left, the PUSH events are queued. A flow
        that got less than one MSS is deferred (see the twin)."""
        cdef Py_ssize_t k = self._build_acks(self._acks, False, txbuf, first, stride, nslots, out)
        if not self._acks:
            self._queue_pushes()
        return k

    property deferred:
        """Flows whose ACK waits for ``flush_deferred``."""
        def __get__(self):
            return len(self._deferred)

    def flush_deferred(self, txbuf, Py_ssize_t first, Py_ssize_t stride, Py_ssize_t nslots, out):
        """The deferred ACKs not carried by a frame since (``ack_sent``), like ``finish``."""
        return self._build_acks(self._deferred, True, txbuf, first, stride, nslots, out)

    cdef Py_ssize_t _build_acks(self, list todo, bint deferred, txbuf, Py_ssize_t first,
                                Py_ssize_t stride, Py_ssize_t nslots, out) except -1:
        cdef int64_t[::1] res = out
        cdef Py_buffer v
        cdef uint8_t* b
        cdef Py_ssize_t k = 0, taken = 0
        cdef TcpConn c
        cdef long long wnd
        cdef bint small
        if nslots > res.shape[0]:
            raise ValueError("out is shorter than nslots")
        if not todo:
            return 0
        b = wbuf(txbuf, &v)
        try:
            if nslots > 0 and (first < 0 or stride < ACK_FRAME_MAX
                               or first + (nslots - 1) * stride + ACK_FRAME_MAX > v.len):
                raise ValueError("the slots do not fit in the buffer")
            for obj in todo:
                if k == nslots:
                    break
                taken += 1
                c = <TcpConn>obj
                if deferred:
                    c.fp_flags &= ~FP_DEFER
                    small = False
                else:
                    c.fp_flags &= ~FP_ACK
                    small = c.fp_batch < c.mss and c.fp_batch <= DEFER_MAX
                    c.fp_batch = 0
                if c.sock is None or c.events & CLOSED or c.ack_due:
                    continue   # gone, or the engine's own ACK is queued and covers it
                if deferred and c.ack_sent == c.seq_from_tap:
                    continue   # a frame since carried it
                if c.held is not None:
                    self.events.append((EV_ACK, c, None))
                    continue
                if small:
                    if not c.fp_flags & FP_DEFER:
                        c.fp_flags |= FP_DEFER
                        self._deferred.append(c)
                    continue
                wnd = self._window(c)
                c.last_wnd = wnd
                if not wnd and not c.writing:
                    # a guest told "window 0" waits for an update (or probes, backing
                    # off to seconds): the engine sends one when the socket drains
                    self.events.append((EV_WINDOW, c, None))
                c.ack_sent = c.seq_from_tap
                res[k] = self._build_ack(b + first + k * stride, c, <uint32_t>wnd)
                k += 1
        finally:
            PyBuffer_Release(&v)
        del todo[:taken]
        return k

    cdef void _queue_pushes(self) except *:
        cdef TcpConn c
        if not self._pushes:
            return
        pushes = self._pushes
        self._pushes = []
        for obj in pushes:
            c = <TcpConn>obj
            c.fp_flags &= ~FP_PUSH
            if c.sock is not None and not c.events & CLOSED:
                self.events.append((EV_PUSH, c, None))

    cdef Py_ssize_t _build_ack(self, uint8_t* p, TcpConn c, uint32_t window) except -1:
        return self._build_seg(p, c, <uint32_t>(c.seq_to_tap & M32), window, 0)

    cdef Py_ssize_t _build_seg(self, uint8_t* p, TcpConn c, uint32_t seq, uint32_t window,
                               Py_ssize_t plen) except -1:
        """Ethernet + IP + TCP (ACK, no options) before ``plen`` payload bytes already
        in place, as headers.build_tcp writes it; the frame length."""
        return self._build_hdrs(p, c, seq, window, plen, -1, False)

    cdef Py_ssize_t _build_hdrs(self, uint8_t* p, TcpConn c, uint32_t seq, uint32_t window,
                                Py_ssize_t plen, int64_t psum, bint partial) except -1:
        """_build_seg for a payload that is not behind the headers: ``psum`` its
        one's-complement sum (< 0: the payload follows the headers), ``partial``:
        the checksum field gets the pseudo-header sum only (the receiver completes
        it: virtio-net NEEDS_CSUM)."""
        cdef bytes ra = c.raddr, ga = c.gaddr
        cdef int alen = len(ra)
        cdef uint8_t* l3 = p + 14
        cdef uint8_t* l4
        cdef uint64_t s
        cdef uint32_t ps
        if alen != len(ga) or (alen != 4 and alen != 16):
            raise ValueError("connection addresses must both be 4 or both 16 bytes")
        memcpy(p, self._gmac, 6)
        memcpy(p + 6, self._omac, 6)
        if alen == 4:
            pc_store16(p + 12, 0x0800)
            l3[0] = 0x45
            l3[1] = 0
            pc_store16(l3 + 2, <uint32_t>(40 + plen))
            memset(l3 + 4, 0, 4)
            l3[8] = 255
            l3[9] = 6
            l3[10] = 0
            l3[11] = 0
            memcpy(l3 + 12, PyBytes_AS_STRING(ra), 4)
            memcpy(l3 + 16, PyBytes_AS_STRING(ga), 4)
            pc_store16(l3 + 10, (~pc_csum(l3, 20, 0)) & 0xFFFF)
            s = pc_csum(l3 + 12, 8, 0)
            l4 = l3 + 20
        else:
            pc_store16(p + 12, 0x86DD)
            pc_store32(l3, 0x60000000)
            pc_store16(l3 + 4, <uint32_t>(20 + plen))
            l3[6] = 6
            l3[7] = 255
            memcpy(l3 + 8, PyBytes_AS_STRING(ra), 16)
            memcpy(l3 + 24, PyBytes_AS_STRING(ga), 16)
            s = pc_csum(l3 + 8, 32, 0)
            l4 = l3 + 40
        s += 6 + 20 + <uint64_t>plen
        ps = pc_fold(s)
        pc_store16(l4, <uint32_t>c.rport & 0xFFFF)
        pc_store16(l4 + 2, <uint32_t>c.gport & 0xFFFF)
        pc_store32(l4 + 4, seq)
        pc_store32(l4 + 8, <uint32_t>(c.seq_from_tap & M32))
        l4[12] = 5 << 4
        l4[13] = F_ACK
        pc_store16(l4 + 14, window & 0xFFFF)
        memset(l4 + 16, 0, 4)
        if partial:
            pc_store16(l4 + 16, ps)
        elif psum < 0:
            pc_store16(l4 + 16, (~pc_csum(l4, 20 + plen, ps)) & 0xFFFF)
        else:
            pc_store16(l4 + 16, (~pc_csum(l4, 20, pc_fold(<uint64_t>ps + <uint64_t>psum))) & 0xFFFF)
        return (l4 - p) + 20 + plen

    # -- host -> guest -------------------------------------------------------------
    def push(self, TcpConn c, bint woken, txbuf, Py_ssize_t first, Py_ssize_t stride,
             Py_ssize_t nslots, Py_ssize_t seg, double now, out):
        """Host data the guest has not seen, peeked into slots (see the twin): the
        frames built, or -1 when the engine must decide; ``push_flags``."""
        cdef int64_t[::1] res = out
        cdef Py_buffer v
        cdef uint8_t* b
        cdef long long outstanding, want, got, wnd
        cdef Py_ssize_t hl, count, k, plen
        cdef iovec iov[MAX_BURST]
        cdef msghdr msg
        cdef ssize_t r
        cdef uint32_t seq
        self.push_flags = 0
        if (c.events != ESTABLISHED or not c.peekoff
                or c.sock is None or seg <= 0 or nslots <= 0):
            return -1
        if nslots > MAX_BURST:
            nslots = MAX_BURST
        if nslots > res.shape[0]:
            raise ValueError("out is shorter than nslots")
        want = self._want(c, woken)
        if want <= 0:
            return want
        outstanding = seq_diff(c.seq_to_tap, c.seq_ack_from_tap)
        hl = 54 if len(c.raddr) == 4 else 74
        if seg + hl > stride:
            raise ValueError("a segment does not fit in its slot")
        count = <Py_ssize_t>((want + seg - 1) // seg)
        if count > nslots:
            count = nslots
        if want > count * seg:
            want = count * seg
        b = wbuf(txbuf, &v)
        try:
            if first < 0 or first + (count - 1) * stride + hl + seg > v.len:
                raise ValueError("the slots do not fit in the buffer")
            for k in range(count):
                iov[k].iov_base = b + first + k * stride + hl
                plen = seg if want - k * seg > seg else <Py_ssize_t>(want - k * seg)
                iov[k].iov_len = <size_t>plen
            memset(&msg, 0, sizeof(msg))
            msg.msg_iov = iov
            msg.msg_iovlen = <size_t>count
            r = recvmsg(<int>c.fd, &msg, MSG_PEEK | MSG_DONTWAIT)
            if r <= 0:
                return -1
            got = r
            count = <Py_ssize_t>((got + seg - 1) // seg)
            wnd = self._window(c)
            seq = <uint32_t>(c.seq_to_tap & M32)
            for k in range(count):
                plen = seg if got - k * seg > seg else <Py_ssize_t>(got - k * seg)
                res[k] = self._build_seg(b + first + k * stride, c, seq, <uint32_t>wnd, plen)
                seq = <uint32_t>(seq + <uint32_t>plen)
        finally:
            PyBuffer_Release(&v)
        return self._pushed(c, seq, got, outstanding, wnd, now, count)

    def push_vq(self, TcpConn c, bint woken, Virtqueue q not None, bint mergeable,
                Py_ssize_t gso, Py_ssize_t hdr_len, Py_ssize_t seg, double now, out):
        """push() straight into the guest's receive buffers (see the twin): the
        frames delivered, or -1 when the engine (or the copy path) must decide."""
        cdef int64_t[::1] res = out
        cdef long long outstanding, want, got, wnd, left
        cdef int nres, k, j, s0, s1
        cdef Py_ssize_t hl, count, plen, room
        cdef iovec iov[RV_MAX_SEG]
        cdef int frame_iov[RV_MAX_FRAMES + 1]
        cdef long long frame_len[RV_MAX_FRAMES + 1]
        cdef long long planned
        cdef msghdr msg
        cdef ssize_t r
        cdef uint32_t seq, f
        cdef uint64_t sum_
        cdef size_t pos, take
        cdef uint8_t* h
        cdef int niov = 0
        cdef bint partial
        self.push_flags = 0
        if (c.events != ESTABLISHED or not c.peekoff
                or c.sock is None or seg <= 0 or hdr_len < 10 or res.shape[0] < 1):
            return -1
        want = self._want(c, woken)
        if want <= 0:
            return want
        outstanding = seq_diff(c.seq_to_tap, c.seq_ack_from_tap)
        hl = 54 if len(c.raddr) == 4 else 74
        count = <Py_ssize_t>((want + seg - 1) // seg)
        if count > RV_MAX_FRAMES:
            count = RV_MAX_FRAMES
        if count > res.shape[0]:
            count = res.shape[0]
        room = hdr_len + (hl if hl > ETH_ZLEN else ETH_ZLEN)
        nres = q.rx_reserve(<int>count, <uint64_t>(hdr_len + hl + seg), <uint64_t>room, mergeable)
        if nres <= 0:
            if q.pending():
                return -1   # buffers there but not for us (small, malformed): slot path
            # none at all: publish how far we got (EVENT_IDX: the guest kicks for
            # the next buffer), look once more, else the caller waits for a kick
            q.rx_finish_c(0, NULL, hdr_len)
            if not q.pending():
                return -2
            nres = q.rx_reserve(<int>count, <uint64_t>(hdr_len + hl + seg), <uint64_t>room,
                                mergeable)
            if nres <= 0:
                return -1
        count = nres
        # iovecs: each frame's payload, behind its headers in its first segment; a
        # frame holds ``seg`` bytes, or what its buffers can (rx_capacity)
        planned = 0
        for k in range(count):
            frame_iov[k] = niov
            left = <long long>q._rv_frame_cap[k] - hdr_len - hl
            if left > seg:
                left = seg
            if left > want - planned:
                left = want - planned
            planned += left
            s0 = q._rv_chain_seg[q._rv_frame_chain[k]]
            s1 = q._rv_chain_seg[q._rv_frame_chain[k + 1]]
            for j in range(s0, s1):
                if left <= 0 or niov >= RV_MAX_SEG:
                    break
                if j == s0:
                    iov[niov].iov_base = q._rv_segp[j] + hdr_len + hl
                    take = q._rv_segl[j] - hdr_len - hl
                else:
                    iov[niov].iov_base = q._rv_segp[j]
                    take = q._rv_segl[j]
                if <long long>take > left:
                    take = <size_t>left
                if take:
                    iov[niov].iov_len = take
                    niov += 1
                    left -= take
            frame_len[k] = planned
        frame_iov[count] = niov
        memset(&msg, 0, sizeof(msg))
        msg.msg_iov = iov
        msg.msg_iovlen = <size_t>niov
        r = recvmsg(<int>c.fd, &msg, MSG_PEEK | MSG_DONTWAIT)
        if r <= 0:
            q.rx_finish_c(0, NULL, hdr_len)
            return -1
        got = r
        count = 0   # the frames the data fills: frame_len[k] is where frame k ends
        while count < nres and (count == 0 or frame_len[count - 1] < got):
            count += 1
        wnd = self._window(c)
        seq = <uint32_t>(c.seq_to_tap & M32)
        for k in range(count):
            plen = <Py_ssize_t>((frame_len[k] if frame_len[k] < got else got)
                                - (frame_len[k - 1] if k else 0))
            partial = gso > 0 and plen > gso
            sum_ = 0
            if not partial:
                pos = 0
                for j in range(frame_iov[k], frame_iov[k + 1]):
                    if pos >= <size_t>plen:
                        break
                    take = iov[j].iov_len
                    if take > <size_t>plen - pos:
                        take = <size_t>plen - pos
                    f = pc_csum(<uint8_t*>iov[j].iov_base, take, 0)
                    if pos & 1:
                        f = ((f & 0xFF) << 8) | (f >> 8)
                    sum_ += f
                    pos += take
            h = q._rv_segp[q._rv_chain_seg[q._rv_frame_chain[k]]]
            res[k] = self._build_hdrs(h + hdr_len, c, seq, <uint32_t>wnd, plen,
                                      <int64_t>pc_fold(sum_), partial)
            memset(h, 0, 10)
            if partial:   # virtio-net: NEEDS_CSUM and TCP segmentation at the MSS
                h[0] = 1
                h[1] = 1 if hl == 54 else 4
                pc_put16le(h + 2, <uint16_t>hl)
                pc_put16le(h + 4, <uint16_t>gso)
                pc_put16le(h + 6, <uint16_t>(hl - 20))
                pc_put16le(h + 8, 16)
            seq = <uint32_t>(seq + <uint32_t>plen)
        q.rx_finish_c(<int>count, &res[0], hdr_len)
        return self._pushed(c, seq, got, outstanding, wnd, now, count)

    cdef long long _want(self, TcpConn c, bint woken) except? -2:
        """See the twin: bytes to send now (> 0), 0 (nothing new, low-water mark
        moved) or -1 (the engine decides)."""
        cdef long long outstanding = seq_diff(c.seq_to_tap, c.seq_ack_from_tap)
        cdef long long avail = c.wnd_from_tap - outstanding
        cdef int queued = 0
        if avail <= 0:
            return -1
        # the window opened again (the engine forgets a stalled connection lazily)
        c.stalled_since = 0.0
        if ioctl(<int>c.fd, FIONREAD, &queued) != 0:
            return -1
        if queued <= outstanding:
            if not c.reading or woken:
                return -1   # EOF, or a wake-up with nothing new: the engine reads it
            return 0 if self._lowat(c, outstanding + 1) else -1
        return queued - outstanding if queued - outstanding < avail else avail

    cdef long long _window(self, TcpConn c) except? -1:
        """The window to advertise to the guest, from the socket's send buffer."""
        cdef uint32_t mi[9]
        cdef socklen_t mlen = sizeof(mi)
        if getsockopt(<int>c.fd, SOL_SOCKET, SO_MEMINFO, mi, &mlen) == 0 and mlen >= 24:
            return c_window(c, mi[3], mi[5], self.frame_payload)
        return c_window(c, WINDOW_DEFAULT * 4 // 3, 0, self.frame_payload)

    cdef Py_ssize_t _pushed(self, TcpConn c, uint32_t seq, long long got,
                            long long outstanding, long long wnd, double now,
                            Py_ssize_t count) except -1:
        """After a burst of ``count`` frames (``got`` bytes, up to ``seq``): the
        connection's state, the low-water mark and ``push_flags``; ``count``."""
        cdef int flags
        c.last_wnd = wnd
        c.ack_sent = c.seq_from_tap
        if outstanding == 0:
            c.last_progress = now
        c.seq_to_tap = seq
        outstanding += got
        flags = C_PUSH_INFLIGHT
        if c.wnd_from_tap - outstanding <= 0:
            flags |= C_PUSH_NOREAD
        else:
            flags |= C_PUSH_READ if self._lowat(c, outstanding + 1) else C_PUSH_NOREAD
        self.push_flags = flags
        d = self.counters
        d["tcp_segments_to_guest"] = d.get("tcp_segments_to_guest", 0) + count
        return count

    cdef bint _lowat(self, TcpConn c, long long lowat) noexcept:
        """SO_RCVLOWAT = ``lowat`` (``TcpEngine._set_lowat``); False past the cap."""
        cdef int lw
        if lowat > c.lowat_cap:
            return False
        if lowat != c.lowat:
            lw = <int>lowat
            if setsockopt(<int>c.fd, SOL_SOCKET, SO_RCVLOWAT, &lw, sizeof(int)) == 0:
                c.lowat = lowat
        return True


# -- frame I/O on a descriptor that keeps frame boundaries (a tap) -------------------

@cython.final
cdef class IoResult:
    """See the twin."""
    cdef public long long frames, nbytes, runts, gso, failed, error
    cdef public bint drained

    def __init__(self):
        self.frames = self.nbytes = self.runts = self.gso = self.failed = self.error = 0
        self.drained = False


def read_frames(int fd, buf, Py_ssize_t stride, Py_ssize_t headroom, Py_ssize_t max_frames,
                offsets, lengths, IoResult res not None):
    """See the twin: up to ``max_frames`` frames read, one ``read`` each."""
    cdef int64_t[::1] offs = offsets
    cdef int64_t[::1] lens = lengths
    cdef Py_buffer v
    cdef uint8_t* b
    cdef Py_ssize_t count = 0, k
    cdef ssize_t n
    cdef int e
    if stride <= headroom or headroom < 0:
        raise ValueError("stride must exceed headroom")
    if max_frames > offs.shape[0]:
        max_frames = offs.shape[0]
    if max_frames > lens.shape[0]:
        max_frames = lens.shape[0]
    b = wbuf(buf, &v)
    res.frames = res.nbytes = res.runts = res.gso = res.error = 0
    res.drained = False
    try:
        if max_frames * stride > v.len:
            raise ValueError("the buffer is shorter than max_frames slots")
        for k in range(max_frames + 64):
            if count >= max_frames:
                break
            n = read(fd, b + count * stride, <size_t>stride)
            if n < 0:
                e = errno
                if e == EINTR:
                    continue
                if e == EAGAIN:
                    res.drained = True
                else:
                    res.error = e
                break
            n -= headroom
            if n < 14:
                res.runts += 1
                continue
            if headroom and b[count * stride + 1]:
                res.gso += 1
            offs[count] = count * stride + headroom
            lens[count] = n
            res.nbytes += n
            count += 1
    finally:
        PyBuffer_Release(&v)
    res.frames = count
    return count


def write_frames(int fd, buf, Py_ssize_t first, Py_ssize_t stride, lengths, Py_ssize_t count,
                 Py_ssize_t headroom, IoResult res not None):
    """See the twin: ``count`` frames written, one ``write`` each."""
    cdef const int64_t[::1] lens = lengths
    cdef Py_buffer v
    cdef const uint8_t* b
    cdef Py_ssize_t k, base
    cdef ssize_t r
    if count > lens.shape[0]:
        raise ValueError("count exceeds lengths")
    PyObject_GetBuffer(buf, &v, PyBUF_SIMPLE)
    b = <const uint8_t*>v.buf
    res.frames = res.nbytes = res.failed = 0
    try:
        for k in range(count):
            base = first + k * stride
            if base < headroom or lens[k] < 0 or base + lens[k] > v.len:
                raise ValueError("a frame does not fit in the buffer")
            r = write(fd, b + base - headroom, <size_t>(headroom + lens[k]))
            if r < 0:
                res.failed += 1
                continue
            res.frames += 1
            res.nbytes += lens[k]
    finally:
        PyBuffer_Release(&v)
    return res.frames
