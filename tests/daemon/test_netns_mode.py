"""Namespace mode (like pasta): a tap in the guest namespace served by the daemon,
with the guest's real kernel stack as the peer."""
from __future__ import annotations

import json
import os

import pytest

from passtcore.sandbox import Sandbox

pytestmark = pytest.mark.netns


def link(sb: Sandbox, name: str = "eth0") -> dict:
    return json.loads(sb.guest("ip", "-j", "-d", "link", "show", name).stdout)[0]


def test_tap_is_up_and_unconfigured(served_guest: Sandbox) -> None:
    info = link(served_guest)
    assert info["linkinfo"]["info_kind"] == "tun"
    assert "UP" in info["flags"]
    addrs = json.loads(served_guest.guest("ip", "-j", "-4", "addr", "show", "eth0").stdout)
    assert addrs == [] or addrs[0]["addr_info"] == []  # no IPv4 address configured
    lo = link(served_guest, "lo")
    assert "UP" in lo["flags"]


def test_arp_from_the_guest_kernel(served_guest: Sandbox) -> None:
    """busybox arping (a real ARP client) resolves the gateway to the daemon's MAC."""
    r = served_guest.guest("busybox", "arping", "-c", "1", "-w", "3", "-I", "eth0",
                           served_guest.gw4, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert Sandbox.host_mac.upper() in r.stdout.upper()
    c = served_guest.daemon.counters()
    assert c["frames_in"] >= 1 and c["frames_out"] >= 1


@pytest.mark.daemon_args("--config-net")
def test_config_net(served_guest: Sandbox) -> None:
    sb = served_guest
    info = link(sb)
    assert info["mtu"] == 65520
    addrs = json.loads(sb.guest("ip", "-j", "addr", "show", "eth0").stdout)[0]["addr_info"]
    have = {(a["local"], a["prefixlen"]) for a in addrs}
    assert (sb.host_addr4, 24) in have and (sb.host_addr6, 64) in have
    routes4 = json.loads(sb.guest("ip", "-j", "-4", "route", "show", "default").stdout)
    assert routes4[0]["gateway"] == sb.gw4 and routes4[0]["dev"] == "eth0"
    routes6 = json.loads(sb.guest("ip", "-j", "-6", "route", "show", "default").stdout)
    assert routes6[0]["gateway"].startswith("fe80::")
    # The gateway's neighbour entry resolves through the daemon's ARP.
    r = sb.guest("busybox", "arping", "-c", "1", "-w", "3", "-I", "eth0", sb.gw4, check=False)
    assert r.returncode == 0, r.stdout


def test_ns_mac_and_ifname(serve_guest) -> None:
    sb = serve_guest("--ns-mac-addr", "02:00:00:00:aa:01", "--ns-ifname", "tapx0", wait=False)
    import time

    deadline = time.monotonic() + 20
    while "ready: serving" not in sb.daemon.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    info = link(sb, "tapx0")
    assert info["address"] == "02:00:00:00:aa:01"
    assert "UP" in info["flags"]


def test_quits_when_the_namespace_goes(served_guest: Sandbox) -> None:
    import subprocess

    sb = served_guest
    subprocess.run(["ip", "netns", "del", sb.guest_ns], check=True, timeout=20)
    assert sb.daemon.wait(10) == 0
    assert "is gone, exiting" in sb.daemon.log()


def test_no_netns_quit_keeps_running(serve_guest) -> None:
    import subprocess
    import time

    sb = serve_guest("--no-netns-quit")
    subprocess.run(["ip", "netns", "del", sb.guest_ns], check=True, timeout=20)
    time.sleep(2.5)
    assert sb.daemon.alive()


def test_quits_when_the_target_process_goes(sandbox: Sandbox) -> None:
    """A namespace given as a PID: the isolated daemon (no capabilities: the
    target's /proc entries are out of its reach) keeps serving while the process
    lives, and exits 0 once it ends (a pidfd taken before isolation)."""
    import time

    from passtcore.sandbox import daemon_binary

    holder = sandbox.popen_guest("sleep", "60")
    time.sleep(0.2)
    log = sandbox.path("target.log")
    proc = sandbox.popen_host(daemon_binary(), "-f", "--runas", "0", "-l", log,
                              "--ns-ifname", "eth0", str(holder.pid))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if os.path.exists(log) and "ready: serving" in open(log).read():
                break
            time.sleep(0.05)
        time.sleep(2.5)   # the old path watch gave up after 1 s without capabilities
        assert proc.poll() is None, open(log).read()[-1500:]
        holder.kill()
        holder.wait()
        assert proc.wait(10) == 0
        assert "is gone, exiting" in open(log).read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if holder.poll() is None:
            holder.kill()
            holder.wait()
