"""ICMP/ICMPv6 echo through unprivileged "ping" sockets (passt-reference 5.5).

Design: the guest's echo requests are sent with ``sendto`` on a
``socket(AF_INET[6], SOCK_DGRAM, IPPROTO_ICMP[V6])`` owned by this engine, one
per (family, guest echo identifier). The socket is bound to port =
identifier, so the kernel keeps the guest's identifier on the wire; if the
bind fails, the kernel picks one and replies get the guest's identifier
written back. The kernel fills in identifier and checksum on the way out;
replies read from the socket (ICMP header + data, no IP header) become frames
to the guest from the real remote address to the address the guest pinged
from, with the checksum recomputed by ``passtcore.headers.build_icmp``.

Sockets are registered on ``ctx.loop``; ``tick(now)`` closes those without guest
activity for 60 s (all of them, unlike passt 2023 which only scanned ids
0-63). Only echo requests are accepted from the guest; everything else is
dropped and counted. If ping sockets are not permitted (the process's group
is outside ``net.ipv4.ping_group_range``), a warning is logged once and the
requests are dropped.
"""
from __future__ import annotations

import errno
import logging
import socket
from typing import Any

from passtcore.run.l2common import conf_flag, icmp_frame

log = logging.getLogger("passtcore.icmp")

ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}
ICMP_TIMEOUT = 60.0
MAX_SOCKETS = 1024  # per engine: bounds the fds a guest can make us open
READ_BATCH = 64  # replies read per wake-up, so one busy socket cannot starve the loop
PING_WARNING = ('Cannot open "ping" socket. You might need to: '
                'sysctl -w net.ipv4.ping_group_range="0 2147483647"')


class _Echo:
    """One ping socket: the guest identifier it serves and where replies go."""

    __slots__ = ("family", "ident", "sock", "guest_src", "last")

    def __init__(self, family: int, ident: int, sock: socket.socket) -> None:
        self.family = family
        self.ident = ident
        self.sock = sock
        self.guest_src = b""
        self.last = 0.0


class IcmpEngine:
    """Echo requests from the guest -> ping sockets; echo replies -> the guest."""

    name = "icmp"

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.echos: dict[tuple[int, int], _Echo] = {}
        self.warned = False

    # -- guest -> host -------------------------------------------------------
    def handle(self, frame: memoryview, info: Any) -> None:
        ctx = self.ctx
        try:
            self._handle(frame, info)
        except Exception:  # a bug must not let one guest frame stop the daemon
            log.exception("ICMP: unexpected error on a guest frame")
            ctx.counters.drop("icmp-error")

    def _handle(self, frame: memoryview, info: Any) -> None:
        ctx = self.ctx
        if conf_flag(ctx.conf, "no_icmp"):
            ctx.counters.drop("icmp-disabled")
            return
        ver = info.ip_version
        if ver not in (4, 6) or info.l4_proto != (1 if ver == 4 else 58):
            ctx.counters.drop("icmp-not-icmp")
            return
        if info.is_fragment:
            ctx.counters.drop("icmp-fragment")
            return
        if info.icmp_type != ECHO_REQUEST[ver] or info.icmp_code != 0:
            ctx.counters.drop("icmp-type")
            return
        if info.l4_len < 8:
            ctx.counters.drop("icmp-truncated")
            return
        dst = bytes(info.dst)
        if dst[0] == 0xFF or (ver == 4 and dst[0] >= 224) or not any(dst):
            ctx.counters.drop("icmp-multicast")
            return
        echo = self._echo(ver, info.icmp_id)
        if echo is None:
            return
        echo.guest_src = bytes(info.src)
        echo.last = ctx.loop.now()
        msg = bytes(memoryview(frame)[info.l4_offset:info.l4_offset + info.l4_len])
        if ver == 4:
            addr: tuple = (socket.inet_ntop(socket.AF_INET, dst), 0)
        else:
            scope = self._scope6() if dst[0] == 0xFE and (dst[1] & 0xC0) == 0x80 else 0
            addr = (socket.inet_ntop(socket.AF_INET6, dst), 0, 0, scope)
        try:
            echo.sock.sendto(msg, addr)
        except OSError as exc:
            log.debug("ICMP: sendto %s: %s", addr[0], exc)
            ctx.counters.drop("icmp-send-error")
            return
        ctx.counters.inc("icmp-request")

    def _scope6(self) -> int:
        """Interface index for link-local destinations: the IPv6 template interface."""
        conf = self.ctx.conf
        name = getattr(conf, "outbound_if6", None) or getattr(conf, "ifname6", None)
        try:
            return socket.if_nametoindex(name) if name else 0
        except OSError:
            return 0

    def _echo(self, ver: int, ident: int) -> _Echo | None:
        """The socket for (family, identifier), opened and registered on first use."""
        key = (ver, ident)
        echo = self.echos.get(key)
        if echo is not None:
            return echo
        ctx = self.ctx
        if len(self.echos) >= MAX_SOCKETS:
            ctx.counters.drop("icmp-too-many-sockets")
            return None
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
        conf = ctx.conf
        out = getattr(conf, "outbound4" if ver == 4 else "outbound6", None)
        host = socket.inet_ntop(fam, bytes(out)) if out else ("0.0.0.0" if ver == 4 else "::")
        ifname = getattr(conf, "outbound_if4" if ver == 4 else "outbound_if6", None)
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
        echo = _Echo(ver, ident, sock)
        self.echos[key] = echo
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

    # -- timers / shutdown ---------------------------------------------------
    def tick(self, now: float) -> None:
        """Close the sockets idle (no guest request) for ICMP_TIMEOUT seconds."""
        for key in [k for k, e in self.echos.items() if now - e.last >= ICMP_TIMEOUT]:
            self._close(key)
            self.ctx.counters.inc("icmp-socket-expired")

    def _close(self, key: tuple[int, int]) -> None:
        echo = self.echos.pop(key)
        try:
            self.ctx.loop.remove_reader(echo.sock.fileno())
        finally:
            echo.sock.close()

    def close(self) -> None:
        for key in list(self.echos):
            self._close(key)
