"""Which ports are bound in a network namespace: pasta's ``auto`` port scan.

pasta's ``-t auto``/``-u auto``/``-T auto``/``-U auto`` forward whatever is
bound on the other side, re-scanned every second (passt's FWD_PORT_SCAN
interval), by reading ``/proc/net/{tcp,tcp6,udp,udp6}``. The files are opened
once, at start-up, in the namespace to watch, and re-read with ``os.pread``
from offset 0: a procfs net file stays bound to the namespace it was opened
in (and stays readable after the daemon drops privileges), so the daemon's
main thread can scan a namespace it is not in. The opening thread must have
entered the namespace and open ``/proc/thread-self/net/...``: ``/proc/net`` is
``/proc/self/net``, the *thread group leader's* namespace.

What counts as bound: TCP sockets in LISTEN (state 0A), UDP sockets in CLOSE
(07, bound and not connected), filtered by local address (``accept``; for
example ``loopback_or_any`` for a relay that connects to 127.0.0.1/::1).
Sockets of this very process are left out (``exclude_own``, by inode, from
``/proc/self/fd``): the daemon's own listeners must never be forwarded back
through the other direction (``-T auto`` would see the ``-t`` listeners in the
host namespace, ``-t auto`` the splice listeners in the target namespace).
A process can always read its own ``/proc/self/fd``, even when not dumpable.

Reading the records of sequential ``pread`` calls is only consistent when each
call starts where the previous one ended (the seq_file's position), which is
what ``read_all`` does.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import NamedTuple

TCP_LISTEN = 0x0A
UDP_UNCONNECTED = 0x07   # TCP_CLOSE: bound, not connected
FILES = {("tcp", 4): "tcp", ("tcp", 6): "tcp6", ("udp", 4): "udp", ("udp", 6): "udp6"}
_LITTLE = sys.byteorder == "little"


class ProcSocket(NamedTuple):
    """One record of /proc/net/{tcp,udp}[6]."""

    addr: bytes      # 4 or 16 bytes, network order
    port: int
    state: int
    inode: int


def _addr(hexaddr: str) -> bytes:
    """procfs prints each 32-bit word of the address as a host-order integer."""
    raw = bytes.fromhex(hexaddr)
    if len(raw) not in (4, 16):
        raise ValueError(hexaddr)
    if not _LITTLE:
        return raw
    return b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))


def parse(text: bytes | str) -> list[ProcSocket]:
    """The records of one /proc/net/{tcp,tcp6,udp,udp6} text; bad lines are skipped."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    out: list[ProcSocket] = []
    for line in text.splitlines():
        parts = line.split()
        # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
        if len(parts) < 10 or not parts[0].endswith(":") or not parts[0][:-1].isdigit():
            continue
        try:
            host, _, port = parts[1].partition(":")
            out.append(ProcSocket(_addr(host), int(port, 16), int(parts[3], 16),
                                  int(parts[9])))
        except ValueError:
            continue
    return out


V4_ANY = bytes(4)
V4_LOOPBACK = bytes([127, 0, 0, 1])
V6_ANY = bytes(16)
V6_LOOPBACK = bytes(15) + b"\x01"
_V4MAPPED = bytes(10) + b"\xff\xff"


def loopback_or_any(addr: bytes) -> bool:
    """Reachable at 127.0.0.1 / ::1: bound to the wildcard or to exactly that address
    (v4-mapped forms included)."""
    if len(addr) == 16 and addr.startswith(_V4MAPPED):
        addr = addr[12:]
    return addr in (V4_ANY, V4_LOOPBACK, V6_ANY, V6_LOOPBACK)


def own_socket_inodes() -> set[int]:
    """Inodes of the sockets this process holds (``socket:[N]`` in /proc/self/fd)."""
    out: set[int] = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for name in names:
        try:
            link = os.readlink("/proc/self/fd/" + name)
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor, for one)
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def read_all(fd: int, chunk: int = 1 << 16) -> bytes:
    """The whole file from offset 0, each pread starting where the last one ended."""
    parts: list[bytes] = []
    offset = 0
    while True:
        data = os.pread(fd, chunk, offset)
        if not data:
            break
        parts.append(data)
        offset += len(data)
    return b"".join(parts)


