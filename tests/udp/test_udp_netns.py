"""End-to-end UDP through passtcore-run: real guest and host kernels in namespaces."""
from __future__ import annotations

import os

import pytest

from tcp.world import World

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

ARGS = ("-u", "5353:15353", "--dns-forward", "198.51.100.53", "--dns-forward", "2001:db8:53::53")


@pytest.fixture(scope="module")
def world():
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    w = World(*ARGS)
    yield w
    w.close()


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_udp_echo_through_gateway(world, v6):
    srv = world.server("host", "udp-echo", "::1" if v6 else "127.0.0.1", "6001")
    try:
        gw = world.gw6 if v6 else world.gw4
        out = world.run("guest", "udp-client", gw, "6001", "hello-udp")
        # the reply comes back from the address the guest sent to
        assert out == f"hello-udp {gw} 6001"
    finally:
        srv.kill()
        srv.wait()


def test_udp_echo_to_host_own_address(world):
    # a server on the host's own address, reached through an extra host address
    world.sb.host("ip", "addr", "add", "198.51.100.7/32", "dev", "lo")
    srv = world.server("host", "udp-echo", "198.51.100.7", "6002")
    try:
        out = world.run("guest", "udp-client", "198.51.100.7", "6002", "direct")
        assert out == "direct 198.51.100.7 6002"
    finally:
        srv.kill()
        srv.wait()


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_udp_inbound_forwarded_echo(world, v6):
    srv = world.server("guest", "udp-echo", "::" if v6 else "0.0.0.0", "15353")
    try:
        out = world.run("host", "udp-client", "::1" if v6 else "127.0.0.1", "5353", "inbound")
        assert out == f"inbound {'::1' if v6 else '127.0.0.1'} 5353"
    finally:
        srv.kill()
        srv.wait()


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_dns_forward_to_loopback_resolver(world, v6):
    # the sandbox's resolv.conf lists 127.0.0.1 and ::1: the daemon's dns_host4/6
    srv = world.server("host", "dns-server", "::1" if v6 else "127.0.0.1", "53")
    try:
        fwd_addr = "2001:db8:53::53" if v6 else "198.51.100.53"
        out = world.run("guest", "dns-query", fwd_addr, "www.example.com")
        assert out == f"4242 203.0.113.7 {fwd_addr} 53"
    finally:
        srv.kill()
        srv.wait()
