"""TCP through the shared fixtures: a udhcpc-configured guest served in namespace
mode, and once through a real QEMU on the daemon's stream socket."""
from __future__ import annotations

import os
import sys

import pytest

from passtcore.sandbox import Sandbox

from .world import PEERS, wait_port

DOCS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "docs"))


class _W:  # the bits of World that wait_port needs
    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb


def _lease(sb: Sandbox) -> None:
    r = sb.guest("udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "2", check=False,
                 timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def _http_get(sb: Sandbox) -> None:
    srv = sb.popen_host(sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "8004",
                        "--directory", DOCS)
    try:
        wait_port(_W(sb), "host", 8004)
        r = sb.guest("curl", "-sS", "-m", "20", f"http://{sb.gw4}:8004/ARCHITECTURE.md",
                     timeout=30)
        with open(os.path.join(DOCS, "ARCHITECTURE.md")) as f:
            assert r.stdout == f.read()
    finally:
        srv.kill()
        srv.wait()


@pytest.mark.netns
def test_http_get_with_dhcp_lease(served_guest: Sandbox) -> None:
    _lease(served_guest)
    _http_get(served_guest)


@pytest.mark.netns
@pytest.mark.qemu
def test_http_get_through_qemu(qemu_guest: Sandbox) -> None:
    _lease(qemu_guest)
    _http_get(qemu_guest)
    # and a bulk transfer with a digest check through QEMU's relay
    srv = qemu_guest.popen_host(sys.executable, PEERS, "send-server", "127.0.0.1", "7501",
                                str(8 << 20), "3", stdout=__import__("subprocess").PIPE, text=True)
    assert srv.stdout is not None and srv.stdout.readline().strip() == "READY"
    got = qemu_guest.guest(sys.executable, PEERS, "recv-client", qemu_guest.gw4, "7501",
                           timeout=120).stdout.split()
    sent = srv.communicate(timeout=60)[0].split()
    assert got[:2] == sent[:2]
