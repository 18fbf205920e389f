"""The vhost-user front end: QEMU's virtio-net device served from this process.

What KubeVirt v1.6+ runs (``passt --vhost-user``, started by libvirt): QEMU
connects to our UNIX socket (``-s``), hands over the guest's memory (memfd
regions, SCM_RIGHTS) and the two virtqueues of a virtio-net device (0: RX,
frames to the guest; 1: TX, frames from it), and from then on the data never
passes through QEMU: we read the guest's TX buffers and fill its RX buffers
in its memory, woken by its kick eventfds, waking it through call eventfds.
Facts: ../shared/docs/vhost-user.md and QEMU's docs/interop/vhost-user.rst.

This module has two halves:

* ``Session``: the control channel, sans-IO. ``handle(request, flags,
  payload, fds)`` applies one message and returns the reply bytes (or None)
  plus what the I/O half must do (map memory, watch a kick fd, start or stop
  a ring). Every request upstream passt handles is handled; an unknown
  request or a payload of the wrong size is answered with a failure when the
  front end asked for a reply, counted (``drop.vhost-*``) and otherwise
  ignored; fds that come with a message are closed unless kept.
* ``VhostUserFrontend``: the socket, the memory mappings, the eventfds and
  the data path, with the virtqueues in the ``passtcore.virtq`` kernel (Cython,
  with a pure twin): a kick on TX pops up to ``TX_BATCH`` frames into one
  buffer and hands them to the dispatcher as one batch (the front-end
  interface of io/frontend.py); frames the engines commit are copied from the
  slots into the guest's RX buffers (MRG_RXBUF: a frame may span several).

Features offered: VERSION_1, MRG_RXBUF, INDIRECT_DESC, EVENT_IDX,
PROTOCOL_FEATURES (with REPLY_ACK) and, beyond passt, the offloads CSUM,
GUEST_CSUM, HOST_TSO4/6 and GUEST_TSO4/6: a guest at MTU 1500 then sends and
takes 64 KiB TCP segments (the virtio-net header carries the GSO size,
``vnet.py``), so the daemon reads and writes 64 KiB per host socket call
whatever the guest's MTU. A guest that does not ack them gets plain frames.
TCP host data is peeked straight into the guest's receive buffers
(``push_direct``); everything else is built in our slots and copied.

Live migration (../shared/docs/vhost-user.md section 3): LOG_ALL with a
shared log (LOG_SHMFD), in which the virtqueue kernel marks every page it
writes while QEMU copies the guest's memory; then DEVICE_STATE: on
SET_DEVICE_STATE_FD we answer "no fd of ours" and stream the daemon's state
into (source) or out of (target) QEMU's pipe at once, in passt's format
(``run/migrate``); CHECK_DEVICE_STATE reports the result.
"""
from __future__ import annotations

import errno
import logging
import mmap
import os
import select
import socket
import struct
import time
import traceback
from array import array
from collections.abc import Callable, Sequence
from typing import Any

import passtcore
from passtcore.run.counters import Counters
from passtcore.run.io import vnet
from passtcore.run.io.frontend import Frontend, OnBatch
from passtcore.run.io.loop import Loop

log = logging.getLogger("passtcore.run")

# requests (vhost-user.rst, "Front-end message types")
GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER, SET_MEM_TABLE = 1, 2, 3, 4, 5
SET_LOG_BASE, SET_LOG_FD, SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE = 6, 7, 8, 9, 10
GET_VRING_BASE, SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR = 11, 12, 13, 14
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_VRING_ENABLE = 15, 16, 17, 18
SEND_RARP, SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE = 19, 42, 43
NAMES = {v: k for k, v in list(globals().items()) if k.isupper() and isinstance(v, int)
         and 0 < v < 64}

VERSION = 0x1
F_REPLY = 0x4
F_NEED_REPLY = 0x8
HDR = struct.Struct("<III")
MAX_PAYLOAD = 4096          # the largest message we take (a memory table is 264 bytes)
MAX_FDS = 8

