"""The daemon's end of the TCP_REPAIR helper's channel (passt's repair.c).

Setting TCP_REPAIR needs CAP_NET_ADMIN, which the daemon never has. A
separate helper with that privilege (``passtcore-repair``, or upstream's
``passt-repair``: KubeVirt's virt-handler runs one on each side of a
migration) connects to ``<socket>.repair`` (``--repair-path``). We send it
batches of at most 253 sockets (SCM_MAX_FD) with one signed command byte: 1
repair on, 0 off, -1 off without a window probe; it applies TCP_REPAIR to
each and echoes the byte. Anything else from it ends the channel.

The listening socket is bound at start-up (before the daemon gives up its
file system); the helper may connect any time before a migration, which
waits ``WAIT`` for it at most.
"""
from __future__ import annotations

import logging
import os
import select
import socket
import struct
from collections.abc import Iterable

log = logging.getLogger("passtcore.run")

SCM_MAX_FD = 253
REPAIR_ON, REPAIR_OFF, REPAIR_OFF_NO_WP = 1, 0, -1
WAIT = 0.05           # a helper not yet connected when a migration starts
REPLY_TIMEOUT = 5.0   # a helper that takes longer than this is gone


class RepairError(Exception):
    pass


class RepairChannel:
    """``set(sockets, command)``; ``connected``; ``close()``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn: socket.socket | None = None
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.listener.bind(path)
        self.listener.listen(1)
        self.listener.setblocking(False)

    @property
    def connected(self) -> bool:
        return self.conn is not None

    def fileno(self) -> int:
        return self.listener.fileno()

    def accept(self) -> None:
        """The listener is readable: take the helper (a second one is turned away)."""
        try:
            s, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        pid = _peer_pid(s)
        if self.conn is not None:
            log.info("repair: discarding a second TCP_REPAIR helper (PID %s)", pid)
            s.close()
            return
        s.setblocking(True)
        s.settimeout(REPLY_TIMEOUT)
        self.conn = s
        log.info("repair: TCP_REPAIR helper connected (PID %s)", pid)

    def wait(self, timeout: float = WAIT) -> bool:
        if self.conn is None and select.select([self.listener], [], [], timeout)[0]:
            self.accept()
        return self.conn is not None

    def set(self, socks: Iterable[socket.socket], command: int) -> None:
        """TCP_REPAIR ``command`` on every socket, in batches; RepairError if the
        helper fails or is gone (the channel is closed then)."""
        fds = [s.fileno() for s in socks]
        if not fds:
            return
        if self.conn is None:
            raise RepairError("no TCP_REPAIR helper connected")
        cmd = struct.pack("b", command)
        try:
            for i in range(0, len(fds), SCM_MAX_FD):
                socket.send_fds(self.conn, [cmd], fds[i:i + SCM_MAX_FD])
                reply = self.conn.recv(1)
                if reply != cmd:
                    raise RepairError(f"the TCP_REPAIR helper answered {reply!r} to {command}"
                                      if reply else "the TCP_REPAIR helper is gone")
        except OSError as exc:
            self.drop()
            raise RepairError(f"TCP_REPAIR helper: {exc}") from None
        except RepairError:
            self.drop()
            raise

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        self.drop()
        self.listener.close()


def _peer_pid(s: socket.socket) -> int | str:
    try:
        return struct.unpack("iII", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    except OSError:
        return "?"
