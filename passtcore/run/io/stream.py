"""The QEMU stream socket (``-s``) and ``-F FD``: passt's framing over AF_UNIX.

Framing (passt-reference 2.1): a 4-byte big-endian length, then the Ethernet
frame, both directions.

- **In.** Reads go into one reassembly buffer, so a read may end anywhere,
  including inside a length header, without losing sync. Each read's complete
  frames are handed over as one batch (offsets and lengths into that buffer);
  reading goes on until the socket is drained (a short read) or 16 reads have
  been taken, so that other descriptors get their turn. Lengths < 14 or >
  65535 are counted and their bytes skipped, without buffering them.
- **Out.** Each TX slot has 4 bytes of headroom for the length, so a committed
  burst is one ``sendmsg`` over one iovec per frame, straight from the slots.
  Whatever the kernel does not take is kept, in order, in a bounded backlog
  flushed when the socket is writable: the stream never carries a torn frame.
  When the backlog is full, whole new frames are dropped and counted.
- **Clients.** One at a time: a second one is accepted and closed
  ("discarding connection from PID n"); with ``--one-off`` (always with
  ``-F``) the daemon stops when the client goes, else it waits for the next.
"""
from __future__ import annotations

import errno
import logging
import mmap
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from passtcore.run.counters import Counters
from passtcore.run.io.frontend import ETH_HLEN, ETH_MAX, RX_BATCH, Frontend, OnBatch, \
    new_index_arrays
from passtcore.run.io.loop import Loop

log = logging.getLogger("passtcore.run")

RBUF_SIZE = 4 << 20
BACKLOG_MAX = 16 << 20
READS_PER_WAKEUP = 16
SOCK_BUF = (2**31 - 1) // 2  # passt asks for INT_MAX/2; the kernel clamps it
MSG_FLAGS = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)  # an int: no enum call per send
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.EBADF)


def peer_pid(sock: socket.socket) -> int:
    try:
        cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", cred)[0]
    except OSError:
        return 0


