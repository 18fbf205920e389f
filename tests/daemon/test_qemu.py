"""A real QEMU 7.2 on the daemon's stream socket: ``-netdev tap`` (in the guest
namespace) and ``-netdev stream,server=off`` joined by ``-netdev hubport``, so
QEMU relays between the guest kernel's tap and the daemon."""
from __future__ import annotations

import os
import signal

import pytest

from passtcore.sandbox import Sandbox

pytestmark = [pytest.mark.netns, pytest.mark.qemu]


def test_arp_through_qemu(qemu_guest: Sandbox) -> None:
    sb = qemu_guest
    r = sb.guest("busybox", "arping", "-c", "2", "-w", "5", "-I", "eth0", sb.gw4, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert Sandbox.host_mac.upper() in r.stdout.upper()
    c = sb.daemon.counters()
    assert c["clients"] == 1 and c["frames_out"] >= 2


def test_ping_gateway_through_qemu(qemu_guest: Sandbox) -> None:
    sb = qemu_guest
    sb.guest("ip", "addr", "add", f"{sb.host_addr4}/24", "dev", "eth0")
    sb.guest("ip", "route", "add", "default", "via", sb.gw4)
    r = sb.guest("ping", "-c", "2", "-W", "3", sb.gw4, check=False)
    assert r.returncode == 0, r.stdout + r.stderr + sb.daemon.log()[-2000:]
    assert "2 received" in r.stdout


def test_one_off_exits_0_when_qemu_goes(serve_qemu_guest) -> None:
    sb = serve_qemu_guest("--one-off")
    sb.guest("busybox", "arping", "-c", "1", "-w", "5", "-I", "eth0", sb.gw4, check=False)
    os.kill(sb.qemu.pid, signal.SIGTERM)  # QEMU is killed: the daemon's client goes
    sb.qemu.wait(10)
    assert sb.daemon.wait(10) == 0
    assert "Client closed connection, exiting" in sb.daemon.log()


def test_dhcp_lease_through_qemu(qemu_guest: Sandbox) -> None:
    sb = qemu_guest
    r = sb.guest("udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "2", check=False,
                 timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    addrs = sb.guest("ip", "-4", "addr", "show", "eth0").stdout
    assert f"inet {sb.host_addr4}/24" in addrs
    assert f"default via {sb.gw4}" in sb.guest("ip", "-4", "route").stdout


def test_next_qemu_is_served_without_one_off(qemu_guest: Sandbox) -> None:
    from tests.conftest import start_qemu

    sb = qemu_guest
    os.kill(sb.qemu.pid, signal.SIGTERM)
    sb.qemu.wait(10)
    import time

    deadline = time.monotonic() + 10
    while "waiting for a new one" not in sb.daemon.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sb.daemon.alive()
    q2 = start_qemu(sb, sb.daemon.socket_path)
    while sb.daemon.log().count("accepted connection from PID") < 2:
        assert time.monotonic() < deadline + 10 and q2.poll() is None
        time.sleep(0.05)
    r = sb.guest("busybox", "arping", "-c", "1", "-w", "5", "-I", "eth0", sb.gw4, check=False)
    assert r.returncode == 0, r.stdout
    assert sb.daemon.counters()["clients"] == 2
