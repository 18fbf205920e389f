"""A served guest namespace for the end-to-end TCP/UDP tests.

Built on ``passtcore.sandbox.Sandbox``: the daemon runs in the private host
namespace (documentation addresses, loopback resolvers) serving a tap in the
guest namespace; the guest is configured statically with the addresses the
daemon hands out (the pod's address, the gateway, our link-local as IPv6
router). Peers are ``peers.py`` run with this interpreter in either namespace.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from passtcore.sandbox import Sandbox

PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers.py")
IMPAIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "impair.py")


class World:
    def __init__(self, *daemon_args: str, mtu: int = 65520, impair: tuple | None = None) -> None:
        """``impair=(loss%, reorder%, dup%, delay_ms[, "--both"])``: the guest NIC is
        ``impair.py`` on the daemon's stream socket instead of the daemon's tap."""
        self.sb = Sandbox("tc")
        self.sb.__enter__()
        try:
            if impair is None:
                self.daemon = self.sb.start_daemon(*daemon_args)
            else:
                self.daemon = self.sb.start_daemon(*daemon_args, mode="socket")
                shim = self.sb.popen_guest(sys.executable, IMPAIR, self.daemon.socket_path,
                                           "eth0", *map(str, impair), stdout=subprocess.PIPE,
                                           text=True)
                if shim.stdout is None or shim.stdout.readline().strip() != "READY":
                    raise RuntimeError("impair.py did not start")
                self.sb.guest("ip", "link", "set", "eth0", "up")
            out = self.sb.host("ip", "-6", "addr", "show", "dev", "eth0", "scope", "link").stdout
            self.our_ll = out.split("inet6 ")[1].split("/")[0]
            self.guest_addr4 = self.sb.host_addr4
            self.guest_addr6 = self.sb.host_addr6
            # what a DHCP client does with option 26 / the RA MTU option
            self.sb.guest("ip", "link", "set", "eth0", "mtu", str(mtu))
            self.sb.guest("ip", "addr", "add", f"{self.guest_addr4}/24", "dev", "eth0")
            self.sb.guest("ip", "-6", "addr", "add", f"{self.guest_addr6}/64", "dev", "eth0", "nodad")
            self.sb.guest("ip", "route", "add", "default", "via", self.sb.gw4)
            self.sb.guest("ip", "-6", "route", "add", "default", "via", self.our_ll, "dev", "eth0")
        except BaseException:
            self.sb.close()
            raise
        self.gw4 = self.sb.gw4
        self.gw6 = self.sb.gw6

    # -- processes ----------------------------------------------------------
    def server(self, where: str, *args: Any, timeout: float = 10) -> subprocess.Popen[str]:
        """Start ``peers.py`` in ``where`` ("host"/"guest"/"upstream"), wait for READY."""
        popen = {"host": self.sb.popen_host, "guest": self.sb.popen_guest,
                 "upstream": self.sb.popen_upstream}[where]
        p = popen(sys.executable, PEERS, *args, stdout=subprocess.PIPE, text=True)
        line = p.stdout.readline() if p.stdout else ""
        if line.strip() != "READY":
            p.kill()
            raise RuntimeError(f"peer {args} did not start: {line!r}")
        return p

    def result(self, p: subprocess.Popen[str], timeout: float = 120) -> str:
        out, _ = p.communicate(timeout=timeout)
        return out.strip()

    def run(self, where: str, *args: Any, timeout: float = 120) -> str:
        fn = self.sb.host if where == "host" else self.sb.guest
        r = fn(sys.executable, PEERS, *args, timeout=timeout, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"peer {args} failed ({r.returncode}): {r.stderr[-2000:]}")
        return r.stdout.strip()

    def close(self) -> None:
        self.sb.close()

    def log(self) -> str:
        return self.daemon.log()


def wait_port(world: World, where: str, port: int, proto: str = "tcp", timeout: float = 5) -> None:
    fn = world.sb.host if where == "host" else world.sb.guest
    flag = "-ltn" if proto == "tcp" else "-lun"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if f":{port} " in fn("ss", flag).stdout:
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")