class StreamConnection:
    """One connected stream with passt/QEMU framing: reassembly in, chunks out."""

    def __init__(self, sock: socket.socket, loop: Loop, counters: Counters, on_batch: OnBatch,
                 on_gone: Callable[[], Any]) -> None:
        sock.setblocking(False)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
            except OSError:
                pass
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.counters = counters
        self.on_batch = on_batch
        self.on_gone = on_gone
        self.rbuf = mmap.mmap(-1, RBUF_SIZE, mmap.MAP_PRIVATE)  # resident once written
        self.rview = memoryview(self.rbuf)
        self.offsets, self.lengths = new_index_arrays(RX_BATCH)
        self.start = self.end = 0
        self.skip = 0               # bytes of a rejected frame still to discard
        self.wbuf = bytearray()     # backlog: whole frames, possibly one partly sent
        self.woff = 0
        self.closed = False
        loop.add_reader(self.fd, self._readable)

    # -- input ------------------------------------------------------------
    def _readable(self) -> None:
        for _ in range(READS_PER_WAKEUP):
            if self.closed:
                return
            if len(self.rbuf) - self.end < ETH_MAX + 4:
                self._compact()
            room = len(self.rbuf) - self.end
            try:
                n = self.sock.recv_into(self.rview[self.end:])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("client read error: %s", exc)
                self._gone()
                return
            if n == 0:
                self._gone()
                return
            self.end += n
            self._walk()
            if n < room:
                return  # short read: the socket is drained for now

    def _compact(self) -> None:
        if self.start:
            pending = self.end - self.start
            self.rview[:pending] = self.rview[self.start:self.end]
            self.start, self.end = 0, pending

    def _walk(self) -> None:
        """Hand every complete frame in the buffer to ``on_batch``, RX_BATCH at a time.

        The reading state is saved before each hand-over, so a handler that raises
        (caught by the loop) costs at most that batch, never the stream's sync."""
        buf, counters = self.rbuf, self.counters
        offsets, lengths = self.offsets, self.lengths
        start, end = self.start, self.end
        count = 0
        while start < end:
            if self.skip:
                n = min(self.skip, end - start)
                self.skip -= n
                start += n
                continue
            if end - start < 4:
                break
            length = int.from_bytes(buf[start:start + 4], "big")
            if length < ETH_HLEN or length > ETH_MAX:
                counters.drop("runt-frame" if length < ETH_HLEN else "oversized-frame")
                start += 4
                self.skip = length
                continue
            if end - start - 4 < length:
                break
            offsets[count] = start + 4
            lengths[count] = length
            count += 1
            start += 4 + length
            counters.frame_in(length)
            if count == RX_BATCH:
                self.start = start
                self.on_batch(self.rview, offsets, lengths, count)
                count = 0
                if self.closed:
                    return
        # the frames stay where they are until the next read, whatever start/end say
        self.start, self.end = (0, 0) if start == end else (start, end)
        if count:
            self.on_batch(self.rview, offsets, lengths, count)

    # -- output -----------------------------------------------------------
    def send_chunks(self, chunks: list[memoryview]) -> int:
        """Send length-prefixed frames (one chunk each); returns how many were
        accepted: sent, or queued whole in the backlog. The rest are dropped."""
        if self.closed:
            self.counters.drop("no-guest", len(chunks))
            return 0
        if self.woff < len(self.wbuf):  # keep order behind the backlog
            return self._queue(chunks, 0)
        try:
            sent = self.sock.sendmsg(chunks, (), MSG_FLAGS)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            if exc.errno in _GONE:
                self.counters.drop("no-guest", len(chunks))
                self._gone()
                return 0
            raise
        return self._queue(chunks, sent)

    def _queue(self, chunks: list[memoryview], sent: int) -> int:
        """Count what ``sent`` covered; append the unsent tail to the backlog. Whole
        frames only are dropped, and never one that has started going out."""
        accepted = 0
        pos = 0
        counters = self.counters
        for chunk in chunks:
            size = len(chunk)
            if pos + size > sent:
                started = sent > pos
                if not started and size > BACKLOG_MAX - (len(self.wbuf) - self.woff):
                    counters.drop("tx-backlog-full")
                    pos += size
                    continue
                self.wbuf += chunk[max(0, sent - pos):]
            pos += size
            accepted += 1
            counters.frame_out(size - 4)
        if self.woff < len(self.wbuf):
            self.loop.add_writer(self.fd, self._writable)
        return accepted

    def _writable(self) -> None:
        while self.woff < len(self.wbuf):
            try:
                n = self.sock.send(memoryview(self.wbuf)[self.woff:], MSG_FLAGS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._gone()
                return
            self.woff += n
        self.wbuf.clear()
        self.woff = 0
        self.loop.remove_writer(self.fd)

    @property
    def backlog(self) -> int:
        return len(self.wbuf) - self.woff

    # -- teardown ---------------------------------------------------------
    def _gone(self) -> None:
        if self.closed:
            return
        if self.end > self.start or self.skip:
            self.counters.drop("truncated-at-eof")  # the client left mid-frame
        self.close()
        self.on_gone()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        try:
            self.sock.close()
        except OSError:
            pass
        self.wbuf = bytearray()
        self.woff = 0


class StreamFrontend(Frontend):
    """The stream front end: a listening socket (``-s``), one client at a time,
    or one inherited connected socket (``-F``, one-off)."""

    HEADROOM = 4  # the length prefix, written at commit

    def __init__(self, loop: Loop, counters: Counters, on_batch: OnBatch | None = None,
                 listener: socket.socket | None = None, sock: socket.socket | None = None,
                 one_off: bool = False, on_exit: Callable[[], Any] | None = None) -> None:
        if (listener is None) == (sock is None):
            raise ValueError("StreamFrontend needs a listener or a connected socket")
        super().__init__(counters, on_batch)
        self.loop = loop
        self.listener = listener
        self.pending = sock
        self.one_off = one_off or sock is not None
        self.on_exit = on_exit or (lambda: loop.stop(0))
        self.conn: StreamConnection | None = None
        if listener is not None:
            listener.setblocking(False)

    @classmethod
    def from_fd(cls, fd: int, loop: Loop, counters: Counters,
                on_batch: OnBatch | None = None) -> StreamFrontend:
        """``-F FD``: an inherited, connected stream socket."""
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise OSError(errno.EINVAL, f"fd {fd} is not a stream socket")
        return cls(loop, counters, on_batch, sock=sock)

    def start(self) -> None:
        if self.listener is not None:
            self.loop.add_reader(self.listener.fileno(), self._accept)
        elif self.pending is not None:
            self._attach(self.pending)
            self.pending = None

    def _attach(self, sock: socket.socket) -> None:
        # on_batch is looked up at each batch: the daemon may set it after start()
        self.conn = StreamConnection(sock, self.loop, self.counters,
                                     lambda *a: self.on_batch(*a), self._gone)

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("accept failed: %s", exc)
            return
        pid = peer_pid(sock)
        if self.connected:
            log.info("discarding connection from PID %d", pid)
            self.counters.inc("clients_discarded")
            sock.close()
            return
        log.info("accepted connection from PID %d", pid)
        self.counters.inc("clients")
        self._attach(sock)

    def _gone(self) -> None:
        if self.one_off:
            log.info("Client closed connection, exiting")
            self.on_exit()
        else:
            log.info("Client connection closed, waiting for a new one")

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed

    def _transmit(self, lengths: Sequence[int], gso_size: int = 0) -> int:
        if not self.connected:
            self.counters.drop("no-guest", len(lengths))
            return 0
        view, stride = self.txview, self.stride
        chunks = []
        for i, n in enumerate(lengths):
            base = i * stride
            view[base:base + 4] = n.to_bytes(4, "big")
            chunks.append(view[base:base + 4 + n])
        return self.conn.send_chunks(chunks)  # type: ignore[union-attr]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.listener is not None:
            self.loop.remove_reader(self.listener.fileno())
            self.listener.close()
