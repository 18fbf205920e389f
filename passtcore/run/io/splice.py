"""Namespace -> host forwarding over loopback (``-T``/``-U``): pasta's "splice" path.

Design
------
pasta forwards the ports of ``-T/--tcp-ns`` and ``-U/--udp-ns`` from the target
namespace to the init ("host") namespace without the tap: a connection to the
namespace's loopback is relayed, at the socket level, to the same (or remapped)
port on the host's loopback (passt-reference 3.1, 3.2, 6.8). pasta moves the
bytes with splice(2) through pipes; here a single-threaded relay on the
daemon's epoll loop does the same with recv_into/send, which needs no pipes
and keeps every byte accounted in user space. The tap, the dispatcher and
the engines are not involved at all.

* **Sockets.** Listening sockets live in the target namespace, on 127.0.0.1
  and ::1 (each where the namespace has it, ``IPV6_V6ONLY``). A socket belongs
  to the namespace it was created in for good, so they are made by a thread
  that entered the namespace (``netns.entered``), before privileges are
  dropped. Host-side sockets are made by the main thread, which never leaves
  the host namespace, and connect to 127.0.0.1/::1 of the same family.
* **``auto``.** Every second (passt's FWD_PORT_SCAN interval) the host's
  /proc/net files (opened once at start-up, see ``portscan``) say which ports
  are bound on the host's loopback or wildcard address; namespace listeners
  are opened and closed to match. The daemon's own sockets are excluded, so
  ``-T auto`` never forwards the daemon's ``-t`` listeners back. After the
  privilege drop no thread can enter the namespace any more (setns needs
  CAP_SYS_ADMIN), so listeners for ``auto`` come from a small helper process
  forked at start-up: it enters the namespace, drops to the daemon's
  identity keeping only CAP_NET_BIND_SERVICE (as pasta keeps it), and hands
  out listening sockets over a socketpair (SCM_RIGHTS). It exits when the
  daemon closes its end (EOF), whichever way the daemon ends.
  As in pasta, ``-U auto`` also forwards the ports of the host's TCP listeners.
* **TCP.** A connection accepted in the namespace is connected, non-blocking,
  to the host port; nothing is read from the client until that connect
  completes. Refused (or no answer within ``CONNECT_TIMEOUT``): the client is
  reset (SO_LINGER 0). Then bytes go both ways, each direction with at most
  ``HIGH_WATER`` bytes pending in user space: while the destination has that
  much queued, its source is not read (back-pressure through the kernel's
  windows, no busy loop). A FIN from one side becomes shutdown(SHUT_WR) on the
  other once the pending bytes are out (half-close, both directions); when
  both directions are shut, both sockets close. A reset or error on either
  side is an abortive close (RST) of the other one.
* **UDP.** A datagram to a namespace loopback port from (client address,
  port) is sent from a per-client host socket, bound to the client's port on
  the host loopback when free (pasta keeps source ports too; else an
  ephemeral one), connected to host loopback:port. What comes back on it is
  sent to the client from the namespace listener. Flows idle for
  ``UDP_TIMEOUT`` (180 s, passt's UDP_CONN_TIMEOUT) are closed.
* **Limits.** ``MAX_TCP_CONNS`` relayed connections (the listeners are paused
  at the limit, or for a second on EMFILE/ENFILE), ``MAX_UDP_FLOWS`` flows
  (new clients are dropped and counted above it).

Counters: ``splice.tcp.conns/closed/refused/reset``, ``splice.tcp.bytes_to_host``,
``splice.tcp.bytes_to_ns``; ``splice.udp.flows/expired``, ``splice.udp.to_host``,
``splice.udp.to_ns`` (datagrams), ``splice.udp.bytes_to_host/bytes_to_ns``,
``splice.udp.refused`` (ICMP port unreachable from the host); drops
``splice-tcp-accept``, ``splice-tcp-limit``, ``splice-udp-limit``,
``splice-udp-send``, ``splice-udp-socket``, ``splice-bind``.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import Iterable
from typing import Any

from passtcore import netns as _netns
from passtcore.run.counters import Counters
from passtcore.run.io.portscan import PortScanner, loopback_or_any

log = logging.getLogger("passtcore.splice")

CHUNK = 1 << 16               # one recv_into
HIGH_WATER = 1 << 18          # bytes pending towards one side before its source pauses
READS_PER_WAKEUP = 16         # then yield to other descriptors
ACCEPTS_PER_WAKEUP = 64
DATAGRAMS_PER_WAKEUP = 64
CONNECT_TIMEOUT = 10.0        # passt's SYN_TIMEOUT
UDP_TIMEOUT = 180.0           # passt's UDP_CONN_TIMEOUT
SCAN_INTERVAL = 1.0           # passt's FWD_PORT_SCAN interval
FAILED_RETRY = 10.0           # auto: retry a port whose namespace bind failed after this
MAX_TCP_CONNS = 16384
MAX_UDP_FLOWS = 8192

LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
_LINGER_RST = struct.pack("ii", 1, 0)
_QUIET_BIND = (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)  # the namespace lacks that family


class SpliceError(RuntimeError):
    """A fatal set-up error (exit 1 before forking)."""

    fatal = True


# -- listening sockets inside the namespace -------------------------------------------

def make_listener(kind: int, family: int, port: int) -> socket.socket:
    """A non-blocking socket bound to the loopback of ``family`` in the calling
    thread's namespace; listening when ``kind`` is SOCK_STREAM."""
    s = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((LOOPBACK[family], port))
        if kind == socket.SOCK_STREAM:
            s.listen(128)
    except BaseException:
        s.close()
        raise
    return s


