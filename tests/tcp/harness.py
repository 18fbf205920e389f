"""Frame-level harness for the TCP/UDP engines.

A real ``Loop`` and ``Context`` whose front end collects the frames meant for
the guest; a scapy-built "guest" on one side and real kernel sockets on the
host's loopback on the other (the gateway maps to loopback, so these tests need
no namespace and send nothing off the machine). scapy is the independent
oracle for what the engines emit (checksums included).
"""
from __future__ import annotations

import ipaddress
import random
import socket
import time
from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from passtcore.run.process.config import NetConfig

from engine_support import EngineHarness

OUR_MAC = "02:11:22:33:44:55"
GUEST_MAC = "52:54:00:12:34:56"
GUEST4, GW4 = "192.0.2.10", "192.0.2.1"
GUEST6, GW6 = "2001:db8::10", "fe80::1"
OUR_LL = "fe80::211:22ff:fe33:4455"
GUEST_LL = "fe80::5054:ff:fe12:3456"


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def make_conf(**changes: Any) -> NetConfig:
    base = dict(
        our_mac=bytes.fromhex(OUR_MAC.replace(":", "")), addr4=ip(GUEST4), prefix4=24,
        gw4=ip(GW4), addr6=ip(GUEST6), prefix6=64, gw6=ip(GW6), addr6_ll=ip(OUR_LL),
        gw6_ll=ip(GW6), mtu=65520, dns4=[], dns6=[],
    )
    base.update(changes)
    return NetConfig(**base)


class Harness(EngineHarness):
    def __init__(self, engine_cls: type, conf: NetConfig | None = None) -> None:
        super().__init__(engine_cls, conf or make_conf())
        self.ctx.guest_mac = bytes.fromhex(GUEST_MAC.replace(":", ""))
        self.seen = 0

    def inject(self, pkt: Any) -> None:
        self.feed(bytes(Ether(src=GUEST_MAC, dst=OUR_MAC) / pkt))

    def pump(self, seconds: float = 0.05) -> None:
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            self.loop.run_once(min(left, 0.01))

    def new(self) -> list[Any]:
        """Frames sent to the guest since the last call, parsed by scapy."""
        out = [Ether(f) for f in self.sink.frames[self.seen:]]
        self.seen = len(self.sink.frames)
        return out

    def wait_for(self, pred: Any, timeout: float = 2.0) -> list[Any]:
        """Pump until a frame matching ``pred`` arrives; all new frames so far."""
        got: list[Any] = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got += self.new()
            if any(pred(p) for p in got):
                return got
            self.loop.run_once(0.01)
        got += self.new()
        return got



def tcp_of(p: Any) -> Any:
    return p[TCP] if TCP in p else None


def checksums_ok(p: Any) -> bool:
    """Recompute with scapy and compare (the independent oracle)."""
    raw = bytes(p)
    q = Ether(raw)
    l3 = q[IP] if IP in q else q[IPv6]
    l4 = q[TCP] if TCP in q else q[UDP]
    sent = l4.chksum
    if UDP in q and IP in q and sent == 0:
        ok4 = True
    else:
        del l4.chksum
        ok4 = Ether(bytes(q))[l4.__class__].chksum == sent
    if IP in q:
        s = l3.chksum
        del l3.chksum
        return ok4 and Ether(bytes(q))[IP].chksum == s
    return ok4


def free_port(family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(family, kind) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return s.getsockname()[1]


def guest_port() -> int:
    return random.randint(20000, 40000)
