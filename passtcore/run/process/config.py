"""Addressing defaults taken from the host, the way passt does (passt-reference 4).

Per family, the template interface is ``-i``, else ``--outbound-ifN``, else the
output interface of the first default route of the main table. From it come
our MAC, the guest's address and prefix, the gateway and (IPv6) our
link-local address. The IPv4 prefix is widened until the gateway is on-link.
DNS servers and the search list come from resolv.conf, read once; loopback
resolvers are replaced by the gateway address (the gateway mapping makes them
reachable), or dropped with ``--no-map-gw``. Netlink goes through pyroute2,
in a forked helper: the start-up path must stay light and the daemon small.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

from passtcore.run.flows import DEFAULT_MAX_FLOWS  # noqa: F401 (the --max-flows default)

DEFAULT_MTU = 65520  # ROUND_DOWN(65535 - 14, 4)
MAX_DNS = 3
MAX_SEARCH = 6


class ConfError(Exception):
    """Fatal configuration problem: message, exit 1 (before forking)."""


@dataclass
class NetConfig:
    our_mac: bytes = b"\0" * 6
    addr4: bytes | None = None
    prefix4: int = 0
    gw4: bytes | None = None
    addr6: bytes | None = None
    prefix6: int = 64
    gw6: bytes | None = None
    addr6_ll: bytes | None = None      # our link-local (the template interface's)
    gw6_ll: bytes | None = None        # the router address the guest sees (link-local)
    mtu: int = DEFAULT_MTU             # 0: not advertised
    dns4: list[bytes] = field(default_factory=list)
    dns6: list[bytes] = field(default_factory=list)
    dns_host4: bytes | None = None     # first resolver as read (may be loopback)
    dns_host6: bytes | None = None
    search: list[str] = field(default_factory=list)
    map_gw: bool = True
    max_flows: int = DEFAULT_MAX_FLOWS  # TCP, UDP and ICMP flows in all
    dns_forward4: bytes | None = None
    dns_forward6: bytes | None = None
    ifname4: str | None = None
    ifname6: str | None = None
    ifindex4: int = 0                  # of the template interface, in the host namespace
    ifindex6: int = 0                  # ... the scope of IPv6 link-local destinations
    outbound4: bytes | None = None
    outbound6: bytes | None = None
    outbound_if4: str | None = None
    outbound_if6: str | None = None
    # Service switches (passt-reference 3.1).
    no_tcp: bool = False
    no_udp: bool = False
    no_icmp: bool = False
    no_dhcp: bool = False
    no_ndp: bool = False
    no_dhcpv6: bool = False
    no_ra: bool = False
    no_dhcp_dns: bool = False
    no_dhcp_search: bool = False
    tcp_ports: list[Any] = field(default_factory=list)   # portspec.PortSpec
    udp_ports: list[Any] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)   # to log at start-up

    @property
    def v4(self) -> bool:
        return self.addr4 is not None

    @property
    def v6(self) -> bool:
        return self.addr6 is not None

    def describe(self) -> list[str]:
        """The start-up dump, as passt's info lines."""
        ntoa = _ntoa
        lines = [f"Template interface: {self.ifname4 or '-'} (IPv4), {self.ifname6 or '-'} (IPv6)",
                 "MAC:", f"    host: {':'.join(f'{b:02x}' for b in self.our_mac)}"]
        if self.v4:
            lines += ["DHCP:", f"    assign: {ntoa(self.addr4)}",
                      f"    mask: {ipaddress.IPv4Network((0, self.prefix4)).netmask}",
                      f"    router: {ntoa(self.gw4)}"]
            if self.dns4:
                lines += ["DNS:"] + [f"    {ntoa(a)}" for a in self.dns4]
        if self.v6:
            lines += ["NDP/DHCPv6:", f"    assign: {ntoa(self.addr6)}",
                      f"    router: {ntoa(self.gw6_ll)}", f"    our link-local: {ntoa(self.addr6_ll)}"]
            if self.dns6:
                lines += ["DNS:"] + [f"    {ntoa(a)}" for a in self.dns6]
        if self.search:
            lines += ["DNS search list:"] + [f"    {s}" for s in self.search]
        return lines


def _ntoa(raw: bytes | None) -> str:
    if raw is None:
        return "-"
    return str(ipaddress.ip_address(raw))


def _is_loopback(raw: bytes) -> bool:
    return ipaddress.ip_address(raw).is_loopback


