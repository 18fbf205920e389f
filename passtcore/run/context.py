"""The Context handed to every protocol engine.

It bundles what an engine needs and nothing about how frames travel:
the network configuration (``conf``), the counters, the loop, what was
learned from guest traffic (guest MAC, addresses seen) and the two output
calls ``to_guest``/``to_guest_many``. Output goes to the pcap writer, then to
whichever front end is attached (stream socket, inherited fd, or tap); the
front end guarantees whole frames only.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from passtcore.run.counters import Counters

if TYPE_CHECKING:
    from passtcore.run.conf import NetConfig
    from passtcore.run.loop import Loop
    from passtcore.run.pcap import PcapWriter

BROADCAST = b"\xff" * 6
Frame = bytes | bytearray | memoryview


class FrameSink(Protocol):
    def send(self, frame: Frame) -> bool: ...
    def send_many(self, frames: list[Frame]) -> int: ...


class Context:
    """Shared state of one daemon instance (see docs/ARCHITECTURE.md, Context API)."""

    def __init__(self, conf: NetConfig, loop: Loop, counters: Counters | None = None,
                 pcap: PcapWriter | None = None, options: Any = None) -> None:
        self.conf = conf
        self.loop = loop
        self.counters = counters if counters is not None else Counters()
        self.pcap = pcap
        self.options = options
        self.log = logging.getLogger("passtcore.run")
        self.frontend: FrameSink | None = None
        self.guest_mac: bytes = BROADCAST
        # Learned from guest traffic (passt-reference 4.7).
        self.addr_seen4: bytes | None = conf.addr4
        self.addr_seen6: bytes | None = conf.addr6
        self.addr_ll_seen6: bytes | None = None  # the guest's, once it uses it (conf.addr6_ll is ours)
        self.engines: dict[str, Any] = {}

    def to_guest(self, frame: Frame) -> None:
        """Send one complete Ethernet frame to the guest (captured, counted)."""
        if self.pcap is not None:
            self.pcap.write(frame)
        fe = self.frontend
        if fe is None:
            self.counters.drop("no-guest")
            return
        fe.send(frame)

    def to_guest_many(self, frames: Iterable[Frame]) -> None:
        frames = list(frames)
        if not frames:
            return
        if self.pcap is not None:
            self.pcap.write_many(frames)
        fe = self.frontend
        if fe is None:
            self.counters.drop("no-guest", len(frames))
            return
        fe.send_many(frames)

    # Learning, called by the dispatcher for every parsed guest frame.
    def learn(self, info: Any) -> None:
        if info.ip_version == 4:
            if info.src != b"\0\0\0\0":
                self.addr_seen4 = bytes(info.src)
        elif info.ip_version == 6:
            src = bytes(info.src)
            if src[0] == 0xFE and (src[1] & 0xC0) == 0x80:
                self.addr_ll_seen6 = src
                if self.addr_seen6 is None:
                    self.addr_seen6 = src
            elif any(src) and src[0] != 0xFF:
                self.addr_seen6 = src
