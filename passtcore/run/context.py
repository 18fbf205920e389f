"""The Context handed to every protocol engine.

It bundles what an engine needs and nothing about how frames travel: the
network configuration (``conf``), the counters, the loop, the flow registry
(``flows``), what was learned from guest traffic (guest MAC, addresses seen)
and the output calls. Engines build frames to the guest in the front end's
slots (``tx_slots(n)`` then ``tx_commit(lengths)``: see io/frontend.py) or
hand over frames built elsewhere (``to_guest``/``to_guest_many``, a copy).
Either way committed frames go to the pcap writer, then to the front end,
which sends them whole or counts them as dropped.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from passtcore.run.counters import Counters
from passtcore.run.flows import DEFAULT_MAX_FLOWS, FlowRegistry
from passtcore.run.io.frontend import Frontend, MemoryFrontend

if TYPE_CHECKING:
    from passtcore.run.io.loop import Loop
    from passtcore.run.io.pcap import PcapWriter
    from passtcore.run.process.config import NetConfig

BROADCAST = b"\xff" * 6
Frame = bytes | bytearray | memoryview


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
        # Until a front end is attached, frames go to a memory front end (kept: tests read it).
        self.frontend: Frontend = MemoryFrontend(self.counters)
        self.flows = FlowRegistry(int(getattr(conf, "max_flows", 0) or DEFAULT_MAX_FLOWS),
                                  self.counters, lambda: loop.now())
        self.guest_mac: bytes = BROADCAST
        # Learned from guest traffic (passt-reference 4.7).
        self.addr_seen4: bytes | None = conf.addr4
        self.addr_seen6: bytes | None = conf.addr6
        self.addr_ll_seen6: bytes | None = None  # the guest's, once it uses it (conf.addr6_ll is ours)
        self.engines: dict[str, Any] = {}

    # -- output to the guest ---------------------------------------------------
    def tx_slots(self, n: int) -> list[memoryview]:
        """Up to ``n`` writable frame buffers of the front end (see io/frontend.py)."""
        return self.frontend.tx_slots(n)

    def tx_commit(self, lengths: Sequence[int], gso_size: int = 0) -> int:
        """Send the first ``len(lengths)`` slots, captured first; frames accepted
        (``gso_size``: see ``Frontend.tx_commit``)."""
        if self.pcap is not None:
            self.pcap.write_many(self.frontend.slot_frames(lengths))
        return self.frontend.tx_commit(lengths, gso_size)

    def to_guest(self, frame: Frame) -> None:
        """Send one complete Ethernet frame built elsewhere (a copy)."""
        self.to_guest_many((frame,))

    def to_guest_many(self, frames: Iterable[Frame]) -> None:
        frames = list(frames)
        if not frames:
            return
        if self.pcap is not None:
            self.pcap.write_many(frames)
        self.frontend.send_many(frames)

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
