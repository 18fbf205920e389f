"""iproute2 (``ip -json`` / ``ip -batch``) and pyroute2 give the daemon the same
netlink facts and the same tap configuration (passtcore/run/process/iproute.py).

Each test builds its own namespaces with documentation addresses: several
links, addresses of every scope, default routes with and without a gateway.
"""
from __future__ import annotations

import json
import os
import subprocess
import uuid
from types import SimpleNamespace

import pytest

from netns_support import require_netns
from passtcore import netns
from passtcore.run.process import config as conf
from passtcore.run.process import iproute


def sh(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def ns():
    require_netns()
    if iproute.ip_binary() is None:
        pytest.skip("no ip (iproute2)")
    names = []

    def make() -> str:
        name = f"pcip-{uuid.uuid4().hex[:8]}"
        sh("netns", "add", name)
        names.append(name)
        return name
    yield make
    for name in names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def build_host(name: str) -> None:
    n = ["-n", name]
    sh(*n, "link", "add", "up0", "type", "veth", "peer", "name", "up0p")
    sh(*n, "link", "add", "br9", "type", "bridge")
    sh(*n, "link", "set", "up0", "address", "02:00:5e:00:53:07", "mtu", "1400")
    for dev in ("up0", "up0p", "br9", "lo"):
        sh(*n, "link", "set", dev, "up")
    sh(*n, "addr", "add", "192.0.2.7/24", "dev", "up0")
    sh(*n, "addr", "add", "192.0.2.9/24", "dev", "up0")
    sh(*n, "addr", "add", "198.51.100.3/25", "dev", "br9")
    sh(*n, "addr", "add", "2001:db8::7/64", "dev", "up0", "nodad")
    sh(*n, "addr", "add", "fe80::7/64", "dev", "up0", "nodad")
    sh(*n, "addr", "add", "fd00::7/64", "dev", "br9", "nodad")
    sh(*n, "route", "add", "default", "via", "192.0.2.1", "dev", "up0")
    sh(*n, "-6", "route", "add", "default", "via", "fe80::1", "dev", "up0")


@pytest.mark.netns
@pytest.mark.parametrize("ifname", [None, "up0", "br9"])
def test_host_query_matches_pyroute2(ns, ifname: str | None) -> None:
    name = ns()
    build_host(name)
    path = f"/run/netns/{name}"
    ip = iproute.ip_binary()
    got = netns.call_in(path, lambda: iproute.query_host(ip, ifname, ifname, False, False))
    want = netns.call_in(path, lambda: conf._query_host(ifname, ifname, False, False))
    assert got == want
    if ifname in (None, "up0"):
        h4, h6 = got
        assert h4["addr"] == bytes([192, 0, 2, 7]) and h4["prefix"] == 24
        assert h4["gw"] == bytes([192, 0, 2, 1]) and h4["mtu"] == 1400
        assert h4["mac"] == bytes.fromhex("02005e005307")
        assert h6["ll"][:2] == b"\xfe\x80" and h6["addr"][:4] == b"\x20\x01\x0d\xb8"


@pytest.mark.netns
def test_unknown_interface_is_the_same_error(ns) -> None:
    name = ns()
    path = f"/run/netns/{name}"
    ip = iproute.ip_binary()
    with pytest.raises(conf.ConfError, match="Interface nope0 not found"):
        netns.call_in(path, lambda: iproute.query_host(ip, "nope0", None, True, False))


@pytest.mark.netns
def test_no_default_route_gives_no_template(ns) -> None:
    name = ns()
    path = f"/run/netns/{name}"
    ip = iproute.ip_binary()
    got = netns.call_in(path, lambda: iproute.query_host(ip, None, None, False, False))
    assert got == netns.call_in(path, lambda: conf._query_host(None, None, False, False)) == ({}, {})


def _state(name: str, dev: str) -> dict:
    def j(*args: str):
        return json.loads(sh("-n", name, "-json", *args) or "[]")
    link = j("link", "show", "dev", dev)[0]
    addrs = sorted((a["local"], a["prefixlen"]) for a in j("addr", "show", "dev", dev)[0]["addr_info"]
                   if a.get("scope") == "global")
    routes = sorted((r.get("dst"), r.get("gateway")) for r in j("route", "show", "dev", dev))
    routes6 = sorted((r.get("dst"), r.get("gateway"))
                     for r in json.loads(sh("-n", name, "-json", "-6", "route", "show", "dev", dev)
                                         or "[]") if r.get("dst") == "default")
    lo = j("link", "show", "dev", "lo")[0]
    return {"mtu": link["mtu"], "mac": link["address"], "up": "UP" in link["flags"],
            "lo_up": "UP" in lo["flags"], "addrs": addrs, "routes": routes, "routes6": routes6}


@pytest.mark.netns
@pytest.mark.parametrize("config_net", [True, False])
def test_tap_configuration_matches_pyroute2(ns, config_net: bool, monkeypatch) -> None:
    import ipaddress

    from passtcore.run.process import daemon

    cfg = SimpleNamespace(mtu=1280, v4=True, v6=True,
                          addr4=ipaddress.ip_address("192.0.2.2").packed, prefix4=24,
                          gw4=ipaddress.ip_address("192.0.2.1").packed,
                          addr6=ipaddress.ip_address("2001:db8::2").packed, prefix6=64,
                          gw6_ll=ipaddress.ip_address("fe80::1").packed)
    states = []
    for how in ("ip", "pyroute2"):
        name = ns()
        # a veth end stands in for the tap: netlink treats them alike
        sh("-n", name, "link", "add", "tap7", "type", "veth", "peer", "name", "tap7p")
        sh("-n", name, "link", "set", "tap7p", "up")
        if how == "pyroute2":
            monkeypatch.setenv("PASSTCORE_NETLINK", "pyroute2")
        else:
            monkeypatch.delenv("PASSTCORE_NETLINK", raising=False)
        pid = os.fork()
        if pid == 0:  # _configure_tap enters the namespace: a child of our own
            code = 1
            try:
                daemon._configure_tap(f"/run/netns/{name}", "tap7", bytes.fromhex("02005e005309"),
                                      config_net, cfg)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, how
        states.append(_state(name, "tap7"))
    assert states[0] == states[1]
    assert states[0]["mac"] == "02:00:5e:00:53:09" and states[0]["up"] and states[0]["lo_up"]
    if config_net:
        assert states[0]["mtu"] == 1280
        assert ("192.0.2.2", 24) in states[0]["addrs"] and ("2001:db8::2", 64) in states[0]["addrs"]
        assert states[0]["routes6"] == [("default", "fe80::1")]


def test_batch_script_is_what_pyroute2_does() -> None:
    import ipaddress

    cfg = SimpleNamespace(mtu=0, v4=True, v6=False, addr4=ipaddress.ip_address("192.0.2.2").packed,
                          prefix4=24, gw4=ipaddress.ip_address("192.0.2.1").packed)
    assert iproute.tap_script("eth0", None, True, cfg).splitlines() == [
        "link set dev lo up", "link set dev eth0 up", "addr add 192.0.2.2/24 dev eth0",
        "route add default via 192.0.2.1 dev eth0"]


def test_ip_failure_is_an_oserror_with_its_message() -> None:
    ip = iproute.ip_binary()
    if ip is None:
        pytest.skip("no ip (iproute2)")
    with pytest.raises(iproute.IprouteError, match="nosuchdev0|Cannot find device"):
        iproute.apply(ip, "link set dev nosuchdev0 up\n")
