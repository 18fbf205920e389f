"""Running one daemon engine on frames, in process, through the real dispatcher.

Shared by the frame-level tests of the L2 services (tests/l2) and of TCP/UDP
(tests/tcp, tests/udp): a real Loop, Context and Dispatcher whose route table
holds only the engine under test, and a MemoryFrontend that keeps what would
go to the guest. Frames go in as the front ends hand them over (a batch), so
routing, learning, the error boundary and end-of-batch work are the daemon's.
"""
from __future__ import annotations

from typing import Any

from passtcore.run.context import Context
from passtcore.run.dispatch import ENGINES, Dispatcher
from passtcore.run.io.frontend import MemoryFrontend
from passtcore.run.io.loop import Loop
from passtcore.run.process.config import NetConfig


def route_of(engine_cls: type) -> str:
    """The dispatcher's route for an engine class."""
    for name, cls in ENGINES.items():
        if issubclass(engine_cls, cls) or issubclass(cls, engine_cls):
            return name
    raise LookupError(f"{engine_cls.__name__} is not in dispatch.ENGINES")


class EngineHarness:
    """One engine on a real Loop, Context and Dispatcher; ``feed`` is guest frames
    arriving as one batch."""

    def __init__(self, engine_cls: type, conf: NetConfig) -> None:
        self.loop = Loop()
        self.ctx = Context(conf, self.loop)
        self.dispatcher = Dispatcher(self.ctx, {route_of(engine_cls): engine_cls})
        self.sink = MemoryFrontend(self.ctx.counters, self.dispatcher.handle_batch)
        self.ctx.frontend = self.sink
        self.dispatcher.load_all()
        # None when the conf switches the service off (the dispatcher drops its frames)
        self.engine = next(iter(self.dispatcher.engines.values()), None)

    def feed(self, *frames: bytes) -> None:
        self.sink.feed(*frames)

    def advance(self, seconds: float) -> None:
        """Move the loop's clock forward: due timers run (retransmissions), then the
        daemon's once-a-second work (flow expiry) as at that time."""
        self.loop.skew += seconds
        self.loop.run_once(0)
        self.dispatcher.tick(self.loop.now())

    @property
    def counters(self) -> Any:
        return self.ctx.counters

    def close(self) -> None:
        self.dispatcher.close()
        self.loop.close()
