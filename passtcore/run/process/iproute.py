"""Start-up netlink through iproute2: ``ip -json`` to read, ``ip -batch`` to write.

The daemon needs netlink twice, both at start-up: to copy the host's
addressing (``query_host``) and, in namespace mode, to bring the tap up and
configure it (``configure_tap``). pyroute2 does both, but importing it costs
~250 ms of CPU, which was most of the time before a namespace guest could
send its first packet. iproute2's ``ip`` answers the same questions in JSON
(its documented, stable output format, parsed with ``json``) in a few
milliseconds, and applies a whole configuration in one ``ip -batch`` run.
When ``ip`` is missing (a minimal image) or fails, the caller falls back to
pyroute2 (``config._host_family``, ``daemon._configure_tap``). Both produce the
same results; tests/daemon/test_iproute.py compares them.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
from typing import Any

TIMEOUT = 10.0


class IprouteError(OSError):
    """``ip`` failed: its first line of error output."""


def ip_binary() -> str | None:
    """The ``ip`` executable, unless ``PASSTCORE_NETLINK=pyroute2`` asks for pyroute2."""
    if os.environ.get("PASSTCORE_NETLINK", "") == "pyroute2":
        return None
    return shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip")
                                       if os.access(p, os.X_OK)), None)


def _docs(text: str) -> list[Any]:
    """The JSON documents ``ip -json -batch`` printed one after the other."""
    dec = json.JSONDecoder()
    out: list[Any] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        doc, i = dec.raw_decode(text, i)
        out.append(doc)
    return out


def _run(ip: str, args: list[str], stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen([ip, *args], stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, close_fds=True)


def _finish(proc: subprocess.Popen[str], script: str | None = None) -> str:
    try:
        out, err = proc.communicate(script, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise IprouteError("ip did not answer") from None
    if proc.returncode:
        raise IprouteError((err.strip().splitlines() or [f"ip exited {proc.returncode}"])[0])
    return out


def query_host(ip: str, if4: str | None, if6: str | None, v4_only: bool, v6_only: bool
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """What ``config._host_family`` finds, per family: template interface, gateway,
    address and prefix (and the IPv6 link-local address)."""
    script = "addr show\nroute show table main\n"
    p4 = _run(ip, ["-json", "-batch", "-"], stdin=True)   # both run at once
    p6 = _run(ip, ["-json", "-6", "route", "show", "table", "main"])
    docs = _docs(_finish(p4, script))
    routes6 = json.loads(_finish(p6) or "[]")
    links = docs[0] if docs else []
    routes4 = docs[1] if len(docs) > 1 else []
    h4 = {} if v6_only else _family(links, routes4, socket.AF_INET, if4)
    h6 = {} if v4_only else _family(links, routes6, socket.AF_INET6, if6)
    return h4, h6


def _family(links: list[dict], routes: list[dict], family: int, ifname: str | None
            ) -> dict[str, Any]:
    from passtcore.run.process.config import ConfError

    by_name = {link["ifname"]: link for link in links}
    out: dict[str, Any] = {}
    chosen = None
    if ifname:
        chosen = by_name.get(ifname)
        if chosen is None:
            raise ConfError(f"Interface {ifname} not found")
    for route in routes:
        if route.get("dst") != "default" or "dev" not in route:
            continue
        if chosen is not None and route["dev"] != chosen["ifname"]:
            continue
        chosen = by_name.get(route["dev"], chosen)
        if route.get("gateway"):
            out["gw"] = ipaddress.ip_address(route["gateway"]).packed
        break
    if chosen is None:
        return out
    out["ifindex"] = chosen["ifindex"]
    out["ifname"] = chosen["ifname"]
    mac = chosen.get("address")
    if mac and chosen.get("link_type", "ether") != "none":
        out["mac"] = bytes(int(x, 16) for x in mac.split(":"))
    out["mtu"] = chosen.get("mtu")
    want = "inet" if family == socket.AF_INET else "inet6"
    for a in chosen.get("addr_info", ()):
        if a.get("family") != want:
            continue
        addr = ipaddress.ip_address(a.get("address", a["local"]))  # the peer on point-to-point
        if family == socket.AF_INET6 and addr.is_link_local:
            out.setdefault("ll", addr.packed)
        elif family == socket.AF_INET6 and a.get("scope") != "global":
            continue
        elif "addr" not in out:
            out["addr"] = addr.packed
            out["prefix"] = a["prefixlen"]
    return out


def tap_script(ifname: str, mac: bytes | None, config_net: bool, cfg: Any) -> str:
    """The ``ip -batch`` lines that ``daemon._configure_tap`` applies with pyroute2."""
    lines = []
    if mac:
        lines.append(f"link set dev {ifname} address " + ":".join(f"{b:02x}" for b in mac))
    lines.append("link set dev lo up")
    if config_net and cfg.mtu:
        lines.append(f"link set dev {ifname} mtu {cfg.mtu}")
    lines.append(f"link set dev {ifname} up")
    if config_net and cfg.v4:
        lines.append(f"addr add {ipaddress.ip_address(cfg.addr4)}/{cfg.prefix4} dev {ifname}")
        lines.append(f"route add default via {ipaddress.ip_address(cfg.gw4)} dev {ifname}")
    if config_net and cfg.v6:
        lines.append(f"addr add {ipaddress.ip_address(cfg.addr6)}/{cfg.prefix6} dev {ifname} "
                     "nodad")
        lines.append(f"route add ::/0 via {ipaddress.ip_address(cfg.gw6_ll)} dev {ifname}")
    return "\n".join(lines) + "\n"


def apply(ip: str, script: str) -> None:
    """Run an ``ip -batch`` script in the current network namespace."""
    _finish(_run(ip, ["-batch", "-"], stdin=True), script)
