"""pasta's ``-t auto`` / ``-u auto``: ports bound in the namespace, forwarded from the host.

In namespace mode, every second (passt's FWD_PORT_SCAN interval) the ports
bound in the target namespace are read from its ``/proc/net`` files (opened
there once, at start-up: ``io/portscan.py``) and the TCP and UDP engines are
told the new set: each engine binds the host ports that appeared (skipping
any it cannot bind) and closes those that went away, through its
``ListenerSet``. Connections and datagrams to those host ports then reach the
guest on the same port over the tap, like any ``-t``/``-u`` forward.

What counts: TCP sockets listening, UDP sockets bound (and, as pasta does for
``-u auto``, the ports of listening TCP sockets too), on any address but
loopback (the guest's loopback is not reachable through the tap), minus the
daemon's own sockets (the ``-T``/``-U`` splice listeners in the namespace).
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Any

log = logging.getLogger("passtcore.run")

SCAN_INTERVAL = 1.0


def not_loopback(addr: bytes) -> bool:
    return not ipaddress.ip_address(addr).is_loopback


def is_auto(specs: Any) -> bool:
    return any(getattr(s, "mode", None) == "auto" for s in specs or ())


class AutoForwarder:
    """Keeps the engines' forwarded ports equal to what the namespace has bound."""

    def __init__(self, loop: Any, scanner: Any, tcp: Any = None, udp: Any = None) -> None:
        self.scanner = scanner
        self.tcp, self.udp = tcp, udp
        self.ports: dict[str, set[int]] = {"tcp": set(), "udp": set()}
        self.scan()
        self.timer = loop.call_every(SCAN_INTERVAL, self.scan)

    def scan(self) -> None:
        tcp = self.scanner.bound("tcp")
        wanted = {"tcp": tcp, "udp": self.scanner.bound("udp") | tcp}
        for proto, engine in (("tcp", self.tcp), ("udp", self.udp)):
            if engine is None or wanted[proto] == self.ports[proto]:
                continue
            added = sorted(wanted[proto] - self.ports[proto])
            gone = sorted(self.ports[proto] - wanted[proto])
            engine.set_auto_ports(wanted[proto])
            self.ports[proto] = wanted[proto]
            log.info("%s auto forwarding: +%s -%s", proto.upper(), added or "[]", gone or "[]")

    def close(self) -> None:
        self.timer.cancel()
        self.scanner.close()


def from_options(opts: Any, loop: Any, engines: dict[str, Any]) -> AutoForwarder | None:
    """The forwarder for ``-t auto``/``-u auto`` in namespace mode, or None.
    Opens the namespace's /proc/net files: call before dropping privileges."""
    tcp = engines.get("tcp") if is_auto(opts.tcp_ports) else None
    udp = engines.get("udp") if is_auto(opts.udp_ports) else None
    if not opts.namespace_mode or (tcp is None and udp is None):
        return None
    from passtcore.run.io.portscan import PortScanner

    protos = ["tcp"] + (["udp"] if udp is not None else [])
    scanner = PortScanner.open(opts.netns, protos, accept=not_loopback)
    return AutoForwarder(loop, scanner, tcp, udp)
