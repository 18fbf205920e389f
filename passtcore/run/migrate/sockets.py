"""One host TCP socket's state in and out of the kernel, with TCP_REPAIR.

The daemon never holds CAP_NET_ADMIN: switching a socket into repair mode is
the helper's job (``repair.py``); everything else here is ordinary socket
options on a socket already in repair mode (the kernel checks the privilege
only when TCP_REPAIR itself is set). The sequence follows passt's tcp.c
(tcp_flow_migrate_source_ext / tcp_flow_migrate_target_ext), including its
corrections for sockets that have sent or received a FIN, whose queue
lengths and windows count the FIN's sequence number.
"""
from __future__ import annotations

import errno
import fcntl
import socket
import struct

from passtcore.run.migrate.wire import QUEUE_MAX, StateError, TcpTransferExt

TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_REPAIR_OPTIONS = 19, 20, 21, 22
TCP_TIMESTAMP, TCP_REPAIR_WINDOW = 24, 29
TCP_RECV_QUEUE, TCP_SEND_QUEUE = 1, 2
TCPOPT_MAXSEG, TCPOPT_WINDOW, TCPOPT_SACK_PERMITTED, TCPOPT_TIMESTAMP = 2, 3, 4, 8
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK = 1, 2
SIOCINQ, SIOCOUTQ, SIOCOUTQNSD = 0x541B, 0x5411, 0x894B
SO_PEEK_OFF = 42
# tcp_states.h
ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING = 1, 4, 5, 8, 9, 11
REPAIR_WINDOW = struct.Struct("=IIIII")
RESTORE_CHUNK_MIN = 1024


def _ioctl_int(s: socket.socket, req: int) -> int:
    return struct.unpack("i", fcntl.ioctl(s.fileno(), req, b"\0\0\0\0"))[0]


def _peek(s: socket.socket, n: int) -> bytes:
    """The selected queue's first ``n`` bytes (fewer: the queue moved; the
    caller takes it again)."""
    if not n:
        return b""
    buf = bytearray(n)
    try:
        got = s.recv_into(buf, n, socket.MSG_PEEK)
    except BlockingIOError:
        got = 0
    return bytes(buf[:got])


def freeze(s: socket.socket) -> None:
    """Stop a socket in repair mode from taking more data from its peer. Repair
    mode does not (the kernel still receives and acknowledges: data taken after
    the dump would be lost), nor does a zero TCP_REPAIR_WINDOW (6.x accepts data
    sent into the window the peer already had). The smallest receive buffer
    does, once anything is queued: further segments are dropped unacknowledged
    and the peer sends them again, to the target. ``rcv_seq`` afterwards tells
    whether a segment got in after the dump (an empty queue takes one)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)


def thaw(s: socket.socket, rcvbuf: int) -> None:
    """Undo ``freeze`` (the migration failed: the connection stays here)."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    except OSError:
        pass


def rcv_seq(s: socket.socket) -> int:
    """The next sequence number the socket expects from its peer (repair mode)."""
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
    return struct.unpack("I", s.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]


def dump(s: socket.socket) -> tuple[TcpTransferExt, bytes, bytes]:
    """State and queues of a socket in repair mode, frozen (``freeze``): (ext,
    send queue, receive queue), consistent (taken again, a few times at most, if
    the peer's data or acknowledgements moved a queue meanwhile). Sequence
    numbers are those of the start of each queue."""
    for _ in range(8):
        before = rcv_seq(s)
        t, sndq, rcvq = _dump_once(s)
        if rcv_seq(s) == before and len(sndq) == t.sndq:
            return t, sndq, rcvq
    raise StateError("the socket's queues kept moving")