def parse_resolv_conf(text: str) -> tuple[list[bytes], list[bytes], list[str]]:
    """(IPv4 servers, IPv6 servers, search list) as passt reads them (4.5)."""
    v4: list[bytes] = []
    v6: list[bytes] = []
    search: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("nameserver "):
            token = line.rstrip().rsplit(None, 1)[-1].split("%", 1)[0]
            try:
                addr = ipaddress.ip_address(token)
            except ValueError:
                continue
            target = v4 if addr.version == 4 else v6
            if len(target) < MAX_DNS:
                target.append(addr.packed)
        elif line.startswith("search ") and search is None:
            search = line[len("search "):].replace("\t", " ").split()[:MAX_SEARCH]
    return v4, v6, search or []


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def _host_family(ipr: Any, family: int, ifname: str | None) -> dict[str, Any]:
    """Template interface, gateway, address, prefix for one family from netlink."""
    out: dict[str, Any] = {}
    ifindex = None
    if ifname:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise ConfError(f"Interface {ifname} not found")
        ifindex = found[0]
    for route in ipr.get_routes(family=family, table=254):
        if route["dst_len"] != 0 or _attr(route, "RTA_OIF") is None:
            continue
        oif = _attr(route, "RTA_OIF")
        if ifindex is not None and oif != ifindex:
            continue
        ifindex = oif
        gw = _attr(route, "RTA_GATEWAY")
        if gw:
            out["gw"] = ipaddress.ip_address(gw).packed
        break
    if ifindex is None:
        return out
    link = ipr.get_links(ifindex)[0]
    out["ifindex"] = ifindex
    out["ifname"] = _attr(link, "IFLA_IFNAME")
    mac = _attr(link, "IFLA_ADDRESS")
    if mac:
        out["mac"] = bytes(int(x, 16) for x in mac.split(":"))
    out["mtu"] = _attr(link, "IFLA_MTU")
    for a in ipr.get_addr(family=family, index=ifindex):
        addr = ipaddress.ip_address(_attr(a, "IFA_ADDRESS"))
        if family == socket.AF_INET6 and addr.is_link_local:
            out.setdefault("ll", addr.packed)
        elif family == socket.AF_INET6 and a["scope"] != 0:
            continue
        else:
            if "addr" not in out:
                out["addr"] = addr.packed
                out["prefix"] = a["prefixlen"]
    return out


