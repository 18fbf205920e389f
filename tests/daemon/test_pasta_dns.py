"""pasta's DNS defaults in namespace mode (passt-reference 3.1 DNS table, 4.5): resolvers
and search domains are *not* sent in DHCP, NDP (RDNSS/DNSSL) or DHCPv6 unless
``--dhcp-dns`` / ``--dhcp-search``; socket (passt) mode is unchanged (sent unless
``--no-dhcp-dns`` / ``--no-dhcp-search``, covered by tests/l2 and tests/acceptance).

Real peers: busybox udhcpc and a scapy router solicitation in the guest namespace
served by ``passtcore-run --netns``; the sandbox host's resolv.conf has loopback
resolvers (advertised as the gateway) and a search line.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from passtcore.sandbox import Sandbox

UDHCPC = "/usr/sbin/udhcpc"

RS_AND_RA = r'''
import time
from scapy.all import (AsyncSniffer, Ether, ICMPv6ND_RA, ICMPv6ND_RS, IPv6, get_if_hwaddr,
                       sendp)
me = get_if_hwaddr("eth0")
sniffer = AsyncSniffer(iface="eth0", count=1, lfilter=lambda p: ICMPv6ND_RA in p)
sniffer.start()
time.sleep(0.5)
sendp(Ether(src=me, dst="33:33:00:00:00:02") / IPv6(src="::", dst="ff02::2", hlim=255)
      / ICMPv6ND_RS(), iface="eth0", verbose=False)
sniffer.join(timeout=8)
if sniffer.running:
    sniffer.stop()
ra = sniffer.results[0][ICMPv6ND_RA]
types = []
opt = ra.payload
while opt and hasattr(opt, "type"):
    types.append(opt.type)
    opt = opt.payload
print(" ".join(map(str, types)))
'''


def lease(sb: Sandbox) -> dict[str, str]:
    """udhcpc's environment at 'bound' (its hook only records it)."""
    out = Path(sb.path("udhcpc.env"))
    script = Path(sb.path("udhcpc-hook.sh"))
    script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && env > "{out}.tmp" && mv "{out}.tmp" "{out}"\n'
                      "exit 0\n")
    script.chmod(0o755)
    r = sb.guest(UDHCPC, "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "1",
                 "-O", "search", "-s", str(script), check=False, timeout=40)
    assert r.returncode == 0, r.stdout + r.stderr
    env = {}
    for line in out.read_text().splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    return env


def ra_options(sb: Sandbox) -> set[int]:
    r = sb.guest(sys.executable, "-c", RS_AND_RA, check=False, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return {int(t) for t in r.stdout.split()}


RDNSS, DNSSL = 25, 31


def test_namespace_mode_sends_no_dns_by_default(served_guest: Sandbox) -> None:
    sb = served_guest
    env = lease(sb)
    assert env["ip"] == sb.host_addr4 and env["router"] == sb.gw4  # a real lease...
    assert "dns" not in env and "search" not in env, env           # ...without DNS
    opts = ra_options(sb)
    assert 3 in opts  # the prefix information is there
    assert RDNSS not in opts and DNSSL not in opts, opts


@pytest.mark.daemon_args("--dhcp-dns", "--dhcp-search")
def test_dhcp_dns_and_dhcp_search_send_them(served_guest: Sandbox) -> None:
    sb = served_guest
    env = lease(sb)
    assert env["dns"].split() == sb.dns4
    assert env["search"].split() == sb.search
    assert {RDNSS, DNSSL} <= ra_options(sb)


@pytest.mark.daemon_args("--dhcp-dns")
def test_dhcp_dns_alone(served_guest: Sandbox) -> None:
    sb = served_guest
    env = lease(sb)
    assert env["dns"].split() == sb.dns4 and "search" not in env, env
    opts = ra_options(sb)
    assert RDNSS in opts and DNSSL not in opts, opts


@pytest.mark.daemon_args("--dhcp-search", "-S", "lab.example.net")
def test_dhcp_search_alone(served_guest: Sandbox) -> None:
    env = lease(served_guest)
    assert env["search"] == "lab.example.net" and "dns" not in env, env
