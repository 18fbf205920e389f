"""``passtcore-run --demo``: show the daemon serving a real guest network stack.

Builds a ``Sandbox`` (private upstream/host/guest namespaces with
documentation addresses; nothing can leave the machine), starts
``passtcore-run`` in namespace mode serving the guest, then, in the guest:
gets a DHCP lease with busybox udhcpc (address, router, DNS, search, MTU
printed from what the client received), pings the gateway, waits for the
SLAAC address from the daemon's router advertisement and pings the IPv6
gateway, and fetches a page with curl (through the TCP engine) from an HTTP
server listening on the host namespace's loopback, through the gateway mapping
(``http://<gateway>:PORT/`` in the guest reaches ``127.0.0.1:PORT`` on the
host). Progress lines go to stdout; exit 0 on success, 1 with a message on the
first failure; everything is cleaned up in all cases.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from typing import Any

LEASE_SCRIPT = r"""#!/bin/sh
# udhcpc hook for the demo: configure like busybox's default script, print the lease.
case "$1" in
  deconfig) ip link set "$interface" up; ip -4 addr flush dev "$interface" ;;
  bound|renew)
    ip -4 addr add "$ip/$mask" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    [ -n "$router" ] && ip -4 route add default via "${router%% *}" dev "$interface"
    for v in ip mask router dns search mtu lease serverid; do
      eval "echo \"LEASE $v=\$$v\""
    done
    ;;
esac
exit 0
"""

HTTP_PORT = 8080


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


class DemoError(Exception):
    pass


def run_demo(verbose: bool = False) -> None:
    from passtcore.sandbox import Sandbox

    with Sandbox(prefix="pcdemo") as sb:
        say(f"namespaces: upstream {sb.upstream_ns}, host {sb.host_ns}, guest {sb.guest_ns}")
        say(f"host: eth0 {sb.host_addr4}/{sb.prefix4} {sb.host_addr6}/{sb.prefix6}, "
            f"default via {sb.gw4} / {sb.gw6}, resolv.conf: "
            f"{', '.join(sb.resolv_nameservers)}; search {' '.join(sb.search)}")
        # namespace mode hands out resolvers and search list only when asked (as pasta)
        d = sb.start_daemon("--dhcp-dns", "--dhcp-search", mode="netns")
        say(f"passtcore-run serving tap eth0 in the guest (pid {d.pid}, log {d.log_path})")

        script = sb.path("lease.sh")
        with open(script, "w") as f:
            f.write(LEASE_SCRIPT)
        os.chmod(script, 0o755)
        r = sb.guest("udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "2",
                     "-O", "search", "-O", "mtu", "-s", script, check=False, timeout=60)
        fields = dict(ln[6:].split("=", 1) for ln in r.stdout.splitlines()
                      if ln.startswith("LEASE ") and "=" in ln)
        if r.returncode != 0 or "ip" not in fields:
            raise DemoError(f"DHCP failed (udhcpc exit {r.returncode}): {r.stderr.strip()}")
        say(f"DHCP lease: address {fields.get('ip')}/{fields.get('mask')}, "
            f"router {fields.get('router')}, DNS {fields.get('dns') or '-'}, "
            f"search {fields.get('search') or '-'}, MTU {fields.get('mtu') or '-'}, "
            f"lease {fields.get('lease')} s, server {fields.get('serverid')}")

        r = sb.guest("ping", "-c", "3", "-i", "0.2", "-W", "2", sb.gw4, check=False, timeout=30)
        m = re.search(r"= [\d.]+/([\d.]+)/", r.stdout)
        if r.returncode != 0:
            raise DemoError(f"ping {sb.gw4} failed: {r.stdout.strip()} {r.stderr.strip()}")
        received = re.search(r"(\d+) received", r.stdout)
        rtt = m.group(1) if m else "?"
        say(f"ping {sb.gw4}: {received.group(1) if received else '?'}/3 replies, "
            f"avg rtt {rtt} ms")

        _ipv6(sb)
        _http(sb)
        counters = d.counters()
        say("daemon counters: " + ", ".join(f"{k}={v}" for k, v in counters.items()))
        code = d.stop()
        say(f"daemon stopped (exit {code})")


def _ipv6(sb: Any) -> None:
    """SLAAC from the daemon's RA (the guest kernel sends the RS), then ping6 the gateway."""
    deadline = time.monotonic() + 15
    addr = None
    while addr is None:
        out = sb.guest("ip", "-6", "-o", "addr", "show", "eth0", "scope", "global").stdout
        if "tentative" not in out:
            m = re.search(r"inet6 (\S+)", out)
            addr = m.group(1) if m else None
        if addr is None:
            if time.monotonic() > deadline:
                raise DemoError("no IPv6 address from the router advertisement (SLAAC)")
            time.sleep(0.1)
    route = sb.guest("ip", "-6", "route", "show", "default").stdout.split()
    router = route[2] if len(route) > 2 else "-"
    say(f"IPv6 (SLAAC from the RA): address {addr}, default router {router}")
    r = sb.guest("ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", sb.gw6, check=False,
                 timeout=30)
    if r.returncode != 0:
        raise DemoError(f"ping -6 {sb.gw6} failed: {r.stdout.strip()} {r.stderr.strip()}")
    m = re.search(r"= [\d.]+/([\d.]+)/", r.stdout)
    say(f"ping -6 {sb.gw6}: 3/3 replies, avg rtt {m.group(1) if m else '?'} ms")


def _http(sb: Any) -> None:
    root = sb.path("www")
    os.makedirs(root)
    with open(os.path.join(root, "index.html"), "w") as f:
        f.write("hello from the host's loopback\n")
    server = sb.popen_host(sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                           "--directory", root, str(HTTP_PORT))
    deadline = time.monotonic() + 15
    while True:
        probe = sb.host("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                        f"http://127.0.0.1:{HTTP_PORT}/", check=False, timeout=10)
        if probe.stdout == "200":
            break
        if server.poll() is not None or time.monotonic() > deadline:
            raise DemoError("the HTTP server on the host's loopback did not start")
        time.sleep(0.1)
    url = f"http://{sb.gw4}:{HTTP_PORT}/index.html"
    r = sb.guest("curl", "-s", "-S", "--max-time", "15", "-w", "\n%{http_code} %{time_total}",
                 url, check=False, timeout=30)
    if r.returncode != 0:
        raise DemoError(f"HTTP fetch {url} failed: {r.stderr.strip()}")
    body, _, status = r.stdout.rpartition("\n")
    say(f"HTTP GET {url} (host 127.0.0.1:{HTTP_PORT} via the gateway mapping): "
        f"status {status.split()[0]}, {len(body)} bytes in {status.split()[1]} s: "
        f"{body.strip()!r}")
    if status.split()[0] != "200":
        raise DemoError(f"HTTP status {status}")


def main(opts: Any = None) -> int:
    if os.geteuid() != 0:
        print("passtcore-run --demo: needs root (it creates network namespaces)",
              file=sys.stderr)
        return 1
    try:
        run_demo()
    except DemoError as exc:
        say(f"FAILED: {exc}")
        return 1
    except (subprocess.SubprocessError, OSError, RuntimeError, TimeoutError) as exc:
        say(f"FAILED: {type(exc).__name__}: {exc}")
        return 1
    say("success")
    return 0
