"""The L2 services as real guest stacks see them (passt-reference 4.3, 5, 11.2).

A daemon serves the guest namespace of a sandbox (``served_guest``: tap eth0;
``qemu_guest``: real QEMU on the stream socket). Real clients run there:
busybox udhcpc, ISC dhclient (v4 and v6), the kernel's SLAAC, ping. What they
were told is compared with the sandbox's host addresses. Client hooks only
record their environment: the stock scripts would rewrite /etc/resolv.conf.
"""
from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

from passtcore.sandbox import wait_for

UDHCPC = "/usr/sbin/udhcpc"
DHCLIENT = "/usr/sbin/dhclient"


def hook(sb, name: str) -> tuple[str, Path]:
    """A client script writing its environment to <dir>/<reason>.env."""
    out = Path(sb.path(f"{name}-env"))
    out.mkdir(exist_ok=True)
    script = Path(sb.path(f"{name}-hook.sh"))
    # Written aside and renamed: the waiter must never read a half-written file.
    script.write_text('#!/bin/sh\nenv | sort > "%s/.$$.tmp" && mv "%s/.$$.tmp" "%s/${reason:-$1}.env"\n'
                      % (out, out, out))
    script.chmod(0o755)
    return str(script), out


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    return env


def udhcpc_lease(sb) -> dict[str, str]:
    script, out = hook(sb, "udhcpc")
    r = sb.guest(UDHCPC, "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "1", "-s", script,
                 check=False, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    return read_env(out / "bound.env")


def assert_v4_lease(sb, env: dict[str, str]) -> None:
    assert env["ip"] == sb.host_addr4
    assert env["subnet"] == str(ipaddress.IPv4Network(f"0.0.0.0/{sb.prefix4}").netmask)
    assert env["router"].split() == [sb.gw4]
    assert env["serverid"] == sb.gw4
    assert env["dns"].split() == sb.dns4
    assert env["search"].split() == sb.search
    assert env["mtu"] == "65520"
    assert env["lease"] == "4294967295"


def configure_v4(sb, env: dict[str, str]) -> None:
    sb.guest("ip", "addr", "add", f"{env['ip']}/{sb.prefix4}", "dev", "eth0")
    sb.guest("ip", "route", "add", "default", "via", env["router"])


def ping(sb, addr: str, v6: bool = False) -> None:
    args = ["ping", "-6"] if v6 else ["ping", "-4"]
    r = sb.guest(*args, "-c", "1", "-W", "2", addr, check=False, timeout=15)
    assert r.returncode == 0, r.stdout + r.stderr


def slaac_address(sb) -> str:
    """The global address from the RA prefix on eth0 (bounded poll)."""
    net = ipaddress.IPv6Network(f"{sb.host_addr6}/64", strict=False)

    def find():
        r = sb.guest("ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global")
        for line in r.stdout.splitlines():
            parts = line.split()
            cidr = parts[parts.index("inet6") + 1]
            a = ipaddress.IPv6Interface(cidr)
            if a.network.prefixlen == 64 and a.ip in net and "tentative" not in line:
                return str(a.ip)
        return None

    return wait_for(find, 20, "a SLAAC address on eth0")


def dhclient(sb, *args: str, name: str, timeout: float = 25) -> dict[str, str]:
    """dhclient in the foreground until its hook recorded a binding, then stopped by PID."""
    script, out = hook(sb, name)
    conf = Path(sb.path(f"{name}.conf"))
    conf.write_text("timeout 20;\nretry 1;\n")
    proc = sb.popen_guest(DHCLIENT, "-d", "-1", *args, "-sf", script, "-cf", str(conf),
                          "-lf", sb.path(f"{name}.leases"), "-pf", sb.path(f"{name}.pid"), "eth0")
    try:
        found = wait_for(lambda: [p for p in out.glob("*.env")
                                  if p.stem in ("BOUND", "BOUND6", "REBOOT", "RENEW6")],
                         timeout, f"dhclient {args} to bind")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    return read_env(found[0])


# Namespace mode follows pasta: resolvers and search domains are only sent with
# --dhcp-dns/--dhcp-search (tests/daemon/test_pasta_dns.py covers the default).
PASTA_DNS = pytest.mark.daemon_args("--dhcp-dns", "--dhcp-search")


# -- IPv4 ------------------------------------------------------------------------------

@PASTA_DNS
def test_udhcpc_lease_and_ping(served_guest):
    sb = served_guest
    env = udhcpc_lease(sb)
    assert_v4_lease(sb, env)
    configure_v4(sb, env)
    ping(sb, sb.gw4)
    drops = sb.daemon.drops()
    assert not any(k.startswith(("dhcp-", "arp-", "icmp-", "engine-error")) for k in drops), drops


@pytest.mark.skipif(not os.path.exists(DHCLIENT), reason="needs isc-dhcp-client")
@PASTA_DNS
def test_dhclient_v4_lease(served_guest):
    sb = served_guest
    env = dhclient(sb, "-4", name="dhclient4")
    assert env["new_ip_address"] == sb.host_addr4
    assert env["new_subnet_mask"] == "255.255.255.0"
    assert env["new_routers"] == sb.gw4
    assert env["new_domain_name_servers"].split() == sb.dns4
    assert env["new_domain_search"].split() == [d + "." for d in sb.search]
    assert env["new_interface_mtu"] == "65520"
    assert env["new_dhcp_lease_time"] == "4294967295"
    assert env["new_dhcp_server_identifier"] == sb.gw4


def test_options_reach_the_guest(serve_guest):
    sb = serve_guest("--mtu", "1500", "-S", "lab.example.net", "-D", "198.51.100.53",
                     "--dhcp-dns", "--dhcp-search")
    env = udhcpc_lease(sb)
    assert (env["mtu"], env["search"], env["dns"]) == ("1500", "lab.example.net", "198.51.100.53")
    assert env["ip"] == sb.host_addr4


def test_no_dhcp_swallows_requests(serve_guest):
    sb = serve_guest("--no-dhcp")
    script, out = hook(sb, "udhcpc")
    r = sb.guest(UDHCPC, "-i", "eth0", "-n", "-q", "-f", "-t", "2", "-T", "1", "-s", script,
                 check=False, timeout=30)
    assert r.returncode != 0 and not (out / "bound.env").exists()
    counters = sb.daemon.counters()
    assert counters.get("dhcp-reply", 0) == 0
    assert sum(v for k, v in counters.items() if "dhcp" in k and k.startswith("drop.")) >= 2


# -- IPv6 ------------------------------------------------------------------------------

def test_slaac_and_ping6(served_guest):
    sb = served_guest
    addr = slaac_address(sb)
    assert ipaddress.IPv6Address(addr) in ipaddress.IPv6Network(f"{sb.host_addr6}/64", strict=False)
    r = sb.guest("ip", "-6", "route", "show", "default")
    assert "via fe80:" in r.stdout and "dev eth0" in r.stdout, r.stdout
    ping(sb, sb.gw6, v6=True)
    # The link-local router itself (our address, reached with the template's scope id)
    router = r.stdout.split("via ")[1].split()[0]
    ping(sb, f"{router}%eth0", v6=True)


@pytest.mark.skipif(not os.path.exists(DHCLIENT), reason="needs isc-dhcp-client")
@PASTA_DNS
def test_dhclient_v6_lease(served_guest):
    sb = served_guest
    slaac_address(sb)  # eth0's link-local is usable (DAD done) by then
    env = dhclient(sb, "-6", name="dhclient6")
    assert env["new_ip6_address"] == sb.host_addr6
    assert env["new_dhcp6_name_servers"].split() == sb.dns6
    assert env["new_dhcp6_domain_search"].split() == [d + "." for d in sb.search]
    assert env["new_max_life"] == env["new_preferred_life"] == "4294967295"


def test_pcap_shows_dhcp_exchange(sandbox, serve_guest):
    pcap = sandbox.path("guest.pcap")
    sb = serve_guest(pcap_path=pcap)
    udhcpc_lease(sb)
    sb.daemon.stop()  # flush and close the capture
    r = subprocess.run(["tshark", "-r", pcap, "-Y", "dhcp", "-T", "fields",
                        "-e", "dhcp.option.dhcp", "-e", "ip.src", "-e", "ip.dst"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines() if line.strip()]
    assert [row[0] for row in rows] == ["1", "2", "3", "5"]  # DISCOVER OFFER REQUEST ACK
    assert rows[1][1:] == [sb.gw4, sb.host_addr4]


# -- through a real QEMU ---------------------------------------------------------------

def test_qemu_dhcp_and_ping(qemu_guest):
    sb = qemu_guest
    env = udhcpc_lease(sb)
    assert_v4_lease(sb, env)
    configure_v4(sb, env)
    ping(sb, sb.gw4)
    addr = slaac_address(sb)
    assert addr.startswith("2001:db8:")
    ping(sb, sb.gw6, v6=True)
    if os.path.exists(DHCLIENT):
        assert dhclient(sb, "-6", name="dhclient6")["new_ip6_address"] == sb.host_addr6


GARBAGE_SENDER = r'''
import sys
from scapy.all import Ether, IP, IPv6, UDP, ICMPv6ND_RS, Raw, sendp, get_if_hwaddr
me = get_if_hwaddr("eth0")
eth = Ether(src=me, dst="ff:ff:ff:ff:ff:ff")
frames = [
    eth / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / Raw(b"\x01" * 50),
    eth / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) /
        Raw(b"\x01\x01\x06\x00" + bytes(232) + b"\x63\x82\x53\x63\x35\x09\x01"),
    eth / IPv6(src="fe80::1:2", dst="ff02::1:2") / UDP(sport=546, dport=547) /
        Raw(b"\x01\x00\x00\x01\x00\x01\x00\x50"),
    eth / IPv6(src="fe80::1:2", dst="ff02::2", hlim=64) / ICMPv6ND_RS(),
    Ether(src=me, dst="ff:ff:ff:ff:ff:ff", type=0x0806) / Raw(b"\x00\x01\x08\x00"),
]
sendp(frames, iface="eth0", verbose=False)
'''


@PASTA_DNS
def test_malformed_frames_counted_daemon_keeps_serving(served_guest):
    """Malformed DHCP/DHCPv6/NDP/ARP frames from a raw socket in the guest are
    dropped under their reason; the daemon still serves a lease afterwards."""
    sb = served_guest
    r = sb.guest(sys.executable, "-c", GARBAGE_SENDER, check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: len({k for k in sb.daemon.drops()
                          if k in ("dhcp-short", "dhcp-truncated-option",
                                   "dhcpv6-truncated-option", "ndp-bad-hop-limit",
                                   "truncated-arp")}) == 5,
             10, "the five drop counters")
    assert sb.daemon.alive()
    assert_v4_lease(sb, udhcpc_lease(sb))