# virtio-net / vhost feature bits
F_CSUM = 1 << 0             # the guest may send checksum-partial frames (we need no checksums)
F_GUEST_CSUM = 1 << 1       # ... and takes them
F_GUEST_TSO4 = 1 << 7       # the guest takes 64 KiB TCP segments (a GSO header says how to cut)
F_GUEST_TSO6 = 1 << 8
F_HOST_TSO4 = 1 << 11       # the guest sends them
F_HOST_TSO6 = 1 << 12
OFFLOADS = F_CSUM | F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_HOST_TSO4 | F_HOST_TSO6
F_MRG_RXBUF = 1 << 15
F_LOG_ALL = 1 << 26         # dirty-page logging (live migration)
F_INDIRECT_DESC = 1 << 28
F_EVENT_IDX = 1 << 29
F_PROTOCOL_FEATURES = 1 << 30
F_VERSION_1 = 1 << 32
FEATURES = (F_VERSION_1 | F_MRG_RXBUF | F_INDIRECT_DESC | F_EVENT_IDX | F_PROTOCOL_FEATURES
            | F_LOG_ALL | OFFLOADS)
PROTOCOL_F_LOG_SHMFD = 1 << 1
PROTOCOL_F_REPLY_ACK = 1 << 3
PROTOCOL_F_DEVICE_STATE = 1 << 19
PROTOCOL_FEATURES = PROTOCOL_F_REPLY_ACK | PROTOCOL_F_LOG_SHMFD | PROTOCOL_F_DEVICE_STATE
STATE_SAVE, STATE_LOAD = 0, 1   # SET_DEVICE_STATE_FD directions; phase 0 (stopped) only
NUM_QUEUES = 2
RX, TX = 0, 1
VRING_NOFD = 0x100
VRING_IDX_MASK = 0xFF

NET_HDR_LEN = 12            # virtio_net_hdr_mrg_rxbuf (VERSION_1)
TX_BATCH = 64               # frames per pop, per batch
TX_ROUNDS = 16              # pops per kick at most (the loop serves the others in between)
FRAME_MAX = 65536 + 14


class VhostError(Exception):
    """A message that cannot be applied: ``reason`` is its counter name."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class Ring:
    """What the front end told us about one virtqueue."""

    __slots__ = ("num", "desc", "used", "avail", "base", "kick", "call", "enabled", "started",
                 "queue")

    def __init__(self) -> None:
        self.num = 0
        self.desc = self.used = self.avail = 0
        self.base = 0
        self.kick = -1          # eventfd from the guest ("buffers available"), -1: none
        self.call = -1          # eventfd to the guest ("buffers used"), -1: none (polling)
        self.enabled = False
        self.started = False    # has a kick fd (the ring runs once enabled, too)
        self.queue: Any = None  # passtcore.virtq.Virtqueue, built on first use


def _runs(ring: Ring) -> bool:
    """Enabled, and started since it was last stopped (GET_VRING_BASE): a ring the
    front end enables again before it has set it up anew (QEMU does, when a guest
    resumes after a failed migration) is not used until its kick fd comes; the
    base it sends with it would otherwise rewind over buffers used meanwhile."""
    return ring.enabled and ring.started


def _requeue(ring: Ring) -> None:
    """Drop a ring's queue (rebuilt over the new addresses or mappings on next use)
    but keep its place: the new queue starts from the last available index taken,
    not from the base the ring was started at, or a running ring (a memory table
    sent again on memory hotplug) would take the guest's old chains once more."""
    if ring.queue is not None:
        ring.base = ring.queue.last_avail
        ring.queue = None


