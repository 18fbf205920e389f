"""Front ends: how frames reach the guest and come back, behind one interface.

- ``StreamConnection``: one connected AF_UNIX stream carrying QEMU's framing,
  a 4-byte big-endian length then the Ethernet frame (passt-reference 2.1).
  Reads go into one reassembly buffer, so a read may end anywhere, including
  inside a length header, without losing sync. Lengths < 14 or > 65535 are
  counted and their bytes skipped (without buffering them). Writes are
  batched (one ``sendmsg`` over an iovec); whatever the kernel does not take
  is kept, in order, in a bounded backlog flushed when the socket is writable,
  so the stream never carries a torn frame; when the backlog is full, whole
  new frames are dropped and counted.
- ``StreamFrontend``: the listening socket; one client at a time, a second
  one is accepted and closed ("discarding connection from PID n");
  ``--one-off`` stops the loop when the client goes, else it waits for the next.
- ``FdFrontend``: ``-F FD``, an inherited connected socket; one-off.
- ``TapFrontend``: a tap device (IFF_TAP|IFF_NO_PI), one frame per
  read/write, drained until EAGAIN; opened inside the target namespace.

Every front end has ``send(frame)``, ``send_many(frames)``, ``start()`` and
``close()``; received frames go to ``on_frame(memoryview)``, valid only
during the call.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from passtcore.run.counters import Counters
from passtcore.run.loop import Loop

log = logging.getLogger("passtcore.run")

ETH_HLEN = 14
ETH_MAX = 65535
RBUF_SIZE = 4 << 20
BACKLOG_MAX = 16 << 20
IOV_BATCH = 500              # frames per sendmsg (2 iovecs each; IOV_MAX is 1024)
SOCK_BUF = (2**31 - 1) // 2  # passt asks for INT_MAX/2; the kernel clamps it
MSG_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.EBADF)

OnFrame = Callable[[memoryview], Any]


def deliver(on_frame: OnFrame, frame: memoryview, counters: Counters) -> None:
    """Hand one frame (a view into the receive buffer) to the handler. A handler
    error is counted and the stream goes on: reading state is never left behind."""
    try:
        on_frame(frame)
    except Exception:
        counters.drop("handler-error")
        log.warning("frame handler failed", exc_info=True)
    try:
        frame.release()
    except BufferError:
        pass  # a handler kept a buffer export of the view: it must copy (engine bug)


def peer_pid(sock: socket.socket) -> int:
    try:
        cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", cred)[0]
    except OSError:
        return 0


class StreamConnection:
    """One connected stream with passt/QEMU framing (both directions)."""

    def __init__(self, sock: socket.socket, loop: Loop, counters: Counters, on_frame: OnFrame,
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
        self.on_frame = on_frame
        self.on_gone = on_gone
        self.rbuf = mmap.mmap(-1, RBUF_SIZE, mmap.MAP_PRIVATE)  # resident once written
        self.rview = memoryview(self.rbuf)
        self.start = self.end = 0
        self.skip = 0               # bytes of a rejected frame still to discard
        self.wbuf = bytearray()     # backlog: whole frames, possibly one partly sent
        self.woff = 0
        self.closed = False
        loop.add_reader(self.fd, self._readable)

    # -- input ------------------------------------------------------------
    def _readable(self) -> None:
        for _ in range(16):  # bounded, so other fds get their turn
            if self.closed:
                return
            if len(self.rbuf) - self.end < 65536 + 4:
                self._compact()
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
            if self.end < len(self.rbuf):
                return  # short read: nothing more queued right now

    def _compact(self) -> None:
        if self.start:
            pending = self.end - self.start
            self.rview[:pending] = self.rview[self.start:self.end]
            self.start, self.end = 0, pending

    def _walk(self) -> None:
        buf, view, counters = self.rbuf, self.rview, self.counters
        start, end = self.start, self.end
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
            start += 4
            frame = view[start:start + length]
            start += length
            counters.frame_in(length)
            deliver(self.on_frame, frame, counters)
            if self.closed:
                return
        if start == end:
            start = end = 0
        self.start, self.end = start, end

    # -- output -----------------------------------------------------------
    def send(self, frame: Any) -> bool:
        return self.send_many([frame]) == 1

    def send_many(self, frames: list[Any]) -> int:
        """Queue whole frames; returns how many were accepted (the rest are dropped)."""
        if self.closed:
            self.counters.drop("no-guest", len(frames))
            return 0
        accepted = 0
        for i in range(0, len(frames), IOV_BATCH):
            accepted += self._send_batch(frames[i:i + IOV_BATCH])
        return accepted

    def _send_batch(self, frames: list[Any]) -> int:
        iov: list[Any] = []
        total = 0
        for f in frames:
            n = len(f)
            if n > ETH_MAX:
                self.counters.drop("oversized-out")
                continue
            iov.append(n.to_bytes(4, "big"))
            iov.append(f)
            total += 4 + n
        if not iov:
            return 0
        count = len(iov) // 2
        if self.woff < len(self.wbuf):  # keep order behind the backlog
            return self._queue(iov, 0, total)
        try:
            sent = self.sock.sendmsg(iov, (), MSG_FLAGS)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            if exc.errno in _GONE:
                self.counters.drop("no-guest", count)
                self._gone()
                return 0
            raise
        self.counters.frame_out(total - 4 * count, count)
        if sent < total:
            return self._queue(iov, sent, total, counted=True)
        return count

    def _queue(self, iov: list[Any], sent: int, total: int, counted: bool = False) -> int:
        """Append the unsent tail of ``iov`` to the backlog; whole frames only are
        dropped, and never one that has started going out."""
        accepted = 0
        pos = 0
        for k in range(0, len(iov), 2):
            hdr, frame = iov[k], iov[k + 1]
            size = 4 + len(frame)
            if pos + size <= sent:
                pos += size
                accepted += 1
                continue
            started = sent > pos
            room = BACKLOG_MAX - (len(self.wbuf) - self.woff)
            if not started and size > room:
                self.counters.drop("tx-backlog-full")
                if counted:
                    self.counters.frame_out(-len(frame), -1)
                pos += size
                continue
            chunk = bytes(hdr) + bytes(frame)
            self.wbuf += chunk[max(0, sent - pos):]
            pos += size
            accepted += 1
            if not counted:
                self.counters.frame_out(len(frame))
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


class StreamFrontend:
    """The QEMU stream socket server (``-s``), one client at a time."""

    def __init__(self, listener: socket.socket, loop: Loop, counters: Counters,
                 on_frame: OnFrame, one_off: bool = False,
                 on_exit: Callable[[], Any] | None = None) -> None:
        listener.setblocking(False)
        self.listener = listener
        self.loop = loop
        self.counters = counters
        self.on_frame = on_frame
        self.one_off = one_off
        self.on_exit = on_exit or (lambda: loop.stop(0))
        self.conn: StreamConnection | None = None

    def start(self) -> None:
        self.loop.add_reader(self.listener.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("accept failed: %s", exc)
            return
        pid = peer_pid(sock)
        if self.conn is not None and not self.conn.closed:
            log.info("discarding connection from PID %d", pid)
            self.counters.inc("clients_discarded")
            sock.close()
            return
        log.info("accepted connection from PID %d", pid)
        self.counters.inc("clients")
        self.conn = StreamConnection(sock, self.loop, self.counters, self.on_frame, self._gone)

    def _gone(self) -> None:
        if self.one_off:
            log.info("Client closed connection, exiting")
            self.on_exit()
        else:
            log.info("Client connection closed, waiting for a new one")

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed

    def send(self, frame: Any) -> bool:
        if not self.connected:
            self.counters.drop("no-guest")
            return False
        return self.conn.send(frame)  # type: ignore[union-attr]

    def send_many(self, frames: list[Any]) -> int:
        if not self.connected:
            self.counters.drop("no-guest", len(frames))
            return 0
        return self.conn.send_many(frames)  # type: ignore[union-attr]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.loop.remove_reader(self.listener.fileno())
        self.listener.close()


class FdFrontend:
    """``-F FD``: an inherited, connected stream socket; exits when it closes."""

    def __init__(self, fd: int, loop: Loop, counters: Counters, on_frame: OnFrame,
                 on_exit: Callable[[], Any] | None = None) -> None:
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise OSError(errno.EINVAL, f"fd {fd} is not a stream socket")
        self.loop = loop
        self.counters = counters
        self.on_frame = on_frame
        self.on_exit = on_exit or (lambda: loop.stop(0))
        self.sock = sock
        self.conn: StreamConnection | None = None

    def start(self) -> None:
        self.conn = StreamConnection(self.sock, self.loop, self.counters, self.on_frame,
                                     self._gone)

    def _gone(self) -> None:
        log.info("Client closed connection, exiting")
        self.on_exit()

    def send(self, frame: Any) -> bool:
        if self.conn is None or self.conn.closed:
            self.counters.drop("no-guest")
            return False
        return self.conn.send(frame)

    def send_many(self, frames: list[Any]) -> int:
        if self.conn is None or self.conn.closed:
            self.counters.drop("no-guest", len(frames))
            return 0
        return self.conn.send_many(frames)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


# -- tap ------------------------------------------------------------------
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def open_tap(ifname: str) -> int:
    """Open (creating if needed) tap ``ifname`` in the calling thread's netns."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
    except OSError:
        os.close(fd)
        raise
    return fd


