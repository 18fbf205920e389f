"""ICMP echo socket I/O (design: the package docstring)."""
from __future__ import annotations

import errno
import logging
import socket
from typing import Any

from passtcore.run import nat
from passtcore.run.flows import ANY
from passtcore.run.l2.common import icmp_frame

log = logging.getLogger("passtcore.icmp")

ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}
ICMP_TIMEOUT = 60.0
PROTO = {4: 1, 6: 58}
READ_BATCH = 64  # replies read per wake-up, so one busy socket cannot starve the loop
PING_WARNING = ('Cannot open "ping" socket. You might need to: '
                'sysctl -w net.ipv4.ping_group_range="0 2147483647"')


class _Echo:
    """One ping socket: the guest identifier it serves and where replies go."""

    __slots__ = ("family", "ident", "sock", "guest_src", "idx")

    def __init__(self, family: int, ident: int, sock: socket.socket) -> None:
        self.family = family
        self.ident = ident
        self.sock = sock
        self.guest_src = b""
        self.idx = -1


class IcmpEngine:
    """Echo requests from the guest -> ping sockets; echo replies -> the guest."""

    name = "icmp"

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.flows = ctx.flows
        self.warned = False

    @property
    def echos(self) -> dict[tuple[int, int], _Echo]:
        """The open sockets by (IP version, echo identifier)."""
        return {(e.family, e.ident): e for e in self.flows.objects(self)}

    # -- guest -> host -------------------------------------------------------
    def handle(self, frame: memoryview, info: Any) -> None:
        ctx = self.ctx
        ver = info.ip_version
        if info.l4_len < 8:
            ctx.counters.drop("icmp-truncated")
            return
        dst = bytes(info.dst)
        if dst[0] == 0xFF or (ver == 4 and dst[0] >= 224) or not any(dst):
            ctx.counters.drop("icmp-multicast")
            return
        echo = self.flows.lookup(PROTO[ver], ANY[ver], info.icmp_id, ANY[ver], 0)
        if echo is None:
            echo = self._open(ver, info.icmp_id)
            if echo is None:
                return
        else:
            self.flows.touch(echo.idx, ICMP_TIMEOUT)
        echo.guest_src = bytes(info.src)
        msg = bytes(frame[info.l4_offset:info.l4_offset + info.l4_len])
        if ver == 4:
            addr: tuple = (socket.inet_ntop(socket.AF_INET, dst), 0)
        else:
            addr = (socket.inet_ntop(socket.AF_INET6, dst), 0, 0, nat.scope_id(ctx.conf, dst))
        try:
            echo.sock.sendto(msg, addr)
        except OSError as exc:
            log.debug("ICMP: sendto %s: %s", addr[0], exc)
            ctx.counters.drop("icmp-send-error")
            return
        ctx.counters.inc("icmp-request")

    def _open(self, ver: int, ident: int) -> _Echo | None:
        """A ping socket for (family, identifier), registered as a flow."""
        ctx = self.ctx
        fam = socket.AF_INET if ver == 4 else socket.AF_INET6
        try:
            kind = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
            sock = socket.socket(fam, kind,
                                 socket.IPPROTO_ICMP if ver == 4 else socket.IPPROTO_ICMPV6)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                if not self.warned:
                    log.warning(PING_WARNING)
                    self.warned = True
                ctx.counters.drop("icmp-no-ping-socket")
            else:
                log.debug("ICMP: socket: %s", exc)
                ctx.counters.drop("icmp-socket-error")
            return None
        echo = _Echo(ver, ident, sock)
        echo.idx = self.flows.add(self, PROTO[ver], ANY[ver], ident, ANY[ver], 0, echo,
                                  ICMP_TIMEOUT)
        if echo.idx < 0:
            sock.close()
            ctx.counters.drop("icmp-too-many-flows")
            return None
        conf = ctx.conf
        out = conf.outbound4 if ver == 4 else conf.outbound6
        host = socket.inet_ntop(fam, bytes(out)) if out else ("0.0.0.0" if ver == 4 else "::")
        ifname = conf.outbound_if4 if ver == 4 else conf.outbound_if6
        try:
            if ifname:  # --outbound-ifN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        except OSError as exc:
            log.debug("ICMP: SO_BINDTODEVICE %s: %s", ifname, exc)
        try:
            sock.bind((host, ident))
        except OSError as exc:
            # e.g. restrictive LSM or the id in use: the kernel picks the id, we map back
            log.debug("ICMP: bind to id %d: %s; replies will be mapped back", ident, exc)
        ctx.loop.add_reader(sock.fileno(), lambda: self._readable(echo))
        ctx.counters.inc("icmp-socket-open")
        return echo

    # -- host -> guest -------------------------------------------------------
    def _readable(self, echo: _Echo) -> None:
        ctx = self.ctx
        conf = ctx.conf
        ver = echo.family
        frames = []
        for _ in range(READ_BATCH):
            try:
                data, addr = echo.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. a queued ICMP error: not relayed (reference 5.5)
                log.debug("ICMP: recvfrom: %s", exc)
                ctx.counters.drop("icmp-recv-error")
                break
            if len(data) < 8 or data[0] != ECHO_REPLY[ver]:
                ctx.counters.drop("icmp-host-not-echo-reply")
                continue
            remote = socket.inet_pton(socket.AF_INET if ver == 4 else socket.AF_INET6, addr[0])
            seq = (data[6] << 8) | data[7]
            frames.append(icmp_frame(bytes(ctx.guest_mac), bytes(conf.our_mac), remote,
                                     echo.guest_src, ECHO_REPLY[ver], data[1], echo.ident, seq,
                                     data[8:]))
        if frames:
            ctx.counters.inc("icmp-reply", len(frames))
            ctx.to_guest_many(frames)

    # -- flows / shutdown ----------------------------------------------------
    def flow_expired(self, echo: _Echo) -> None:
        """No guest request for ICMP_TIMEOUT seconds: close the socket."""
        self._close(echo)
        self.ctx.counters.inc("icmp-socket-expired")

    def _close(self, echo: _Echo) -> None:
        self.flows.remove(echo.idx, echo)
        try:
            self.ctx.loop.remove_reader(echo.sock.fileno())
        finally:
            echo.sock.close()

    def close(self) -> None:
        for echo in self.flows.objects(self):
            self._close(echo)