Request = tuple[int, int, int]            # (SOCK_STREAM | SOCK_DGRAM, family, port)


def bind_in_thread(netns_path: str, requests: list[Request], timeout: float = 120.0
                   ) -> list[Any]:
    """``make_listener`` for each request, from one short-lived thread inside
    ``netns_path``: a socket, or the OSError it failed with, per request."""
    def bind_all() -> list[Any]:
        out: list[Any] = []
        for kind, family, port in requests:
            try:
                out.append(make_listener(kind, family, port))
            except OSError as exc:
                out.append(exc)
        return out

    try:
        return _netns.call_in(netns_path, bind_all, timeout, what="binding")
    except TimeoutError as exc:
        raise SpliceError(str(exc)) from None


_REQ = struct.Struct("!iiH")
_REP = struct.Struct("!i")
PR_SET_KEEPCAPS, PR_SET_NO_NEW_PRIVS = 8, 38
CAP_NET_BIND_SERVICE = 10
_CAP_V3 = 0x20080522


def _drop_keeping_bind(ids: tuple[int, int] | None) -> None:
    """setresuid/gid to ``ids`` keeping CAP_NET_BIND_SERVICE only (best effort)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if ids is not None and ids != (os.geteuid(), os.getegid()):
        uid, gid = ids
        libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)
        try:
            os.setgroups([])
        except PermissionError:
            pass  # a user namespace with setgroups "deny"
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    header = ctypes.create_string_buffer(struct.pack("Ii", _CAP_V3, 0), 8)
    bit = 1 << CAP_NET_BIND_SERVICE
    data = ctypes.create_string_buffer(struct.pack("6I", bit, bit, 0, 0, 0, 0), 24)
    libc.capset(header, data)  # fails harmlessly if we never had it
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


class NsBinder:
    """A forked helper inside the target namespace that makes listening sockets on
    request (``bind``) and passes them back over a SOCK_SEQPACKET socketpair."""

    def __init__(self, netns_path: str, ids: tuple[int, int] | None = None,
                 timeout: float = 10.0) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # never returns
            code = 1
            try:
                parent.close()
                code = _helper_main(child, netns_path, ids)
            finally:
                os._exit(code)
        child.close()
        self.pid = pid
        self.sock = parent
        self.sock.settimeout(timeout)
        self.dead = False
        try:
            hello = self.sock.recv(512)
        except OSError as exc:
            hello = f"E{exc}".encode()
        if hello != b"ok":
            self.close()
            why = hello[1:].decode(errors="replace") if hello else "helper died"
            raise SpliceError(f"namespace helper for {netns_path}: {why}")

    def bind(self, kind: int, family: int, port: int) -> Any:
        """A listening socket in the namespace, or the OSError why not."""
        if self.dead:
            return OSError(errno.EPIPE, "namespace helper gone")
        try:
            self.sock.send(_REQ.pack(kind, family, port))
            msg, fds, _, _ = socket.recv_fds(self.sock, 16, 1)
        except OSError as exc:
            self.dead = True
            log.error("splice: namespace helper failed: %s", exc)
            return OSError(errno.EPIPE, "namespace helper gone")
        if len(msg) != _REP.size:
            for fd in fds:
                os.close(fd)
            self.dead = True
            return OSError(errno.EPIPE, "namespace helper gone")
        (err,) = _REP.unpack(msg)
        if not fds:
            return OSError(err or errno.EIO, os.strerror(err or errno.EIO))
        s = socket.socket(fileno=fds[0])
        s.setblocking(False)
        return s

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None  # type: ignore[assignment]
        self.dead = True
        # Our child only with -f (daemonising re-parents it); it exits on EOF.
        for _ in range(100):
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                return
            time.sleep(0.01)


def _helper_main(sock: socket.socket, netns_path: str, ids: tuple[int, int] | None) -> int:
    """The helper process: enter the namespace, drop privileges, serve requests."""
    try:
        keep = sock.fileno()
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd != keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if null > 2:
            os.close(null)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _netns.setns(fd)
        finally:
            os.close(fd)
        _drop_keeping_bind(ids)
        sock.settimeout(None)
        sock.send(b"ok")
    except BaseException as exc:
        try:
            sock.send(b"E" + str(exc).encode(errors="replace")[:400])
        except OSError:
            pass
        return 1
    while True:
        try:
            msg = sock.recv(64)
        except InterruptedError:
            continue
        except OSError:
            return 0
        if len(msg) != _REQ.size:
            return 0  # EOF: the daemon is gone
        kind, family, port = _REQ.unpack(msg)
        try:
            s = make_listener(kind, family, port)
        except OSError as exc:
            sock.send(_REP.pack(exc.errno or errno.EIO))
            continue
        except Exception:
            sock.send(_REP.pack(errno.EINVAL))
            continue
        try:
            socket.send_fds(sock, [_REP.pack(0)], [s.fileno()])
        except OSError:
            return 0
        finally:
            s.close()


# -- the relay ----------------------------------------------------------------------------

class _Listener:
    __slots__ = ("sock", "fd", "kind", "family", "port", "target", "flows")

    def __init__(self, sock: socket.socket, kind: int, family: int, port: int,
                 target: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.kind = kind
        self.family = family
        self.port = port          # in the namespace
        self.target = target      # on the host
        self.flows: dict[tuple[Any, ...], _UdpFlow] = {}


class _Side:
    """One socket of a relayed TCP connection and the bytes pending towards it."""

    __slots__ = ("sock", "fd", "out", "eof", "shut", "reading", "writing", "peer", "to_host")

    def __init__(self, sock: socket.socket, to_host: bool) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.out = bytearray()
        self.eof = False        # FIN received from this socket
        self.shut = False       # FIN sent to this socket (SHUT_WR)
        self.reading = False
        self.writing = False
        self.peer: _Side = self
        self.to_host = to_host  # True for the host-side socket


class _TcpConn:
    __slots__ = ("fwd", "ns", "host", "timer", "connected", "closed")

    def __init__(self, fwd: SpliceForwarder, ns_sock: socket.socket,
                 host_sock: socket.socket) -> None:
        self.fwd = fwd
        self.ns = _Side(ns_sock, False)
        self.host = _Side(host_sock, True)
        self.ns.peer, self.host.peer = self.host, self.ns
        self.connected = False
        self.closed = False
        self.timer: Any = None


class _UdpFlow:
    __slots__ = ("listener", "client", "key", "sock", "fd", "last")

    def __init__(self, listener: _Listener, client: Any, key: tuple[Any, ...],
                 sock: socket.socket, now: float) -> None:
        self.listener = listener
        self.client = client
        self.key = key
        self.sock = sock
        self.fd = sock.fileno()
        self.last = now


def _mode(specs: Iterable[Any]) -> tuple[str, dict[int, int], bool]:
    """("none" | "auto" | "ports", namespace port -> host port, busy ports skipped)."""
    specs = list(specs or ())
    if any(getattr(s, "mode", "") == "auto" for s in specs):
        return "auto", {}, True
    ports: dict[int, int] = {}
    quiet = False
    for s in specs:
        if getattr(s, "mode", "") in ("none", "auto"):
            continue
        ports.update(s.expand())
        quiet = quiet or s.mode == "all" or not s.forwards
    return ("ports" if ports else "none"), ports, quiet


class SpliceForwarder:
    """``-T``/``-U``: namespace loopback -> host loopback, on ``loop``.

    ``tcp_specs``/``udp_specs`` are ``portspec.PortSpec`` lists (``opts.tcp_ns``,
    ``opts.udp_ns``). Construct it in the host namespace, before privileges are
    dropped (``runas``: the identity the daemon will drop to, for the ``auto``
    helper); ``close()`` at exit. Raises ``SpliceError`` (fatal) if explicit ports
    could not be bound at all.
    """

    def __init__(self, loop: Any, counters: Counters, netns_path: str,
                 tcp_specs: Iterable[Any] = (), udp_specs: Iterable[Any] = (), *,
                 v4: bool = True, v6: bool = True, runas: tuple[int, int] | None = None,
                 udp_timeout: float = UDP_TIMEOUT, scan_interval: float = SCAN_INTERVAL,
                 scanner: PortScanner | None = None) -> None:
        self.loop = loop
        self.counters = counters
        self.netns_path = netns_path
        self.families = [f for f, on in ((socket.AF_INET, v4), (socket.AF_INET6, v6)) if on]
        self.udp_timeout = udp_timeout
        self.listeners: dict[tuple[int, int, int], _Listener] = {}  # (kind, family, port)
        self.conns: set[_TcpConn] = set()
        self.flows: set[_UdpFlow] = set()
        self.scratch = bytearray(CHUNK)
        self.view = memoryview(self.scratch)
        self.paused = False          # TCP listeners not read (limit / EMFILE)
        self.timers: list[Any] = []
        self.binder: NsBinder | None = None
        self.scanner: PortScanner | None = None
        self.auto: dict[int, bool] = {}
        self.auto_ports: dict[int, set[int]] = {socket.SOCK_STREAM: set(),
                                                socket.SOCK_DGRAM: set()}
        self.failed: dict[tuple[int, int], float] = {}
        self.closed = False
        tmode, tports, tquiet = _mode(tcp_specs)
        umode, uports, uquiet = _mode(udp_specs)
        try:
            requests: list[tuple[Request, int, bool]] = []
            for kind, ports, quiet in ((socket.SOCK_STREAM, tports, tquiet),
                                       (socket.SOCK_DGRAM, uports, uquiet)):
                for port, target in sorted(ports.items()):
                    for family in self.families:
                        requests.append(((kind, family, port), target, quiet))
            if requests:
                self._bind_static(requests)
            self.auto = {socket.SOCK_STREAM: tmode == "auto", socket.SOCK_DGRAM: umode == "auto"}
            if any(self.auto.values()):
                protos = ["tcp"] if not self.auto[socket.SOCK_DGRAM] else ["tcp", "udp"]
                # In the host namespace (this thread's): -T auto forwards what is bound here.
                self.scanner = scanner or PortScanner.open(None, protos, accept=loopback_or_any)
                self.binder = NsBinder(netns_path, runas)
                self._scan()
                self.timers.append(loop.call_every(scan_interval, self._scan))
            if uports or umode == "auto":
                self.timers.append(loop.call_every(1.0, self._expire_udp))
        except BaseException:
            self.close()
            raise
        if self.listeners or any(self.auto.values()):
            log.info("Splice forwarding from namespace loopback: TCP %s, UDP %s",
                     _describe(tmode, tports), _describe(umode, uports))

    # -- listeners -------------------------------------------------------------------
    def _bind_static(self, requests: list[tuple[Request, int, bool]]) -> None:
        results = bind_in_thread(self.netns_path, [r for r, _, _ in requests])
        wanted: dict[tuple[int, int], int] = {}
        for ((kind, family, port), target, quiet), res in zip(requests, results):
            key = (kind, port)
            wanted.setdefault(key, 0)
            if isinstance(res, socket.socket):
                self._add_listener(res, kind, family, port, target)
                wanted[key] += 1
                continue
            if res.errno in (errno.EMFILE, errno.ENFILE):
                raise SpliceError("Can't open enough sockets for port specifier")
            if res.errno not in _QUIET_BIND and not quiet:
                log.warning("splice: can't bind %s port %d in the namespace (%s): %s",
                            _kind(kind), port, LOOPBACK[family], res.strerror)
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            keys = [k for k in wanted if k[0] == kind]
            if keys and not any(wanted[k] for k in keys):
                flag = "-T/--tcp-ns" if kind == socket.SOCK_STREAM else "-U/--udp-ns"
                raise SpliceError(f"Failed to bind any port for {flag}")

    def _add_listener(self, sock: socket.socket, kind: int, family: int, port: int,
                      target: int) -> _Listener:
        lst = _Listener(sock, kind, family, port, target)
        self.listeners[(kind, family, port)] = lst
        if kind == socket.SOCK_STREAM:
            if not self.paused:
                self.loop.add_reader(lst.fd, lambda: self._accept(lst))
        else:
            self.loop.add_reader(lst.fd, lambda: self._udp_from_ns(lst))
        return lst

    def _remove_listener(self, lst: _Listener) -> None:
        self.listeners.pop((lst.kind, lst.family, lst.port), None)
        for flow in list(lst.flows.values()):
            self._close_flow(flow)
        self.loop.remove_reader(lst.fd)
        lst.sock.close()

    # -- auto ---------------------------------------------------------------------------
    def _scan(self) -> None:
        if self.closed or self.scanner is None:
            return
        tcp = self.scanner.bound("tcp")
        if self.auto[socket.SOCK_STREAM]:
            self._sync(socket.SOCK_STREAM, tcp)
        if self.auto[socket.SOCK_DGRAM]:
            # pasta's UDP scan marks the TCP listening ports too (reference 3.2).
            self._sync(socket.SOCK_DGRAM, self.scanner.bound("udp") | tcp)

    def _sync(self, kind: int, wanted: set[int]) -> None:
        have = self.auto_ports[kind]
        for port in sorted(have - wanted):
            for family in self.families:
                lst = self.listeners.get((kind, family, port))
                if lst is not None:
                    self._remove_listener(lst)
            have.discard(port)
            log.debug("splice: %s port %d no longer bound on the host", _kind(kind), port)
        now = self.loop.now()
        for key in [k for k in self.failed if k[0] == kind and k[1] not in wanted]:
            del self.failed[key]
        for port in sorted(wanted - have):
            t = self.failed.get((kind, port))
            if t is not None and now - t < FAILED_RETRY:
                continue
            ok = 0
            why = ""
            for family in self.families:
                assert self.binder is not None
                res = self.binder.bind(kind, family, port)
                if isinstance(res, socket.socket):
                    self._add_listener(res, kind, family, port, port)
                    ok += 1
                elif res.errno not in _QUIET_BIND:
                    why = res.strerror or str(res)
            if ok:
                have.add(port)
                self.failed.pop((kind, port), None)
                log.debug("splice: forwarding %s port %d (auto)", _kind(kind), port)
            else:
                if (kind, port) not in self.failed:
                    log.info("splice: can't bind %s port %d in the namespace: %s",
                             _kind(kind), port, why or "no loopback address")
                self.counters.drop("splice-bind")
                self.failed[(kind, port)] = now

    # -- TCP ------------------------------------------------------------------------------
    def _pause_accepting(self, seconds: float | None) -> None:
        if self.paused:
            return
        self.paused = True
        for lst in self.listeners.values():
            if lst.kind == socket.SOCK_STREAM:
                self.loop.remove_reader(lst.fd)
        if seconds is not None:
            self.loop.call_later(seconds, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if not self.paused or self.closed or len(self.conns) >= MAX_TCP_CONNS:
            return
        self.paused = False
        for lst in list(self.listeners.values()):
            if lst.kind == socket.SOCK_STREAM:
                self.loop.add_reader(lst.fd, lambda lst=lst: self._accept(lst))

    def _accept(self, lst: _Listener) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            if len(self.conns) >= MAX_TCP_CONNS:
                self.counters.drop("splice-tcp-limit")
                self._pause_accepting(None)
                return
            try:
                ns_sock, _ = lst.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.counters.drop("splice-tcp-accept")
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_accepting(1.0)
                    return
                continue  # ECONNABORTED and the like: that one is gone
            try:
                ns_sock.setblocking(False)
                host_sock = socket.socket(lst.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                                          | socket.SOCK_CLOEXEC)
            except OSError as exc:
                _reset(ns_sock)
                self.counters.drop("splice-tcp-accept")
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._pause_accepting(1.0)
                    return
                continue
            self._start(lst, ns_sock, host_sock)

    def _start(self, lst: _Listener, ns_sock: socket.socket, host_sock: socket.socket) -> None:
        conn = _TcpConn(self, ns_sock, host_sock)
        self.conns.add(conn)
        self.counters.inc("splice.tcp.conns")
        for s in (ns_sock, host_sock):
            try:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        err = host_sock.connect_ex((LOOPBACK[lst.family], lst.target))
        if err in (0, errno.EINPROGRESS, errno.EAGAIN):
            conn.timer = self.loop.call_later(CONNECT_TIMEOUT, lambda: self._connect_timeout(conn))
            self.loop.add_writer(conn.host.fd, lambda: self._connected(conn))
        else:
            self._refused(conn, err)

    def _connect_timeout(self, conn: _TcpConn) -> None:
        if not conn.connected and not conn.closed:
            self._refused(conn, errno.ETIMEDOUT)

    def _connected(self, conn: _TcpConn) -> None:
        if conn.closed:
            return
        err = conn.host.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err in (errno.EINPROGRESS, errno.EALREADY):
            return
        self.loop.remove_writer(conn.host.fd)
        if err:
            self._refused(conn, err)
            return
        conn.connected = True
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        for side in (conn.ns, conn.host):
            self._want_read(conn, side)

    def _refused(self, conn: _TcpConn, err: int) -> None:
        self.counters.inc("splice.tcp.refused")
        log.debug("splice: connect to host port failed: %s", os.strerror(err))
        self._close(conn, abort=True)

    def _want_read(self, conn: _TcpConn, side: _Side) -> None:
        if not side.reading and not side.eof and not conn.closed:
            side.reading = True
            self.loop.add_reader(side.fd, lambda: self._readable(conn, side))

    def _stop_read(self, side: _Side) -> None:
        if side.reading:
            side.reading = False
            self.loop.remove_reader(side.fd)

    def _want_write(self, conn: _TcpConn, side: _Side) -> None:
        if not side.writing:
            side.writing = True
            self.loop.add_writer(side.fd, lambda: self._writable(conn, side))

    def _readable(self, conn: _TcpConn, src: _Side) -> None:
        dst = src.peer
        view = self.view
        counters = self.counters
        name = "splice.tcp.bytes_to_host" if dst.to_host else "splice.tcp.bytes_to_ns"
        for _ in range(READS_PER_WAKEUP):
            if len(dst.out) >= HIGH_WATER:
                self._stop_read(src)  # back-pressure: resumed by _writable
                return
            try:
                n = src.sock.recv_into(self.scratch)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(conn, abort=True)
                return
            if n == 0:
                src.eof = True
                self._stop_read(src)
                if not dst.out:
                    self._shutdown(conn, dst)
                return
            counters.inc(name, n)
            if dst.out:
                dst.out += view[:n]
                continue
            try:
                sent = dst.sock.send(view[:n])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn, abort=True)
                return
            if sent < n:
                dst.out += view[sent:n]
                self._want_write(conn, dst)
            if n < CHUNK:
                return  # drained, most likely: level-triggered epoll tells us otherwise

    def _writable(self, conn: _TcpConn, dst: _Side) -> None:
        if dst.out:
            try:
                with memoryview(dst.out) as mv:
                    sent = dst.sock.send(mv)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(conn, abort=True)
                return
            del dst.out[:sent]
        if dst.out:
            if len(dst.out) < HIGH_WATER:
                self._want_read(conn, dst.peer)
            return
        dst.writing = False
        self.loop.remove_writer(dst.fd)
        src = dst.peer
        if src.eof:
            self._shutdown(conn, dst)
        else:
            self._want_read(conn, src)

    def _shutdown(self, conn: _TcpConn, side: _Side) -> None:
        """FIN towards ``side`` (its peer sent one and everything pending is out)."""
        if side.shut or conn.closed:
            return
        side.shut = True
        try:
            side.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn, abort=True)
            return
        if conn.ns.shut and conn.host.shut:
            self._close(conn, abort=False)

    def _close(self, conn: _TcpConn, abort: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.conns.discard(conn)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        if abort and conn.connected:
            self.counters.inc("splice.tcp.reset")
        elif not abort:
            self.counters.inc("splice.tcp.closed")
        for side in (conn.ns, conn.host):
            self.loop.remove_reader(side.fd)
            self.loop.remove_writer(side.fd)
            side.reading = side.writing = False
            side.out = bytearray()
            if abort:
                _reset(side.sock)
            else:
                side.sock.close()
        if self.paused and len(self.conns) < MAX_TCP_CONNS:
            self._resume_accepting()

    # -- UDP ------------------------------------------------------------------------------
    def _udp_from_ns(self, lst: _Listener) -> None:
        view = self.view
        now = self.loop.now()
        counters = self.counters
        for _ in range(DATAGRAMS_PER_WAKEUP):
            try:
                n, client = lst.sock.recvfrom_into(self.scratch)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # a pending ICMP error on the listener: nothing to do
            key = client[:2]
            flow = lst.flows.get(key)
            if flow is None:
                flow = self._new_flow(lst, client, key, now)
                if flow is None:
                    continue
            flow.last = now
            for attempt in (0, 1):
                try:
                    flow.sock.send(view[:n])
                except ConnectionRefusedError:
                    if attempt == 0:
                        continue  # the error of an earlier datagram: this one is not sent yet
                    counters.drop("splice-udp-send")
                except OSError:
                    counters.drop("splice-udp-send")
                else:
                    counters.inc("splice.udp.to_host")
                    counters.inc("splice.udp.bytes_to_host", n)
                break

    def _new_flow(self, lst: _Listener, client: Any, key: tuple[Any, ...], now: float
                  ) -> _UdpFlow | None:
        if len(self.flows) >= MAX_UDP_FLOWS:
            self.counters.drop("splice-udp-limit")
            return None
        try:
            s = socket.socket(lst.family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                              | socket.SOCK_CLOEXEC)
        except OSError:
            self.counters.drop("splice-udp-socket")
            return None
        try:
            try:
                s.bind((LOOPBACK[lst.family], client[1]))  # keep the source port if free
            except OSError:
                s.bind((LOOPBACK[lst.family], 0))
            s.connect((LOOPBACK[lst.family], lst.target))
        except OSError:
            s.close()
            self.counters.drop("splice-udp-socket")
            return None
        flow = _UdpFlow(lst, client, key, s, now)
        lst.flows[key] = flow
        self.flows.add(flow)
        self.counters.inc("splice.udp.flows")
        self.loop.add_reader(flow.fd, lambda: self._udp_from_host(flow))
        return flow

    def _udp_from_host(self, flow: _UdpFlow) -> None:
        view = self.view
        counters = self.counters
        lst = flow.listener
        for _ in range(DATAGRAMS_PER_WAKEUP):
            try:
                n = flow.sock.recv_into(self.scratch)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                counters.inc("splice.udp.refused")  # ICMP port unreachable from the host
                continue
            except OSError:
                return
            flow.last = self.loop.now()
            try:
                lst.sock.sendto(view[:n], flow.client)
            except OSError:
                counters.drop("splice-udp-send")
                continue
            counters.inc("splice.udp.to_ns")
            counters.inc("splice.udp.bytes_to_ns", n)

    def _close_flow(self, flow: _UdpFlow) -> None:
        if flow.listener.flows.pop(flow.key, None) is None:
            return
        self.flows.discard(flow)
        self.loop.remove_reader(flow.fd)
        flow.sock.close()

    def _expire_udp(self) -> None:
        now = self.loop.now()
        for flow in [f for f in self.flows if now - f.last >= self.udp_timeout]:
            self._close_flow(flow)
            self.counters.inc("splice.udp.expired")

    # -- inspection and shutdown ---------------------------------------------------------
    def bound_ports(self, kind: int = socket.SOCK_STREAM) -> set[int]:
        """Namespace ports with a listener now (both protocols: SOCK_STREAM/SOCK_DGRAM)."""
        return {p for (k, _, p) in self.listeners if k == kind}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for t in self.timers:
            t.cancel()
        self.timers.clear()
        for conn in list(self.conns):
            self._close(conn, abort=False)
        for lst in list(self.listeners.values()):
            self._remove_listener(lst)
        if self.binder is not None:
            self.binder.close()
            self.binder = None
        if self.scanner is not None:
            self.scanner.close()
            self.scanner = None


def _reset(sock: socket.socket) -> None:
    """Abortive close: RST to the peer."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    sock.close()


def _kind(kind: int) -> str:
    return "TCP" if kind == socket.SOCK_STREAM else "UDP"


def _describe(mode: str, ports: dict[int, int]) -> str:
    if mode != "ports":
        return mode
    items = sorted(ports.items())
    text = ",".join(f"{p}" if p == t else f"{p}:{t}" for p, t in items[:8])
    return text + (f",... ({len(items)} ports)" if len(items) > 8 else "")


def from_options(loop: Any, counters: Counters, opts: Any,
                 runas: tuple[int, int] | None = None) -> SpliceForwarder | None:
    """The forwarder for ``opts.tcp_ns``/``opts.udp_ns`` (None if there is nothing to
    forward), honouring --no-tcp/--no-udp and -4/-6."""
    tcp = [] if getattr(opts, "no_tcp", False) else list(opts.tcp_ns or ())
    udp = [] if getattr(opts, "no_udp", False) else list(opts.udp_ns or ())
    if _mode(tcp)[0] == "none" and _mode(udp)[0] == "none":
        return None
    return SpliceForwarder(loop, counters, opts.netns, tcp, udp,
                           v4=not opts.ipv6_only, v6=not opts.ipv4_only, runas=runas)
