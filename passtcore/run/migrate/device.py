"""Saving and loading the daemon's device state (the vhost-user front end's
SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE), over the fd QEMU hands us.

Source (``save``), with the guest stopped:
  1. header and the addresses learned from the guest;
  2. the established TCP connections, each switched into repair mode by the
     helper (one batch); the table part of every flow, then per flow the
     socket's repair state and queues (sockets.dump). A socket that cannot be
     dumped, or every one when no helper is connected, gets a "skip" record:
     the target resets that connection to the guest at once, instead of
     leaving it hung. The dumped connections leave the engine; their sockets
     stay open in repair mode (silent: no FIN, no RST; ``--migrate-no-linger``
     closes them at once, needed when both daemons share a network namespace).
  3. If the guest later resumes here (the rings restart: the migration
     failed after we saved), everything is rolled back: repair mode off,
     connections back in the engine; with ``--migrate-no-linger`` they cannot
     come back and are reset to the guest.
Target (``load``), before the guest resumes: the whole stream is read and
checked first, so a bad or truncated one changes nothing (QEMU fails the
migration, the source keeps the guest). Then each connection gets a new
socket, repaired (bind, sequence numbers, connect without a handshake,
queues, options, window), and joins the TCP engine; when the guest's rings
start, each gets an ACK and the host data the guest has not acknowledged.

UDP and ICMP flows are not part of passt's format: they are counted
(``migrate_udp_flows_dropped``, ``migrate_icmp_flows_dropped``) and the
guest's next datagram or echo request makes a new flow on the target.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import socket
import time
from typing import Any

from passtcore.run import nat
from passtcore.run.migrate import sockets, wire
from passtcore.run.migrate.repair import REPAIR_OFF, REPAIR_ON, RepairChannel, RepairError
from passtcore.run.migrate.wire import StateError

log = logging.getLogger("passtcore.run")

IO_TIMEOUT = 10.0      # the other end of the state fd made no progress for this long


class _Fd:
    """Blocking-with-deadline reads and writes on the state fd (a pipe)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.bytes = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if not select.select([], [self.fd], [], IO_TIMEOUT)[1]:
                raise StateError(f"the state fd took nothing for {IO_TIMEOUT:.0f} s")
            n = os.write(self.fd, view)
            view = view[n:]
            self.bytes += n

    def read(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            if not select.select([self.fd], [], [], IO_TIMEOUT)[0]:
                raise StateError(f"the state fd gave nothing for {IO_TIMEOUT:.0f} s")
            data = os.read(self.fd, min(left, 1 << 20))
            if not data:
                raise StateError(f"the device state ends early (after {self.bytes} bytes)")
            chunks.append(data)
            left -= len(data)
            self.bytes += len(data)
        return b"".join(chunks)


class DeviceState:
    """One daemon's migration role: ``save(fd)``, ``load(fd)`` (both return an
    errno-style result, 0 for success), ``rings_started()`` from the front end."""

    def __init__(self, ctx: Any, repair_path: str | None, no_linger: bool = False) -> None:
        self.ctx = ctx
        self.no_linger = no_linger
        self.repair: RepairChannel | None = None
        if repair_path:
            self.repair = RepairChannel(repair_path)
            ctx.loop.add_reader(self.repair.fileno(), self.repair.accept)
            log.info("repair: waiting for a TCP_REPAIR helper on %s", repair_path)
        self.saved: list[Any] = []        # source: connections handed over (rollback)
        self.pending: list[Any] = []      # target: connections to wake when the rings run
        self.resets: list[Any] = []       # target: connections to reset to the guest

    @property
    def tcp(self) -> Any:
        return self.ctx.engines.get("tcp")

    def _count(self, name: str, n: int = 1) -> None:
        if n:
            self.ctx.counters.inc(name, n)

    def close(self) -> None:
        if self.repair is not None:
            self.ctx.loop.remove_reader(self.repair.fileno())
            self.repair.close()

    def _repair_on(self, socks: list[socket.socket]) -> bool:
        """Repair mode on for ``socks`` (both sides of a migration): whether the
        helper took them; if not, their connections are reset, and the log says why."""
        if not socks:
            return False
        why = ""
        if self.repair is None:
            why = "no --repair-path"
        elif not self.repair.wait():
            why = f"no TCP_REPAIR helper connected ({self.repair.path})"
        else:
            try:
                self.repair.set(socks, REPAIR_ON)
                return True
            except RepairError as exc:
                why = str(exc)
        log.warning("migration: %s: %d TCP connections cannot move and are reset", why,
                    len(socks))
        return False

    # -- source -------------------------------------------------------------
    def save(self, fd: int) -> int:
        start = time.monotonic()
        out = _Fd(fd)
        ctx = self.ctx
        tcp = self.tcp
        conns = tcp.migratable() if tcp is not None else []
        for name in ("udp", "icmp"):
            engine = ctx.engines.get(name)
            if engine is not None:
                self._count(f"migrate_{name}_flows_dropped", len(ctx.flows.objects(engine)))
        helper = self._repair_on([c.sock for c in conns])
        transfers = [tcp.transfer(c) for c in conns]
        # every socket frozen first, then each dumped: one peer's data cannot
        # get in while the others are being dumped
        dumps: list[tuple[wire.TcpTransferExt, bytes, bytes]] = []
        if helper:
            for c in conns:
                sockets.freeze(c.sock)
            for c in conns:
                dumps.append(self._dump(c))
            ends = [sockets.rcv_seq(c.sock) if c.sock is not None else 0 for c in conns]
        else:
            dumps = [(wire.TcpTransferExt(), b"", b"")] * len(conns)
        try:
            out.write(wire.header())
            out.write(wire.Addresses(
                wire.inany(ctx.addr_seen6 or bytes(16)),
                wire.inany(ctx.addr_ll_seen6 or bytes(16)),
                ctx.addr_seen4 or bytes(4), ctx.guest_mac).pack())
            out.write(wire.COUNT.pack(len(conns)))
            for t in transfers:
                out.write(t.pack())
            for ext, sndq, rcvq in dumps:
                out.write(ext.pack() + sndq + rcvq)
            if helper:
                # a frozen socket with nothing queued takes one more segment: had
                # one come since its dump, the target would lack it (the peer
                # saw it acknowledged). Fail instead: the guest stays here.
                moved = [c for c, e in zip(conns, ends)
                         if c.sock is not None and sockets.rcv_seq(c.sock) != e]
                if moved:
                    raise StateError(f"data came in on {len(moved)} connections after "
                                     "their state was taken")
        except (OSError, StateError) as exc:
            log.error("migration: can't send the device state: %s", exc)
            self._rollback_repair(conns if helper else [])
            return _errno(exc)
        moved_n = sum(1 for ext, _, _ in dumps if ext.tcpi_state)
        if helper:
            for c in conns:
                tcp.detach(c, close=self.no_linger)
            self.saved = conns
        self._count("migrate_saved")
        self._count("migrate_tcp_moved", moved_n)
        self._count("migrate_tcp_reset", len(conns) - moved_n)
        log.info("migration: device state sent: %d bytes, %d TCP connections (%d in repair "
                 "mode) in %.1f ms", out.bytes, len(conns), moved_n,
                 (time.monotonic() - start) * 1000)
        return 0

    def _dump(self, c: Any) -> tuple[wire.TcpTransferExt, bytes, bytes]:
        """One frozen socket's state. With --migrate-no-linger the socket closes
        right after (in repair mode: the peer sees nothing), so that a target in
        the same network namespace can connect the same 4-tuple as soon as it
        reads the record; the dump is taken again if data came in meanwhile."""
        skip = (wire.TcpTransferExt(), b"", b"")
        for _ in range(4):
            try:
                before = sockets.rcv_seq(c.sock)
                state = sockets.dump(c.sock)
                if not self.no_linger:
                    return state
                if sockets.rcv_seq(c.sock) == before:
                    self.tcp.detach(c, close=True)
                    return state
            except (OSError, StateError) as exc:
                log.warning("migration: connection %s: can't dump the socket: %s",
                            _name(c), exc)
                return skip
        log.warning("migration: connection %s: its queues kept moving", _name(c))
        return skip

    def _rollback_repair(self, conns: list[Any]) -> None:
        """Sockets of a failed save back to normal: receive buffer, repair off;
        those closed already (--migrate-no-linger) are reset to the guest."""
        if self.repair is None:
            return
        live = [c for c in conns if c.sock is not None]
        for c in live:
            sockets.thaw(c.sock, self.tcp.sock_buf)
        try:
            self.repair.set([c.sock for c in live], REPAIR_OFF)
        except RepairError as exc:
            log.error("migration: can't turn repair mode off: %s; resetting", exc)
            live = []
        for c in conns:
            if c not in live:
                self.tcp.reset_lost(c)

    def rings_started(self) -> None:
        """The guest runs (again): after a save, here, the migration failed; after
        a load, connections restored or reset now reach it."""
        if self.saved:
            conns, self.saved = self.saved, []
            live = [c for c in conns if c.sock is not None]
            log.warning("migration: the guest resumed here: taking back %d TCP connections",
                        len(conns))
            self._count("migrate_rollbacks")
            for c in live:
                sockets.thaw(c.sock, self.tcp.sock_buf)
            try:
                if live and self.repair is not None:
                    self.repair.set([c.sock for c in live], REPAIR_OFF)
            except RepairError as exc:
                log.error("migration: can't turn repair mode off: %s", exc)
                live = []
            for c in conns:
                if c in live:
                    self.tcp.reattach(c)
                else:
                    self.tcp.reset_lost(c)
        if self.pending or self.resets:
            pending, self.pending = self.pending, []
            resets, self.resets = self.resets, []
            for c in resets:
                self.tcp.reset_lost(c)
            for c in pending:
                self.tcp.wake(c)

    # -- target ------------------------------------------------------------------
    def load(self, fd: int) -> int:
        start = time.monotonic()
        src = _Fd(fd)
        try:
            wire.check_header(src.read(wire.HEADER.size))
            addrs = wire.Addresses.unpack(src.read(wire.ADDRESSES.size))
            (count,) = wire.COUNT.unpack(src.read(wire.COUNT.size))
            limit = self.ctx.flows.capacity
            if count > limit:
                raise StateError(f"{count} TCP flows, more than the flow table holds")
            flows = [wire.TcpTransfer.unpack(src.read(wire.TRANSFER_SIZE))
                     for _ in range(count)]
            exts = []
            for _ in range(count):
                ext = wire.TcpTransferExt.unpack(src.read(wire.EXT.size))
                queues = ((src.read(ext.sndq), src.read(ext.rcvq)) if ext.tcpi_state
                          else (b"", b""))
                exts.append((ext, *queues))
            if os.read(fd, 1) if select.select([fd], [], [], 0)[0] else b"":
                raise StateError("data after the end of the device state")
        except (OSError, StateError, ValueError) as exc:
            log.error("migration: bad device state: %s", exc)
            self._count("migrate_bad_state")
            return _errno(exc)
        self._apply_addresses(addrs)
        restored = self._restore(flows, exts)
        self._count("migrate_loaded")
        self._count("migrate_tcp_restored", restored)
        self._count("migrate_tcp_reset", count - restored)
        log.info("migration: device state received: %d bytes, %d TCP connections, %d "
                 "restored, in %.1f ms", src.bytes, count, restored,
                 (time.monotonic() - start) * 1000)
        return 0

    def _apply_addresses(self, a: wire.Addresses) -> None:
        ctx = self.ctx
        if any(a.mac):
            ctx.guest_mac = bytes(a.mac)
        if any(a.addr4):
            ctx.addr_seen4 = bytes(a.addr4)
        if any(a.addr6):
            ctx.addr_seen6 = wire.uninany(a.addr6)
        if any(a.addr6_ll):
            ctx.addr_ll_seen6 = wire.uninany(a.addr6_ll)

    def _restore(self, flows: list[wire.TcpTransfer], exts: list[tuple]) -> int:
        tcp = self.tcp
        jobs = [_Job(t, *e) for t, e in zip(flows, exts)]
        for job in jobs:
            if job.ext.tcpi_state and tcp is not None:
                host = job.t.host()
                family = socket.AF_INET if host.eaddr[:12] == wire.V4MAPPED else socket.AF_INET6
                try:
                    job.sock = tcp.repair_socket(family)
                except OSError as exc:
                    log.warning("migration: socket(): %s", exc)
        live = [j for j in jobs if j.sock is not None]
        helper = self._repair_on([j.sock for j in live])
        if not helper:
            _drop(live)
            live = []
        for j in live:
            host = j.t.host()
            try:
                sockets.restore_in_repair(
                    j.sock, j.ext, nat.sockaddr(wire.uninany(host.oaddr), host.oport),
                    nat.sockaddr(wire.uninany(host.eaddr), host.eport,
                                 nat.scope_id(self.ctx.conf, wire.uninany(host.eaddr))),
                    j.sndq, j.rcvq)
            except (OSError, StateError) as exc:
                log.warning("migration: connection to %s port %d: %s",
                            _addr(host.eaddr), host.eport, exc)
                _drop([j])   # still in repair mode: closing it sends the peer nothing
        live = [j for j in live if j.sock is not None]
        try:
            if live:
                self.repair.set([j.sock for j in live], REPAIR_OFF)
        except RepairError as exc:
            log.error("migration: can't turn repair mode off: %s", exc)
            _drop(live)
        restored = 0
        for j in jobs:
            c = None
            if j.sock is not None:
                try:
                    sockets.restore_after_repair(j.sock, j.ext, j.sndq)
                    c = tcp.adopt(j.t, j.sock)
                except (OSError, StateError) as exc:
                    log.warning("migration: connection: %s", exc)
                if c is None:
                    _drop([j])
            if c is not None:
                self.pending.append(c)
                restored += 1
            elif tcp is not None:
                self.resets.append(tcp.ghost(j.t))
        return restored


class _Job:
    """One TCP connection being restored on the target."""
    __slots__ = ("t", "ext", "sndq", "rcvq", "sock")

    def __init__(self, t: wire.TcpTransfer, ext: wire.TcpTransferExt, sndq: bytes,
                 rcvq: bytes) -> None:
        self.t, self.ext, self.sndq, self.rcvq = t, ext, sndq, rcvq
        self.sock: socket.socket | None = None


def _drop(jobs: list[_Job]) -> None:
    for j in jobs:
        if j.sock is not None:
            j.sock.close()
            j.sock = None


def _errno(exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EINVAL if isinstance(exc, (StateError, ValueError)) else errno.EIO


def _addr(a: bytes) -> str:
    a = wire.uninany(a)
    return socket.inet_ntop(socket.AF_INET if len(a) == 4 else socket.AF_INET6, a)


def _name(c: Any) -> str:
    return f"{_addr(c.gaddr)}:{c.gport} -> {_addr(c.raddr)}:{c.rport}"
