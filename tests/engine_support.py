"""Running one daemon engine on frames, in process, the way the dispatcher does.

Shared by the frame-level tests of the L2 services (tests/l2) and of TCP/UDP
(tests/tcp, tests/udp): a real Loop and Context, and a front end that keeps
what would go to the guest.
"""
from __future__ import annotations

from typing import Any

import passtcore
from passtcore.run.conf import NetConfig
from passtcore.run.context import Context
from passtcore.run.loop import Loop


class Collector:
    """Front end that keeps the frames sent to the guest (copied: buffers are reused)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, frame: Any) -> bool:
        self.frames.append(bytes(frame))
        return True

    def send_many(self, frames: list[Any]) -> int:
        for f in frames:
            self.send(f)
        return len(frames)


class EngineHarness:
    """One engine on a real Loop and Context; ``feed`` is a guest frame arriving."""

    def __init__(self, engine_cls: type, conf: NetConfig) -> None:
        self.loop = Loop()
        self.ctx = Context(conf, self.loop)
        self.sink = Collector()
        self.ctx.frontend = self.sink
        self.engine = engine_cls(self.ctx)

    def feed(self, frame: bytes) -> None:
        info = passtcore.headers.parse_frame(frame)
        if not info.eth_src[0] & 1:  # the guest MAC is learned as the dispatcher does
            self.ctx.guest_mac = bytes(info.eth_src)
        self.ctx.learn(info)
        self.engine.handle(memoryview(frame), info)

    @property
    def counters(self) -> Any:
        return self.ctx.counters

    def close(self) -> None:
        if hasattr(self.engine, "close"):
            self.engine.close()
        self.loop.close()