def host_defaults(opts: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Netlink facts of the current namespace: (IPv4 dict, IPv6 dict).

    Read with iproute2's ``ip -json`` (``iproute.py``); without it, with pyroute2 in a
    forked helper (``helper.run_in_child``), so that pyroute2 is never imported by
    the long-lived daemon."""
    from passtcore.run.process import iproute
    from passtcore.run.process.helper import run_in_child

    if4 = opts.interface or opts.outbound_if4
    if6 = opts.interface or opts.outbound_if6
    ip = iproute.ip_binary()
    if ip is not None:
        try:  # iproute2's JSON: milliseconds, where importing pyroute2 takes ~250 ms
            import time

            for _ in range(15):
                h4, h6 = iproute.query_host(ip, if4, if6, opts.ipv4_only, opts.ipv6_only)
                # An interface that has just come up gets its link-local address a
                # moment later (addrconf, on carrier): wait for it, 300 ms at most.
                if not h6.get("addr") or h6.get("ll"):
                    break
                time.sleep(0.02)
            return h4, h6
        except (iproute.IprouteError, OSError, ValueError, KeyError) as exc:
            import logging

            logging.getLogger("passtcore.run").debug("ip -json failed (%s): pyroute2", exc)
    return run_in_child(_query_host, if4, if6, opts.ipv4_only, opts.ipv6_only)


def _query_host(if4: str | None, if6: str | None, v4_only: bool, v6_only: bool
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        h4 = {} if v6_only else _host_family(ipr, socket.AF_INET, if4)
        h6 = {} if v4_only else _host_family(ipr, socket.AF_INET6, if6)
    return h4, h6


def _classful(addr: bytes) -> int:
    first = addr[0]
    return 8 if first < 128 else 16 if first < 192 else 24 if first < 224 else 32


def widen_prefix(addr: bytes, gw: bytes | None, prefix: int) -> int:
    """Widen until the gateway is on-link (4.2); unchanged if it never is."""
    if gw is None:
        return prefix
    a, g = int.from_bytes(addr, "big"), int.from_bytes(gw, "big")
    for p in range(prefix, -1, -1):
        shift = 32 - p
        if (a >> shift if shift < 32 else 0) == (g >> shift if shift < 32 else 0):
            return p
    return prefix


def build(opts: Any, resolv_path: str = "/etc/resolv.conf",
          host: tuple[dict[str, Any], dict[str, Any]] | None = None) -> NetConfig:
    """Options + host facts -> NetConfig, or raise ConfError ("External interface not usable")."""
    h4, h6 = host if host is not None else host_defaults(opts)
    c = NetConfig()
    c.map_gw = not opts.no_map_gw
    c.max_flows = getattr(opts, "max_flows", None) or DEFAULT_MAX_FLOWS
    mac = opts.mac_addr or h4.get("mac") or h6.get("mac")
    c.our_mac = mac or b"\0" * 6
    warnings: list[str] = []

    # IPv4
    if not opts.ipv6_only:
        addr4 = opts.addr4 or h4.get("addr")
        gw4 = opts.gw4 or h4.get("gw")
        if addr4 and gw4 and mac:
            c.addr4, c.gw4 = addr4, gw4
            c.ifname4 = h4.get("ifname")
            c.ifindex4 = h4.get("ifindex") or 0
            # -n, else the host address's prefix length, else classful (4.2).
            prefix = opts.prefix4
            if prefix is None:
                prefix = h4.get("prefix")
            if prefix is None:
                prefix = _classful(addr4)
            c.prefix4 = widen_prefix(addr4, gw4, prefix)
        else:
            warnings.append("No external routable interface for IPv4")
    # IPv6
    if not opts.ipv4_only:
        addr6 = opts.addr6 or h6.get("addr")
        gw6 = opts.gw6 or h6.get("gw")
        ll = h6.get("ll")
        if addr6 and gw6 and mac and ll:
            c.addr6, c.gw6, c.addr6_ll = addr6, gw6, ll
            c.ifname6 = h6.get("ifname")
            c.ifindex6 = h6.get("ifindex") or 0
            gw_is_ll = gw6[0] == 0xFE and (gw6[1] & 0xC0) == 0x80
            c.gw6_ll = gw6 if gw_is_ll else ll
        else:
            warnings.append("No external routable interface for IPv6")
    if not c.v4 and not c.v6:
        raise ConfError("External interface not usable")
    if opts.outbound_if4 and not c.v4:
        raise ConfError(f"IPv4 disabled but --outbound-if4 {opts.outbound_if4} given")
    if opts.outbound_if6 and not c.v6:
        raise ConfError(f"IPv6 disabled but --outbound-if6 {opts.outbound_if6} given")

    c.mtu = DEFAULT_MTU if opts.mtu is None else opts.mtu

    # DNS and search list (4.5).
    try:
        with open(resolv_path) as f:
            text = f.read()
    except OSError:
        text = ""
    r4, r6, search = parse_resolv_conf(text)
    if opts.dns is not None:
        r4 = [a for a in opts.dns if len(a) == 4][:MAX_DNS]
        r6 = [a for a in opts.dns if len(a) == 16][:MAX_DNS]
    c.dns_host4 = r4[0] if r4 else None
    c.dns_host6 = r6[0] if r6 else None
    if opts.dns_host:
        if len(opts.dns_host) == 4:
            c.dns_host4 = opts.dns_host
        else:
            c.dns_host6 = opts.dns_host

    def advertised(servers: list[bytes], gw: bytes | None) -> list[bytes]:
        out: list[bytes] = []
        for a in servers:
            if _is_loopback(a):
                if c.map_gw and gw is not None:
                    a = gw
                else:
                    continue
            if a not in out:
                out.append(a)
        return out

    c.dns4 = advertised(r4, c.gw4) if c.v4 else []
    c.dns6 = advertised(r6, c.gw6) if c.v6 else []
    if not r4 and not r6:
        warnings.append("Couldn't get any nameserver address")
    c.search = search if opts.search is None else opts.search[:MAX_SEARCH]
    c.dns_forward4, c.dns_forward6 = opts.dns_forward4, opts.dns_forward6
    c.outbound4, c.outbound6 = opts.outbound4, opts.outbound6
    c.outbound_if4, c.outbound_if6 = opts.outbound_if4, opts.outbound_if6
    if (opts.outbound_if4 or opts.outbound_if6) and not opts.no_udp:
        # a UDP port's one socket also carries the gateway -> loopback mapping, which a
        # device binding would break; TCP and ICMP bind per connection and apply it
        warnings.append("--outbound-if4/6 applies to TCP and ICMP; UDP sockets are not "
                        "bound to the device")
    for name in ("no_tcp", "no_udp", "no_icmp", "no_dhcp", "no_ndp", "no_dhcpv6", "no_ra",
                 "no_dhcp_dns", "no_dhcp_search"):
        setattr(c, name, getattr(opts, name))
    c.tcp_ports, c.udp_ports = list(opts.tcp_ports), list(opts.udp_ports)
    c.warnings = warnings
    return c
