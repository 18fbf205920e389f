"""Addressing defaults from the host (passt-reference 4), read with pyroute2 inside
a private host namespace, plus the pure rules (resolv.conf, prefix widening)."""
from __future__ import annotations

import ipaddress
import json
import sys

import pytest

from passtcore.run.process import config as conf
from passtcore.run.process import options
from passtcore.sandbox import Sandbox, daemon_binary


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def test_parse_resolv_conf() -> None:
    text = ("# comment\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\ndomain x.example\n"
            "nameserver 2001:db8::53\nnameserver 1.1.1.1\nnameserver 1.0.0.1\n"
            "nameserver 9.9.9.9\nsearch a.example\tb.example c d e f g h\nsearch ignored\n"
            "nameserver bogus\n")
    v4, v6, search = conf.parse_resolv_conf(text)
    assert v4 == [ip("192.0.2.53"), ip("1.1.1.1"), ip("1.0.0.1")]  # at most 3
    assert v6 == [ip("fe80::1"), ip("2001:db8::53")]                # scope id cut
    assert search == ["a.example", "b.example", "c", "d", "e", "f"]  # first line, max 6


@pytest.mark.parametrize("addr, gw, prefix, expected", [
    ("192.0.2.10", "192.0.2.1", 24, 24),
    ("192.0.2.10", "192.0.3.1", 24, 23),
    ("10.0.0.5", "10.255.0.1", 24, 8),
    ("192.0.2.10", "198.51.100.1", 32, 5),
])
def test_widen_prefix(addr: str, gw: str, prefix: int, expected: int) -> None:
    assert conf.widen_prefix(ip(addr), ip(gw), prefix) == expected


def build(args: list[str], h4: dict, h6: dict, resolv: str, tmp_path) -> conf.NetConfig:
    path = tmp_path / "resolv.conf"
    path.write_text(resolv)
    return conf.build(options.parse(args), str(path), host=(h4, h6))


HOST4 = {"ifname": "eth0", "mac": bytes.fromhex("021122334455"), "addr": ip("192.0.2.10"),
         "prefix": 24, "gw": ip("192.0.2.1")}
HOST6 = {"ifname": "eth0", "mac": bytes.fromhex("021122334455"), "addr": ip("2001:db8::10"),
         "prefix": 64, "gw": ip("fe80::1"), "ll": ip("fe80::211:22ff:fe33:4455")}


def test_reference_setup(tmp_path) -> None:
    c = build([], HOST4, HOST6, "nameserver 192.0.2.53\nnameserver 2001:db8::53\n"
              "search example.com corp.example.org\n", tmp_path)
    assert (c.addr4, c.prefix4, c.gw4) == (ip("192.0.2.10"), 24, ip("192.0.2.1"))
    assert c.our_mac == bytes.fromhex("021122334455") and c.mtu == 65520
    assert (c.addr6, c.gw6_ll, c.addr6_ll) == (ip("2001:db8::10"), ip("fe80::1"), HOST6["ll"])
    assert c.dns4 == [ip("192.0.2.53")] and c.dns6 == [ip("2001:db8::53")]
    assert c.search == ["example.com", "corp.example.org"]


def test_loopback_resolvers_become_the_gateway(tmp_path) -> None:
    c = build([], HOST4, HOST6, "nameserver 127.0.0.53\nnameserver ::1\n", tmp_path)
    assert c.dns4 == [ip("192.0.2.1")] and c.dns6 == [ip("fe80::1")]
    assert c.dns_host4 == ip("127.0.0.53")
    c = build(["--no-map-gw"], HOST4, HOST6, "nameserver 127.0.0.53\n", tmp_path)
    assert c.dns4 == [] and not c.map_gw


def test_options_override(tmp_path) -> None:
    c = build(["-a", "198.51.100.7", "-n", "16", "-g", "198.51.100.1", "-m", "1500",
               "-M", "02:00:00:00:00:01", "-D", "203.0.113.53", "-S", "x.example", "-4"],
              HOST4, HOST6, "nameserver 192.0.2.53\n", tmp_path)
    assert (c.addr4, c.prefix4, c.gw4, c.mtu) == (ip("198.51.100.7"), 16, ip("198.51.100.1"), 1500)
    assert c.our_mac == bytes.fromhex("020000000001") and not c.v6
    assert c.dns4 == [ip("203.0.113.53")] and c.search == ["x.example"]


def test_no_usable_interface(tmp_path) -> None:
    with pytest.raises(conf.ConfError, match="External interface not usable"):
        build([], {}, {}, "", tmp_path)
    c = build([], HOST4, {}, "", tmp_path)
    assert c.v4 and not c.v6 and "No external routable interface for IPv6" in c.warnings


@pytest.mark.netns
def test_from_a_real_host_namespace(sandbox: Sandbox) -> None:
    code = ("import json,ipaddress as I;from passtcore.run.process import config as conf, options;"
            "c=conf.build(options.parse([]));f=lambda a:str(I.ip_address(a));"
            "print(json.dumps(dict(a4=f(c.addr4),p4=c.prefix4,gw4=f(c.gw4),a6=f(c.addr6),"
            "gw6=f(c.gw6),ll=f(c.addr6_ll),router=f(c.gw6_ll),mac=c.our_mac.hex(),mtu=c.mtu,"
            "dns4=[f(a) for a in c.dns4],dns6=[f(a) for a in c.dns6],search=c.search,"
            "if4=c.ifname4)))")
    out = json.loads(sandbox.host(sys.executable, "-c", code).stdout)
    assert out["a4"] == sandbox.host_addr4 and out["p4"] == 24 and out["gw4"] == sandbox.gw4
    assert out["a6"] == sandbox.host_addr6 and out["gw6"] == sandbox.gw6
    assert out["ll"].startswith("fe80::") and out["router"] == out["ll"]
    assert out["mac"] == Sandbox.host_mac.replace(":", "") and out["mtu"] == 65520
    assert out["dns4"] == sandbox.dns4 and out["dns6"] == sandbox.dns6
    assert out["search"] == Sandbox.search and out["if4"] == "eth0"


@pytest.mark.netns
def test_no_default_route_exits_1(sandbox: Sandbox) -> None:
    sandbox.host("ip", "route", "del", "default")
    sandbox.host("ip", "-6", "route", "del", "default")
    sock = sandbox.path("x.socket")
    r = sandbox.host(daemon_binary(), "-s", sock, check=False)
    assert r.returncode == 1
    assert r.stderr.strip() == "passtcore-run: External interface not usable"
