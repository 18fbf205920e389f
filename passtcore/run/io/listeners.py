"""Host sockets of forwarded ports (``-t``/``-u``; passt-reference 3.2, 7.2).

A spec becomes ``Forward`` entries (bind address, device, host port, guest
port); ``open_listeners`` binds them (TCP: one dual-stack socket when both
families are on; UDP: one per family), skipping busy ports for ``all`` and
turning ``EMFILE``/``ENFILE`` into the documented fatal error. A
``ListenerSet`` keeps one protocol's sockets on the event loop and can change
its set of ports while running (``-t auto``: ports found bound in the
namespace come and go).

The option parser gives ``passtcore.portspec.PortSpec`` objects
(``conf.tcp_ports``/``conf.udp_ports``); ``spec_entries`` also accepts spec
text (parsed with ``portspec.parse_spec``) and ``(host, guest)`` pairs.
"""
from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("passtcore.fwd")

EPHEMERAL_MIN = 49152


class ForwardError(RuntimeError):
    """A fatal forwarding error with passt's message (exit 1)."""

@dataclass(frozen=True)
class Forward:
    address: str | None  # bind address, None = wildcard
    dev: str | None      # SO_BINDTODEVICE
    host_port: int
    guest_port: int
    all_ports: bool = False  # from 'all'/exclusion-only: busy ports are skipped


def spec_entries(spec: Any, proto: str = "tcp") -> list[Forward]:
    """Normalise one parsed or textual spec into ``Forward`` entries."""
    if spec is None:
        return []
    if isinstance(spec, Forward):
        return [spec]
    if isinstance(spec, str):
        from passtcore import portspec

        return spec_entries(portspec.parse_spec(spec, proto))
    to_spec = getattr(spec, "to_spec", None)
    address = getattr(spec, "address", None)
    dev = getattr(spec, "ifname", None) or getattr(spec, "dev", None)
    expand = getattr(spec, "expand", None)
    if callable(expand):  # passtcore.portspec.PortSpec
        mapping = expand()
        all_ports = getattr(spec, "mode", "") == "all" or not getattr(spec, "forwards", ())
        items = mapping.items() if hasattr(mapping, "items") else mapping
        return [Forward(address, dev, int(h), int(g), all_ports)
                for h, g in items if int(h) != 0]
    if callable(to_spec):  # a libvirt-model PortForward
        return spec_entries(to_spec(), getattr(spec, "proto", proto))
    if isinstance(spec, dict):
        return [Forward(None, None, int(h), int(g)) for h, g in spec.items()]
    out = []
    for item in spec:  # iterable of specs or (host, guest) pairs
        if isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, int) for x in item):
            out.append(Forward(None, None, item[0], item[1]))
        else:
            out.extend(spec_entries(item, proto))
    return out


def conf_specs(conf: Any, proto: str) -> list[Forward]:
    """All forward entries for ``proto`` ("tcp"/"udp") from the parsed options."""
    names = {"tcp": ("tcp_ports", "tcp_forward", "tcp_forwards", "forward_tcp"),
             "udp": ("udp_ports", "udp_forward", "udp_forwards", "forward_udp")}[proto]
    for name in names:
        value = getattr(conf, name, None)
        if value is None:
            options = getattr(conf, "options", None)
            value = getattr(options, name, None) if options is not None else None
        if value:
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                value = [value]
            out: list[Forward] = []
            for spec in value:
                out.extend(spec_entries(spec, proto))
            return out
    return []


def _bind_one(family: int, kind: int, fw: Forward, v6only: bool) -> socket.socket:
    s = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        if fw.dev:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, fw.dev.encode())
        host = fw.address or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        s.bind((host, fw.host_port))
        if kind == socket.SOCK_STREAM:
            s.listen(128)
        return s
    except BaseException:
        s.close()
        raise