def _dump_once(s: socket.socket) -> tuple[TcpTransferExt, bytes, bytes]:
    t = TcpTransferExt()
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, -1)   # the queues are read from 0
    except OSError:
        pass
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    t.tcpi_state, t.tcpi_options = info[0], info[5]
    t.snd_ws, t.rcv_ws = info[6] & 0xF, info[6] >> 4
    t.mss = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    if t.tcpi_options & TCPI_OPT_TIMESTAMPS:
        t.timestamp = s.getsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP) & 0xFFFFFFFF
    (t.snd_wl1, t.snd_wnd, t.max_window, t.rcv_wnd,
     t.rcv_wup) = REPAIR_WINDOW.unpack(s.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW,
                                                    REPAIR_WINDOW.size))
    fin_in = t.tcpi_state in (CLOSE_WAIT, LAST_ACK)
    fin_out = t.tcpi_state in (FIN_WAIT1, FIN_WAIT2, LAST_ACK, CLOSING)
    if fin_in:           # the peer's FIN took a sequence number, not a byte
        t.rcv_wup = (t.rcv_wup - 1) & 0xFFFFFFFF
        t.rcv_wnd += 1

    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
    t.sndq, t.notsent = _ioctl_int(s, SIOCOUTQ), _ioctl_int(s, SIOCOUTQNSD)
    if fin_out:
        t.sndq, t.notsent = max(t.sndq - 1, 0), max(t.notsent - 1, 0)
    if t.notsent > t.sndq or t.sndq > QUEUE_MAX:
        raise StateError(f"send queue {t.sndq} (not sent {t.notsent}) cannot migrate")
    sndq = _peek(s, t.sndq)
    t.seq_snd = struct.unpack("I", s.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]

    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
    t.rcvq = _ioctl_int(s, SIOCINQ)
    if fin_in and t.rcvq:
        t.rcvq -= 1
    if t.rcvq > QUEUE_MAX:
        raise StateError(f"receive queue {t.rcvq} cannot migrate")
    rcvq = _peek(s, t.rcvq)
    if len(rcvq) < t.rcvq:
        raise StateError(f"short read of the receive queue ({len(rcvq)} of {t.rcvq} bytes)")
    t.seq_rcv = struct.unpack("I", s.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]
    t.seq_rcv = (t.seq_rcv - t.rcvq) & 0xFFFFFFFF
    t.seq_snd = (t.seq_snd - t.sndq) & 0xFFFFFFFF
    return t, sndq, rcvq


def _write_queue(s: socket.socket, data: bytes | memoryview) -> None:
    view, chunk = memoryview(data), len(data)
    for _ in range(1 << 16):          # bounded: a chunk at least 1 KiB each time
        if not view:
            return
        try:
            view = view[s.send(view[:chunk]):]
        except OSError as exc:
            if exc.errno in (errno.ENOBUFS, errno.ENOMEM) and chunk >= RESTORE_CHUNK_MIN * 2:
                chunk //= 2
                continue
            raise
    raise StateError("queue restore made no progress")


def restore_in_repair(s: socket.socket, t: TcpTransferExt, local: tuple, remote: tuple,
                      sndq: bytes, rcvq: bytes) -> None:
    """Bind, sequence numbers, connect (no handshake: repair mode), queues,
    options, window, for a socket the helper has put into repair mode.
    ``restore_after_repair`` finishes once repair mode is off again."""
    s.bind(local)
    if t.tcpi_options & TCPI_OPT_TIMESTAMPS:
        s.setsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP, struct.pack("I", t.timestamp))
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
    s.setsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, struct.pack("I", t.seq_snd))
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
    s.setsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, struct.pack("I", t.seq_rcv))
    err = s.connect_ex(remote)
    if err:
        raise OSError(err, f"connect: {errno.errorcode.get(err, err)}")
    _write_queue(s, rcvq)
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
    _write_queue(s, memoryview(sndq)[:t.sndq - t.notsent])
    opts = [(TCPOPT_WINDOW, t.snd_ws + (t.rcv_ws << 16)), (TCPOPT_MAXSEG, t.mss)]
    if t.tcpi_options & TCPI_OPT_SACK:
        opts.append((TCPOPT_SACK_PERMITTED, 0))
    if t.tcpi_options & TCPI_OPT_TIMESTAMPS:
        opts.append((TCPOPT_TIMESTAMP, 0))
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_OPTIONS,
                 b"".join(struct.pack("II", k, v) for k, v in opts))
    if t.tcpi_state == FIN_WAIT2:
        # our FIN was acknowledged: shut down without sending it again
        s.shutdown(socket.SHUT_WR)
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW,
                 REPAIR_WINDOW.pack(t.snd_wl1, t.snd_wnd, t.max_window, t.rcv_wnd, t.rcv_wup))


def restore_after_repair(s: socket.socket, t: TcpTransferExt, sndq: bytes) -> None:
    """What only a socket out of repair mode can do: the part of the send queue
    never sent (it goes out now, as new data) and a FIN not yet acknowledged."""
    if t.notsent:
        _write_queue(s, memoryview(sndq)[t.sndq - t.notsent:])
    if t.tcpi_state == FIN_WAIT1:
        s.shutdown(socket.SHUT_WR)