def in_netns(target: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn()`` in a short-lived thread that has entered netns ``target``
    (setns moves only the calling thread; the main thread stays in the host ns)."""
    from passtcore import netns

    result: list[Any] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            with netns.entered(target):
                result.append(fn())
        except BaseException as exc:  # re-raised in the caller
            error.append(exc)

    t = threading.Thread(target=body, name="netns")
    t.start()
    t.join(30)
    if t.is_alive():
        raise TimeoutError(f"namespace setup in {target} timed out")
    if error:
        raise error[0]
    return result[0]


class TapFrontend:
    """A tap device: one frame per read()/write()."""

    READ_BATCH = 256  # frames per wake-up, then yield to other fds

    def __init__(self, fd: int, loop: Loop, counters: Counters, on_frame: OnFrame,
                 on_exit: Callable[[], Any] | None = None) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.loop = loop
        self.counters = counters
        self.on_frame = on_frame
        self.on_exit = on_exit or (lambda: loop.stop(0))
        self.buf = bytearray(ETH_MAX + 64)
        self.view = memoryview(self.buf)
        self.closed = False

    def start(self) -> None:
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        counters, view = self.counters, self.view
        for _ in range(self.READ_BATCH):
            try:
                n = os.readv(self.fd, (self.buf,))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("tap read failed: %s; exiting", exc)
                self.close()
                self.on_exit()
                return
            if n < ETH_HLEN:
                counters.drop("runt-frame")
                continue
            counters.frame_in(n)
            deliver(self.on_frame, view[:n], counters)

    def send(self, frame: Any) -> bool:
        if self.closed:
            self.counters.drop("no-guest")
            return False
        try:
            os.write(self.fd, frame)
        except (BlockingIOError, InterruptedError):
            self.counters.drop("tap-full")
            return False
        except OSError as exc:
            self.counters.drop("tap-error")
            log.debug("tap write failed: %s", exc)
            return False
        self.counters.frame_out(len(frame))
        return True

    def send_many(self, frames: list[Any]) -> int:
        return sum(1 for f in frames if self.send(f))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