class Session:
    """The control channel's state machine (see the module docstring)."""

    def __init__(self) -> None:
        self.features = 0
        self.protocol_features = 0
        self.owner = False
        self.regions: list[tuple[int, int, int, int, int]] = []  # gpa, size, uva, offset, fd
        self.rings = [Ring() for _ in range(NUM_QUEUES)]
        self.dirty_memory = False   # a new table: the I/O half re-maps and rebuilds the queues
        self.log: tuple[int, int, int] | None = None   # dirty log: size, offset, fd
        self.log_call = -1          # eventfd for log updates (kept; QEMU polls the log)
        self.dirty_log = False      # a new log: the I/O half maps it
        self.state_request: tuple[int, int] | None = None   # direction, fd: run it now
        self.state_result = -1      # CHECK_DEVICE_STATE: 0 ok, errno, -1 nothing ran

    def reply_ack(self) -> bool:
        return bool(self.protocol_features & PROTOCOL_F_REPLY_ACK)

    @staticmethod
    def _u64(payload: bytes) -> int:
        if len(payload) != 8:
            raise VhostError("vhost-bad-size")
        return struct.unpack("<Q", payload)[0]

    def _ring(self, index: int) -> Ring:
        if not 0 <= index < NUM_QUEUES:
            raise VhostError("vhost-bad-ring", f"ring {index} does not exist")
        return self.rings[index]

    def handle(self, request: int, payload: bytes, fds: list[int]) -> tuple[bytes | None, list[int]]:
        """Apply one message: (reply payload or None, fds to close). Fds not
        returned are kept (memory regions, kick/call eventfds)."""
        if request == GET_FEATURES:
            return struct.pack("<Q", FEATURES), fds
        if request == SET_FEATURES:
            value = self._u64(payload)
            if value & ~FEATURES:
                raise VhostError("vhost-bad-features", f"features {value:#x} were not offered")
            self.features = value
            return None, fds
        if request == GET_PROTOCOL_FEATURES:
            return struct.pack("<Q", PROTOCOL_FEATURES), fds
        if request == SET_PROTOCOL_FEATURES:
            self.protocol_features = self._u64(payload) & PROTOCOL_FEATURES
            return None, fds
        if request == GET_QUEUE_NUM:
            return struct.pack("<Q", NUM_QUEUES), fds
        if request == SET_OWNER:
            self.owner = True
            return None, fds
        if request == RESET_OWNER:
            self.owner = False
            return None, fds
        if request == SET_MEM_TABLE:
            return None, self._mem_table(payload, fds)
        if request == SET_LOG_BASE:
            if len(payload) != 16:
                raise VhostError("vhost-bad-size")
            if len(fds) != 1:
                raise VhostError("vhost-bad-fds", "a log base needs exactly one fd")
            size, offset = struct.unpack("<QQ", payload)
            if not 0 < size <= 1 << 40 or offset > 1 << 48 or offset % mmap.PAGESIZE:
                raise VhostError("vhost-bad-region", f"log of {size} bytes at {offset}")
            old = [self.log[2]] if self.log else []
            self.log, self.dirty_log = (size, offset, fds[0]), True
            return struct.pack("<Q", 0), old
        if request == SET_LOG_FD:
            if len(fds) != 1:
                raise VhostError("vhost-bad-fds", "a log fd message needs exactly one fd")
            old = [self.log_call] if self.log_call >= 0 else []
            self.log_call = fds[0]
            return None, old
        if request in (SET_VRING_ERR, SEND_RARP):
            return None, fds   # RARP: nothing to announce (no switch learns our MAC)
        if request == SET_VRING_NUM:
            index, num = self._state(payload)
            if num == 0 or num > 32768 or num & (num - 1):
                raise VhostError("vhost-bad-ring", f"ring size {num}")
            ring = self._ring(index)
            ring.num, ring.queue = num, None
            return None, fds
        if request == SET_VRING_BASE:
            index, num = self._state(payload)
            ring = self._ring(index)
            ring.base, ring.queue = num & 0xFFFF, None
            return None, fds
        if request == SET_VRING_ADDR:
            if len(payload) != 40:
                raise VhostError("vhost-bad-size")
            index, _flags, desc, used, avail, _log = struct.unpack("<IIQQQQ", payload)
            ring = self._ring(index)
            _requeue(ring)   # sent again on a running ring (QEMU: dirty logging on or off)
            ring.desc, ring.used, ring.avail = desc, used, avail
            return None, fds
        if request == GET_VRING_BASE:
            index, _ = self._state(payload)
            ring = self._ring(index)
            base = ring.queue.last_avail if ring.queue is not None else ring.base
            ring.base, ring.started, ring.enabled, ring.queue = base, False, False, None
            close = fds + ([ring.kick] if ring.kick >= 0 else [])
            ring.kick = -1
            return struct.pack("<II", index, base), close
        if request in (SET_VRING_KICK, SET_VRING_CALL):
            value = self._u64(payload)
            ring = self._ring(value & VRING_IDX_MASK)
            nofd = bool(value & VRING_NOFD)
            if not nofd and len(fds) != 1:
                raise VhostError("vhost-bad-fds", "a vring fd message needs exactly one fd")
            fd = -1 if nofd else fds[0]
            rest = fds[1:] if not nofd else fds
            if request == SET_VRING_KICK:
                old, ring.kick = ring.kick, fd
                ring.started = True
                if not self.features & F_PROTOCOL_FEATURES:
                    ring.enabled = True   # without PROTOCOL_FEATURES a kick fd starts the ring
            else:
                old, ring.call = ring.call, fd
            return None, rest + ([old] if old >= 0 else [])
        if request == SET_VRING_ENABLE:
            index, num = self._state(payload)
            self._ring(index).enabled = bool(num)
            return None, fds
        if request == SET_DEVICE_STATE_FD:
            direction, phase = self._state(payload)
            if len(fds) != 1:
                raise VhostError("vhost-bad-fds", "a device state message needs exactly one fd")
            if direction not in (STATE_SAVE, STATE_LOAD) or phase != 0:
                raise VhostError("vhost-bad-state-request",
                                 f"device state direction {direction}, phase {phase}")
            if self.state_request is not None:
                fds = fds + [self.state_request[1]]
            self.state_request = (direction, fds[0])
            self.state_result = -1
            return struct.pack("<Q", VRING_NOFD), fds[1:]   # no fd of ours: QEMU's pipe
        if request == CHECK_DEVICE_STATE:
            return struct.pack("<Q", self.state_result & 0xFFFFFFFFFFFFFFFF), fds
        raise VhostError("vhost-unknown-request", f"request {request}")

    @staticmethod
    def _state(payload: bytes) -> tuple[int, int]:
        if len(payload) != 8:
            raise VhostError("vhost-bad-size")
        return struct.unpack("<II", payload)

    def _mem_table(self, payload: bytes, fds: list[int]) -> list[int]:
        if len(payload) < 8:
            raise VhostError("vhost-bad-size")
        nregions, _pad = struct.unpack_from("<II", payload)
        if not 0 < nregions <= MAX_FDS or len(payload) != 8 + 32 * nregions:
            raise VhostError("vhost-bad-size", f"{nregions} memory regions in {len(payload)} bytes")
        if len(fds) != nregions:
            raise VhostError("vhost-bad-fds", f"{nregions} regions but {len(fds)} fds")
        regions = []
        for k in range(nregions):
            gpa, size, uva, offset = struct.unpack_from("<QQQQ", payload, 8 + 32 * k)
            if size == 0 or size > 1 << 48 or offset > 1 << 48:
                raise VhostError("vhost-bad-region", f"region {k}: size {size} offset {offset}")
            regions.append((gpa, size, uva, offset, fds[k]))
        old = [r[4] for r in self.regions]
        self.regions = regions
        for ring in self.rings:
            _requeue(ring)         # its pointers were into the old mappings
        self.dirty_memory = True
        return old                 # the new fds are kept; the old ones go


