"""``-t auto`` / ``-u auto`` in namespace mode, with a real guest: a port the guest
binds is forwarded from the host within the 1 s rescan, and stops being
forwarded when the guest closes it; loopback-only listeners are not."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from .world import World

pytestmark = pytest.mark.netns

PORT, LO_PORT = 8571, 8572

GUEST_SERVER = f"""
import socket, sys
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", {PORT})); t.listen(4); t.settimeout(30)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", {PORT})); u.settimeout(30)
lo = socket.socket(); lo.bind(("127.0.0.1", {LO_PORT})); lo.listen(1)
print("READY", flush=True)
c, _ = t.accept(); c.sendall(c.recv(100).upper()); c.close()
data, peer = u.recvfrom(100); u.sendto(data.upper(), peer)
sys.stdin.readline()   # stay bound until told
"""

HOST_CLIENT = f"""
import socket, sys, time
c = socket.create_connection(("127.0.0.1", {PORT}), timeout=10)
c.sendall(b"auto-tcp"); print(c.recv(100).decode()); c.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(10)
u.sendto(b"auto-udp", ("127.0.0.1", {PORT})); print(u.recv(100).decode())
"""


def host_listens(w: World, port: int, flag: str = "-ltn") -> bool:
    return f":{port} " in w.sb.host("ss", flag).stdout


def wait(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def test_ports_bound_in_the_guest_are_forwarded_and_withdrawn() -> None:
    w = World("-t", "auto", "-u", "auto")
    try:
        assert not host_listens(w, PORT)
        server = w.sb.popen_guest(sys.executable, "-c", GUEST_SERVER, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "READY"
            assert wait(lambda: host_listens(w, PORT) and host_listens(w, PORT, "-lun")), \
                w.log()[-2000:]
            assert not host_listens(w, LO_PORT)  # the guest's loopback is not reachable
            r = w.sb.host(sys.executable, "-c", HOST_CLIENT, check=False, timeout=30)
            assert r.returncode == 0, r.stderr[-1500:] + w.log()[-1500:]
            assert r.stdout.split() == ["AUTO-TCP", "AUTO-UDP"]
        finally:
            server.kill()
            server.wait(10)
        assert wait(lambda: not host_listens(w, PORT) and not host_listens(w, PORT, "-lun"))
        # withdrawn: a connection to the host port is refused now
        assert w.sb.host(sys.executable, "-c",
                         f"import socket; socket.create_connection(('127.0.0.1', {PORT}), 2)",
                         check=False).returncode != 0
    finally:
        w.close()
