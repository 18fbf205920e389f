"""The acceptance modules' shared guest: one daemon per module (socket mode, in a
private Sandbox, ``-t FWD_TCP``), driven through the stream socket."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from scapy.layers.l2 import ARP

from daemon.helpers import StreamClient
from passtcore.sandbox import Sandbox

from .support import FWD_TCP, GW4, Guest, require_netns, who_has


@pytest.fixture(scope="module")
def world() -> Iterator[Guest]:
    """Module-scoped: each test uses its own ports/addresses, so state never leaks."""
    require_netns()
    with Sandbox(prefix="pcacc") as sb:
        d = sb.start_daemon("-t", str(FWD_TCP), mode="socket")
        assert d.socket_path
        g = Guest(sb, d, StreamClient(d.socket_path))
        # Like a booted guest: the daemon learns its MAC from a first frame (until then
        # it sends to broadcast), so tests that start with host traffic can run alone.
        g.send(who_has(GW4))
        g.expect(lambda p: ARP in p and p[ARP].op == 2)
        try:
            yield g
        finally:
            g.client.close()