class VhostUserFrontend(Frontend):
    """A vhost-user back end on a listening socket, one front end (QEMU) at a time."""

    tso = False

    def __init__(self, loop: Loop, counters: Counters, on_batch: OnBatch | None = None,
                 listener: socket.socket | None = None, one_off: bool = False,
                 on_exit: Callable[[], Any] | None = None) -> None:
        if listener is None:
            raise ValueError("VhostUserFrontend needs a listening socket")
        super().__init__(counters, on_batch)
        self.loop = loop
        self.listener = listener
        listener.setblocking(False)
        self.one_off = one_off
        self.on_exit = on_exit or (lambda: loop.stop(0))
        self.conn: socket.socket | None = None
        self.session = Session()
        self.vq = passtcore.virtq
        self.mem: Any = None
        self.maps: list[mmap.mmap] = []
        self.rbuf = mmap.mmap(-1, TX_BATCH * FRAME_MAX, mmap.MAP_PRIVATE)
        self.rview = memoryview(self.rbuf)
        self.offsets = array("q", bytes(8 * TX_BATCH))
        self.lengths = array("q", bytes(8 * TX_BATCH))
        self.slot_offsets = array("q", [i * self.stride + self.HEADROOM
                                        for i in range(self.nslots)])
        self._watched: dict[int, int] = {}   # kick fd -> ring index
        self._blocking_calls: set[int] = set()   # call fds in blocking mode (not QEMU's)
        self._force_call: set[int] = set()       # rings whose next call is unconditional
        self._call_fds = [-1] * NUM_QUEUES
        # live migration: run/migrate/device.py's DeviceState (set by the daemon)
        self.device_state: Any = None
        self.on_rings_started: Callable[[], Any] | None = None
        self.migrate_exit = False
        self.log_map: mmap.mmap | None = None
        self._saved = False         # our state went to a migration target
        self._started = False       # _rings_started ran since the rings last stopped

    # -- connection ------------------------------------------------------------
    def start(self) -> None:
        self.loop.add_reader(self.listener.fileno(), self._accept)

    @property
    def connected(self) -> bool:
        ring = self.session.rings[RX]
        return self.conn is not None and _runs(ring) and self._queue(RX) is not None

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("accept failed: %s", exc)
            return
        if self.conn is not None:
            log.info("vhost-user: discarding a second connection")
            self.counters.inc("clients_discarded")
            sock.close()
            return
        log.info("vhost-user: front end connected")
        self.counters.inc("clients")
        sock.setblocking(False)
        self.conn = sock
        self.session = Session()
        self.loop.add_reader(sock.fileno(), self._on_message)

    def _disconnect(self, why: str) -> None:
        if self.conn is None:
            return
        log.info("vhost-user: front end gone (%s)", why)
        self.loop.remove_reader(self.conn.fileno())
        self.conn.close()
        self.conn = None
        self._reset()
        if self.one_off:
            self.on_exit()
        else:
            log.info("vhost-user: waiting for a new connection")

    def _reset(self) -> None:
        self._started = False
        for ring in self.session.rings:
            for fd in (ring.kick, ring.call):
                if fd >= 0:
                    self._unwatch(fd)
                    _close(fd)
            ring.kick = ring.call = -1
            ring.queue = None
        self._unmap()
        s = self.session
        for r in s.regions:
            _close(r[4])
        for fd in ([s.log[2]] if s.log else []) + [s.log_call] + (
                [s.state_request[1]] if s.state_request else []):
            if fd >= 0:
                _close(fd)
        self._unmap_log()
        self.session = Session()

    def close(self) -> None:
        if self.conn is not None:
            self.loop.remove_reader(self.conn.fileno())
            self.conn.close()
            self.conn = None
        self._reset()
        if self.device_state is not None:
            self.device_state.close()

    # -- control messages --------------------------------------------------------
    def _on_message(self) -> None:
        sock = self.conn
        assert sock is not None
        try:
            head, fds, mflags, _ = socket.recv_fds(sock, HDR.size, MAX_FDS,
                                                   socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._disconnect(str(exc))
            return
        if not head:
            for fd in fds:
                _close(fd)
            self._disconnect("EOF")
            return
        if len(head) < HDR.size or mflags & socket.MSG_CTRUNC:
            for fd in fds:
                _close(fd)
            self.counters.drop("vhost-bad-message")
            self._disconnect("a truncated message header")
            return
        request, flags, size = HDR.unpack(head)
        if size > MAX_PAYLOAD or flags & 0x3 != VERSION:
            for fd in fds:
                _close(fd)
            self.counters.drop("vhost-bad-message")
            self._disconnect(f"a message the protocol cannot have (request {request}, "
                             f"flags {flags:#x}, {size} bytes)")
            return
        payload = _recv_exact(sock, size) if size else b""
        if payload is None:
            for fd in fds:
                _close(fd)
            self._disconnect("EOF in a message")
            return
        self._apply(request, flags, payload, list(fds))

    def _apply(self, request: int, flags: int, payload: bytes, fds: list[int]) -> None:
        s = self.session
        name = NAMES.get(request, str(request))
        failed = False
        try:
            reply, close = s.handle(request, payload, fds)
        except VhostError as exc:
            self.counters.drop(exc.reason)
            log.debug("vhost-user: %s refused: %s", name, exc)
            reply, close, failed = None, fds, True
        bad = self._sync_rings()   # stop watching replaced or stopped kick fds before they close
        if bad:
            close, failed = [*close, *bad], True
        for fd in close:
            _close(fd)
        log.debug("vhost-user: %s (%d bytes%s)", name, len(payload),
                  ", failed" if failed else "")
        if request == SET_FEATURES and not failed:
            # 64 KiB TCP frames to a guest that takes them (whatever its MTU): the
            # engines build them when the front end says ``tso``
            want = F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6
            self.tso = s.features & want == want
            log.info("vhost-user: features %#x%s", s.features,
                     " (TSO/checksum offloads on)" if self.tso else "")
        if s.dirty_memory:
            s.dirty_memory = False
            if not self._map():
                failed = True
        if s.dirty_log:
            s.dirty_log = False
            if not self._map_log():
                failed = True
        if request in (SET_FEATURES, SET_MEM_TABLE, SET_LOG_BASE):
            self._sync_log()
        if reply is not None:
            self._send(request, reply)
        elif flags & F_NEED_REPLY and s.reply_ack():
            self._send(request, struct.pack("<Q", 1 if failed else 0))
        elif failed and request in (GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM,
                                    GET_VRING_BASE):
            self._send(request, struct.pack("<Q", 0))
        elif failed and request in (SET_LOG_BASE, SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE):
            self._send(request, struct.pack("<Q", 1))   # always answered: 1, a failure
        if s.state_request is not None:
            self._transfer()
        elif request == CHECK_DEVICE_STATE and self._saved and s.state_result == 0:
            self._saved = False
            if self.migrate_exit:
                log.info("vhost-user: migration complete, exiting (--migrate-exit)")
                self.on_exit()
                return
            log.info("vhost-user: migration complete")
            self.one_off = False   # as passt: the source stays, in case the guest comes back
        # the rings (re)start on the message that completes a set-up (QEMU ends each
        # ring's with KICK, CALL, ENABLE), never half-way (NUM, ADDR: stale addresses)
        if not self._rings_run():
            self._started = False
        elif not self._started and request in (SET_VRING_KICK, SET_VRING_CALL,
                                               SET_VRING_ENABLE):
            self._started = True
            self._rings_started()

    def _rings_run(self) -> bool:
        """Both rings set up and running, by what the front end said (no queue is
        built here: between the messages of a set-up the addresses may be stale)."""
        return self.conn is not None and self.mem is not None and all(
            _runs(r) and r.num and r.desc for r in self.session.rings)

    def _rings_started(self) -> None:
        """The rings run (first start, or again after a stop: a migration). An
        interrupt or a kick in flight when they stopped was lost with its eventfd's
        count (QEMU does not migrate it): a guest waiting for an interrupt past the
        used index it asked for would wait for ever. So one interrupt each, spurious
        at worst, and a look at the TX ring."""
        for index in (RX, TX):
            self._interrupt(self.session.rings[index].call)
        self._tx()
        if self.on_rings_started is not None:
            self.on_rings_started()

    # -- live migration -----------------------------------------------------------
    def _transfer(self) -> None:
        """The device state, now (QEMU reads or writes its end of the pipe as we go)."""
        s = self.session
        assert s.state_request is not None
        direction, fd = s.state_request
        s.state_request = None
        what = "save" if direction == STATE_SAVE else "load"
        log.info("vhost-user: migration: %s device state", what)
        try:
            if self.device_state is None:
                s.state_result = errno.ENOTSUP
            elif direction == STATE_SAVE:
                s.state_result = self.device_state.save(fd)
            else:
                s.state_result = self.device_state.load(fd)
        except Exception as exc:   # never the daemon: the migration fails, we go on
            log.error("vhost-user: migration %s failed: %r at %s", what, exc,
                      " <- ".join(f"{f.name}:{f.lineno}" for f in
                                  reversed(traceback.extract_tb(exc.__traceback__))))
            self.counters.inc("migrate_errors")
            s.state_result = errno.EIO
        finally:
            _close(fd)
        self._saved = direction == STATE_SAVE and s.state_result == 0
        if s.state_result:
            self.counters.drop(f"migrate-{what}-failed")
        elif direction == STATE_LOAD and self._rings_run() and self.on_rings_started is not None:
            self.on_rings_started()   # the rings already run: the restored flows go on now

    def _unmap_log(self) -> None:
        if self.mem is not None and hasattr(self.mem, "set_log"):
            self.mem.set_log(None)
        if self.log_map is not None:
            try:
                self.log_map.close()
            except BufferError:
                pass
            self.log_map = None

    def _map_log(self) -> bool:
        self._unmap_log()
        assert self.session.log is not None
        size, offset, fd = self.session.log
        try:
            self.log_map = mmap.mmap(fd, size, mmap.MAP_SHARED,
                                     mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
        except (OSError, ValueError) as exc:
            log.warning("vhost-user: can't map the dirty log: %s", exc)
            self.counters.drop("vhost-bad-region")
            return False
        log.debug("vhost-user: dirty log of %d bytes mapped", size)
        return True

    def _sync_log(self) -> None:
        """Log writes to guest memory while LOG_ALL is on and a log is mapped."""
        if self.mem is None:
            return
        on = bool(self.session.features & F_LOG_ALL) and self.log_map is not None
        if on != self.mem.logging:
            self.mem.set_log(memoryview(self.log_map) if on else None)
            log.info("vhost-user: dirty page logging %s", "on" if on else "off")

    def _send(self, request: int, payload: bytes) -> None:
        if self.conn is None:
            return
        try:
            self.conn.sendall(HDR.pack(request, VERSION | F_REPLY, len(payload)) + payload)
        except OSError as exc:
            self._disconnect(f"reply failed: {exc}")

    # -- memory and rings -----------------------------------------------------------
    def _unmap(self) -> None:
        for ring in self.session.rings:
            ring.queue = None
        if self.mem is not None:
            self.mem.clear()
            self.mem = None
        for m in self.maps:
            try:
                m.close()
            except BufferError:   # a view still exported: dropped with the last reference
                pass
        self.maps = []

    def _map(self) -> bool:
        self._unmap()
        mem = self.vq.GuestMemory()
        try:
            for gpa, size, uva, offset, fd in self.session.regions:
                m = mmap.mmap(fd, size + offset, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE)
                self.maps.append(m)
                mem.add(gpa, size, uva, memoryview(m)[offset:offset + size])
        except (OSError, ValueError, self.vq.VirtqError) as exc:
            log.warning("vhost-user: can't map guest memory: %s", exc)
            self.counters.drop("vhost-bad-region")
            mem.clear()
            self._unmap()
            return False
        self.mem = mem
        log.debug("vhost-user: %d memory regions mapped", len(mem))
        return True

    def _queue(self, index: int) -> Any:
        ring = self.session.rings[index]
        if ring.queue is None and ring.num and ring.desc and self.mem is not None:
            try:
                ring.queue = self.vq.Virtqueue(
                    self.mem, ring.num, ring.desc, ring.avail, ring.used,
                    event_idx=bool(self.session.features & F_EVENT_IDX), last_avail=ring.base)
                self._force_call.add(index)
            except self.vq.VirtqError as exc:
                log.warning("vhost-user: ring %d: %s", index, exc)
                self.counters.drop("vhost-bad-ring")
                ring.num = 0
        return ring.queue

    def _sync_rings(self) -> list[int]:
        """Watch the kick fd of every running ring; forget the others. Note the call
        fds in blocking mode (QEMU's eventfds are not; a full pipe must not stall
        the loop: ``_call`` polls those first). A kick fd epoll refuses (a regular
        file) is taken off its ring and counted: the fds to close, the message failed."""
        bad = []
        self._blocking_calls.clear()
        for index, ring in enumerate(self.session.rings):
            fd = ring.kick
            if fd >= 0 and fd not in self._watched:
                try:
                    self.loop.add_reader(fd, lambda fd=fd: self._on_kick(fd))
                except OSError as exc:
                    self.loop.remove_reader(fd)
                    log.debug("vhost-user: ring %d: kick fd refused: %s", index, exc)
                    self.counters.drop("vhost-bad-fds")
                    ring.kick, ring.started = -1, False
                    bad.append(fd)
                else:
                    self._watched[fd] = index
            if ring.call >= 0 and os.get_blocking(ring.call):
                self._blocking_calls.add(ring.call)
            if ring.call != self._call_fds[index]:
                self._call_fds[index] = ring.call
                self._force_call.add(index)
        for fd in [fd for fd, i in self._watched.items() if self.session.rings[i].kick != fd]:
            self._unwatch(fd)
        return bad

    def _unwatch(self, fd: int) -> None:
        if self._watched.pop(fd, None) is not None:
            self.loop.remove_reader(fd)

    def _on_kick(self, fd: int) -> None:
        try:
            if os.read(fd, 8) == b"":   # a pipe at EOF, not an eventfd: it would spin
                self.counters.drop("vhost-bad-fds")
                self._unwatch(fd)
                return
        except BlockingIOError:
            pass
        except OSError:
            self._unwatch(fd)
            return
        index = self._watched.get(fd)
        if index == TX:
            self._tx()
        elif index == RX and self.rx_wakeup is not None:
            self.rx_wakeup()   # new receive buffers: connections waiting for them go on

    def _call(self, index: int, q: Any) -> None:
        ring = self.session.rings[index]
        if ring.call < 0:
            return
        # a new queue or call fd interrupts once whatever the guest asked: an
        # interrupt in flight when the ring stopped (a migration) died with the old
        # eventfd, and a guest waiting for it would never ask again
        if q.need_call() or index in self._force_call:
            self._force_call.discard(index)
            self._interrupt(ring.call)

    def _interrupt(self, fd: int) -> None:
        """Signal a call eventfd (-1: none). One the front end left blocking is
        polled first: when it is full the interrupt is lost, not the loop."""
        if fd < 0 or (fd in self._blocking_calls and not _writable(fd)):
            return
        try:
            os.write(fd, b"\1\0\0\0\0\0\0\0")
        except OSError:
            pass

    # -- guest -> host ----------------------------------------------------------------
    def _tx(self) -> None:
        ring = self.session.rings[TX]
        q = self._queue(TX)
        if q is None or not _runs(ring):
            return
        for _ in range(TX_ROUNDS):
            n = q.pop_tx(self.rview, self.offsets, self.lengths, TX_BATCH)
            self._count_errors(q)
            if n:
                counters = self.counters
                lengths = self.lengths
                for i in range(n):
                    counters.frame_in(lengths[i])
                    if lengths[i] > 1518:
                        counters.inc("vhost_gso_in")   # a segment beyond an MTU of 1500
                self._call(TX, q)
                self.on_batch(self.rview, self.offsets, self.lengths, n)
            # pending() after the pop: with EVENT_IDX, buffers the guest added before
            # it saw our avail_event come with no kick
            if n < TX_BATCH and not q.pending():
                break
        else:
            self.loop.call_later(0, self._tx)   # more to take: after the other descriptors
        self._call(TX, q)

    def _count_errors(self, q: Any) -> None:
        if q.errors:
            for reason, n in q.errors.items():
                self.counters.drop(f"virtq-{reason}", n)
            q.errors.clear()

    # -- host -> guest ----------------------------------------------------------------
    def push_direct(self, fast: Any, c: Any, woken: bool, seg: int, now: float,
                    lengths: Any) -> int:
        """TCP host data peeked from the socket straight into the guest's receive
        buffers, headers written in place (``FastPath.push_vq``): no copy through
        the slots. -1 when the slot path must decide (see push_vq)."""
        ring = self.session.rings[RX]
        q = self._queue(RX) if self.conn is not None and _runs(ring) else None
        if q is None:
            return -1
        gso = c.mss if self.tso else 0
        n = fast.push_vq(c, woken, q, bool(self.session.features & F_MRG_RXBUF), gso,
                         NET_HDR_LEN, seg, now, lengths)
        if n == -2:
            self.counters.inc("vhost_rx_wait")
        elif n > 0:
            counters = self.counters
            big = c.mss + (54 if c.v == 4 else 74)
            for i in range(n):
                counters.frame_out(lengths[i])
                if gso and lengths[i] > big:
                    counters.inc("vhost_gso_out")
            counters.inc("vhost_rx_direct", n)
            self._call(RX, q)
        self._count_errors(q)
        return n

    def _transmit(self, lengths: Sequence[int], gso_size: int = 0) -> int:
        ring = self.session.rings[RX]
        q = self._queue(RX) if self.conn is not None and _runs(ring) else None
        n = len(lengths)
        if q is None:
            self.counters.drop("vhost-rx-not-ready", n)
            return 0
        lens = lengths if isinstance(lengths, array) else array("q", lengths)
        hdrs = None
        if self.tso and gso_size:
            # per frame: a GSO header for a TCP frame longer than one segment
            hdrs = bytearray(NET_HDR_LEN * n)
            for i in range(n):
                h = vnet.gso_header(self._slots[i], lens[i], gso_size)
                if h is not vnet.PLAIN:
                    hdrs[NET_HDR_LEN * i:NET_HDR_LEN * i + len(h)] = h
                    self.counters.inc("vhost_gso_out")
        done = q.push_rx(self.txview, self.slot_offsets, lens, n,
                         bool(self.session.features & F_MRG_RXBUF), hdrs=hdrs)
        self._count_errors(q)
        for i in range(done):
            self.counters.frame_out(lens[i])
        if done < n:
            self.counters.drop("vhost-rx-no-buffer", n - done)
        self._call(RX, q)
        return done


RECV_DEADLINE = 1.0     # the rest of a message that has started: a front end that
                        # stops half-way loses its connection, the loop does not wait


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    deadline = time.monotonic() + RECV_DEADLINE
    for _ in range(64):     # bounded: a message arrives in a few reads at most
        try:
            data = sock.recv(n)
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            select.select([sock], [], [], left)
            continue
        if not data:
            return None
        chunks.append(data)
        n -= len(data)
        if not n:
            return b"".join(chunks)
    return None


def _writable(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLOUT)
    return bool(p.poll(0))


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
