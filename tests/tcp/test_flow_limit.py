"""--max-flows: at the limit a new guest connection is refused at once (RST|ACK)
and counted, while the established ones keep working."""
from __future__ import annotations

import os
import sys
import textwrap

import pytest

from .world import World

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

GUEST_CLIENT = textwrap.dedent("""
    import socket, sys, time
    host, port = sys.argv[1], int(sys.argv[2])
    held = [socket.create_connection((host, port), timeout=5) for _ in range(2)]
    t = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=5)
        third = "connected"
    except ConnectionRefusedError:
        third = "refused"
    took = time.monotonic() - t
    for i, s in enumerate(held):          # the held flows still carry data
        s.sendall(b"ping%d" % i)
        assert s.recv(16) == b"ping%d" % i
    print(third, f"{took:.3f}")
""")


def test_flow_limit_refuses_new_connections_and_counts(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    w = World("--max-flows", "2")
    try:
        echo = w.server("host", "echo-server", "127.0.0.1", "7300")
        try:
            r = w.sb.guest(sys.executable, "-c", GUEST_CLIENT, w.gw4, "7300", timeout=60)
            verdict, seconds = r.stdout.split()
            assert verdict == "refused" and float(seconds) < 1.0
            assert w.daemon.counters().get("tcp_flows_refused", 0) >= 1
        finally:
            echo.kill()
            echo.wait()
    finally:
        w.close()