def open_in_netns(netns_path: str | None, names: Iterable[str] = ("tcp", "tcp6", "udp", "udp6"),
                  timeout: float = 30.0) -> dict[str, int]:
    """``{name: fd}`` of /proc/thread-self/net/NAME as seen in ``netns_path`` (None: the
    calling thread's namespace). Files that do not exist (no IPv6) are left out.
    With a namespace, the files are opened from a short-lived thread that entered it."""
    names = list(names)

    def opener() -> dict[str, int]:
        fds: dict[str, int] = {}
        for name in names:
            try:
                fds[name] = os.open(f"/proc/thread-self/net/{name}", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
        return fds

    if netns_path is None:
        return opener()
    from passtcore import netns

    return netns.call_in(netns_path, opener, timeout, what="opening /proc/net files")


class PortScanner:
    """Bound ports of one namespace, from procfs files opened there.

    ``PortScanner(tcp4=fd, tcp6=fd, udp4=fd, udp6=fd)`` takes open descriptors of
    /proc/.../net/{tcp,tcp6,udp,udp6} (any may be None) and owns them (``close()``);
    ``PortScanner.open(netns_path)`` opens them inside a namespace. ``bound("tcp")``
    is the set of ports with a listening TCP socket, ``bound("udp")`` of bound,
    unconnected UDP sockets, whose local address passes ``accept`` (default: any
    address) and, with ``exclude_own``, that are not this process's own sockets.
    """

    def __init__(self, tcp4: int | None = None, tcp6: int | None = None,
                 udp4: int | None = None, udp6: int | None = None, *,
                 accept: Callable[[bytes], bool] | None = None,
                 exclude_own: bool = True) -> None:
        self.fds: dict[tuple[str, int], int] = {}
        for key, fd in ((("tcp", 4), tcp4), (("tcp", 6), tcp6),
                        (("udp", 4), udp4), (("udp", 6), udp6)):
            if fd is not None:
                self.fds[key] = fd
        self.accept = accept
        self.exclude_own = exclude_own

    @classmethod
    def open(cls, netns_path: str | None = None, protos: Iterable[str] = ("tcp", "udp"), *,
             accept: Callable[[bytes], bool] | None = None,
             exclude_own: bool = True) -> PortScanner:
        """Open the files of ``protos`` in ``netns_path`` (None: the calling thread's
        namespace). Call before dropping privileges if entering a namespace."""
        protos = list(protos)
        names = [FILES[(p, v)] for p in protos for v in (4, 6)]
        fds = open_in_netns(netns_path, names)
        return cls(fds.get("tcp"), fds.get("tcp6"), fds.get("udp"), fds.get("udp6"),
                   accept=accept, exclude_own=exclude_own)

    def sockets(self, proto: str) -> list[ProcSocket]:
        """The bound (TCP: listening; UDP: unconnected) sockets of ``proto``, filtered."""
        if proto not in ("tcp", "udp"):
            raise ValueError(f"unknown protocol {proto!r}")
        want = TCP_LISTEN if proto == "tcp" else UDP_UNCONNECTED
        found: list[ProcSocket] = []
        for version in (4, 6):
            fd = self.fds.get((proto, version))
            if fd is None:
                continue
            for rec in parse(read_all(fd)):
                if rec.state == want and rec.port and (self.accept is None
                                                       or self.accept(rec.addr)):
                    found.append(rec)
        if found and self.exclude_own:
            own = own_socket_inodes()
            found = [r for r in found if r.inode not in own]
        return found

    def bound(self, proto: str) -> set[int]:
        """Ports bound for ``proto`` ("tcp" or "udp")."""
        return {r.port for r in self.sockets(proto)}

    def close(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()

    def __enter__(self) -> PortScanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