def open_listeners(entries: Iterable[Forward], kind: int, v4: bool = True,
                   v6: bool = True) -> list[tuple[socket.socket, Forward]]:
    """Bind every entry; TCP uses one dual-stack socket when possible, UDP two.

    Busy/forbidden ports are skipped for ``all``-style specs; an explicit port
    that cannot be bound only fails if nothing at all could be bound.
    """
    out: list[tuple[socket.socket, Forward]] = []
    entries = list(entries)
    failures = 0
    try:
        for fw in entries:
            families: list[tuple[int, bool]] = []
            if fw.address:
                fam = socket.AF_INET6 if ":" in fw.address else socket.AF_INET
                families = [(fam, True)]
            elif kind == socket.SOCK_STREAM and v4 and v6:
                families = [(socket.AF_INET6, False)]
            else:
                if v4:
                    families.append((socket.AF_INET, True))
                if v6:
                    families.append((socket.AF_INET6, True))
            for fam, v6only in families:
                try:
                    out.append((_bind_one(fam, kind, fw, v6only), fw))
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE):
                        raise ForwardError("Can't open enough sockets for port specifier") from exc
                    if not v6only and fam == socket.AF_INET6:
                        # no dual-stack: one socket per family
                        for f2, o2 in ((socket.AF_INET, True), (socket.AF_INET6, True)):
                            try:
                                out.append((_bind_one(f2, kind, fw, o2), fw))
                            except OSError as exc2:
                                if exc2.errno in (errno.EMFILE, errno.ENFILE):
                                    raise ForwardError(
                                        "Can't open enough sockets for port specifier") from exc2
                                failures += 1
                        continue
                    failures += 1
                    if not fw.all_ports:
                        log.warning("forwarding: can't bind port %d: %s", fw.host_port, exc)
        if entries and not out:
            raise ForwardError("Failed to bind any port for port specifier")
    except BaseException:
        for s, _ in out:
            s.close()
        raise
    return out


OnReady = Callable[[socket.socket, Forward], Any]


class ListenerSet:
    """One protocol's forwarded-port sockets, registered on the loop:
    ``on_ready(sock, forward)`` runs when one is readable."""

    def __init__(self, loop: Any, kind: int, on_ready: OnReady, v4: bool = True,
                 v6: bool = True) -> None:
        self.loop = loop
        self.kind = kind
        self.on_ready = on_ready
        self.v4, self.v6 = v4, v6
        self.socks: list[tuple[socket.socket, Forward]] = []

    def __len__(self) -> int:
        return len(self.socks)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self.socks))

    def _register(self, s: socket.socket, fw: Forward) -> None:
        self.socks.append((s, fw))
        self.loop.add_reader(s.fileno(), lambda s=s, fw=fw: self.on_ready(s, fw))

    def open(self, entries: Iterable[Forward]) -> list[tuple[socket.socket, Forward]]:
        """Bind ``entries`` at start-up (errors as ``open_listeners``: fatal)."""
        opened = open_listeners(entries, self.kind, v4=self.v4, v6=self.v6)
        for s, fw in opened:
            self._register(s, fw)
        return opened

    def ports(self) -> set[int]:
        return {fw.host_port for _, fw in self.socks}

    def set_ports(self, wanted: set[int]) -> tuple[list[tuple[socket.socket, Forward]], list[int]]:
        """While running (``auto``): bind the ports of ``wanted`` not bound yet (a
        port that cannot be bound is skipped) and close the others. Returns the
        sockets opened and the ports closed."""
        have = self.ports()
        opened: list[tuple[socket.socket, Forward]] = []
        for port in sorted(wanted - have):
            try:
                new = open_listeners([Forward(None, None, port, port, all_ports=True)],
                                     self.kind, v4=self.v4, v6=self.v6)
            except ForwardError:
                continue
            for s, fw in new:
                self._register(s, fw)
            opened += new
        gone = sorted(have - wanted)
        for s, fw in list(self.socks):
            if fw.host_port in gone:
                self.remove(s)
        return opened, gone

    def remove(self, s: socket.socket) -> None:
        self.socks = [(x, fw) for x, fw in self.socks if x is not s]
        if s.fileno() >= 0:
            self.loop.remove_reader(s.fileno())
            s.close()

    def pause(self, s: socket.socket, seconds: float) -> None:
        """Stop watching ``s`` for a while (out of descriptors: it would spin)."""
        fd = s.fileno()
        self.loop.remove_reader(fd)

        def resume() -> None:
            for x, fw in self.socks:
                if x is s and s.fileno() >= 0:
                    self.loop.add_reader(fd, lambda s=s, fw=fw: self.on_ready(s, fw))
                    return

        self.loop.call_later(seconds, resume)

    def close(self) -> None:
        for s, _ in list(self.socks):
            self.remove(s)
