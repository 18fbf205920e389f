"""Namespace mode with the tap's checksum/TSO offloads (and without), real guest.

At MTU 1500 the guest's stack hands the tap 64 KiB TCP segments (checksum
partial) and takes 64 KiB segments from the daemon, which the kernel splits
at the guest's MSS: every byte must still arrive, in order, both ways, over
IPv4 and IPv6; with ``--no-tap-offload`` the plain 1.5 KB path does the same.
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from .test_tcp_netns import MiB, _bulk, _need_root
from .world import PEERS, World

pytestmark = pytest.mark.netns


def _world(offload: bool) -> World:
    _need_root()
    return World(*(() if offload else ("--no-tap-offload",)), mtu=1500)


@pytest.fixture(scope="module", params=[True, False], ids=["offload", "plain"])
def world1500(request):
    w = _world(request.param)
    w.offload = request.param
    yield w
    w.close()


def test_offloads_are_what_the_tap_reports(world1500) -> None:
    feats = world1500.sb.guest("ethtool", "-k", "eth0").stdout
    tso = next(line for line in feats.splitlines() if line.startswith("tcp-segmentation-offload"))
    tx_csum = next(line for line in feats.splitlines() if line.startswith("tx-checksumming"))
    assert (": on" in tso) == world1500.offload, tso
    assert (": on" in tx_csum) == world1500.offload, tx_csum
    assert "Serving tap" in world1500.log()


@pytest.mark.slow
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("direction", ["guest-to-host", "host-to-guest"])
def test_bulk_100mib_at_mtu_1500(world1500, v6: bool, direction: str) -> None:
    port = 7400 + (10 if v6 else 0) + (1 if direction[0] == "h" else 0) + (0 if world1500.offload else 20)
    _bulk(world1500, v6, direction, 100 * MiB, port)
    if world1500.offload:
        # the guest really sent and got segments beyond its MTU
        c = world1500.daemon.counters()
        key = "tap_gso_in" if direction == "guest-to-host" else "tap_gso_out"
        assert c.get(key, 0) > 0, c


def test_mtu_change_while_a_flow_is_open(world1500) -> None:
    """The guest drops its MTU mid-transfer (and back): the stream goes on."""
    w = world1500
    port = 7450 + (0 if w.offload else 1)
    srv = w.server("host", "send-server", "127.0.0.1", str(port), str(40 * MiB), "13")
    client = w.sb.popen_guest(sys.executable, PEERS, "recv-client", w.gw4, str(port),
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        w.sb.guest("ip", "link", "set", "eth0", "mtu", "1280")
        time.sleep(0.3)
        w.sb.guest("ip", "link", "set", "eth0", "mtu", "9000")
        time.sleep(0.3)
        w.sb.guest("ip", "link", "set", "eth0", "mtu", "1500")
        got, _ = client.communicate(timeout=120)
        sent = w.result(srv, 120)
    finally:
        for p in (client, srv):
            if p.poll() is None:
                p.kill()
                p.wait()
    n_sent, h_sent, _ = sent.split()
    n_got, h_got, _ = got.split()
    assert (n_got, h_got) == (n_sent, h_sent)
