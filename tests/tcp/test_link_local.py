"""IPv6 link-local destinations other than the mapped gateway, from a real guest.

A host socket needs the scope id of the interface to reach a link-local
address; the engines take it from the template interface (``NetConfig.ifindex6``).
They used to read attributes NetConfig did not have, connected with scope 0 and
got EINVAL: the guest saw a refused connection and its datagrams vanished.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from .world import World

pytestmark = pytest.mark.netns

PORT = 8470

# In the upstream namespace (the host's neighbour on its link): TCP and UDP echo on
# [::]:PORT, READY once bound; bounded by timeouts.
ECHO = f"""
import socket, threading
t = socket.socket(socket.AF_INET6); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("::", {PORT})); t.listen(4); t.settimeout(20)
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.bind(("::", {PORT})); u.settimeout(20)
def udp():
    data, peer = u.recvfrom(100); u.sendto(data.upper(), peer)
th = threading.Thread(target=udp, daemon=True); th.start()
print("READY", flush=True)
c, _ = t.accept(); c.settimeout(20); c.sendall(c.recv(100).upper()); c.close()
th.join(20)
"""

# In the guest: the same exchange with the upstream's link-local address on eth0.
CLIENT = """
import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
scope = socket.if_nametoindex("eth0")
c = socket.create_connection((f"{addr}%eth0", port), timeout=10)
c.sendall(b"tcp-over-link-local"); print(c.recv(100).decode()); c.close()
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.settimeout(10)
u.sendto(b"udp-over-link-local", (addr, port, 0, scope)); print(u.recv(100).decode())
"""


def test_tcp_and_udp_to_a_link_local_neighbour() -> None:
    w = World()
    try:
        out = w.sb.upstream("ip", "-6", "-o", "addr", "show", "scope", "link").stdout
        ll = next(line.split()[3].split("/")[0] for line in out.splitlines()
                  if " lo " not in line)
        assert ll.startswith("fe80:") and ll != w.our_ll
        server = w.sb.popen_upstream(sys.executable, "-c", ECHO, stdout=subprocess.PIPE,
                                     text=True)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "READY"
            r = w.sb.guest(sys.executable, "-c", CLIENT, ll, str(PORT), check=False, timeout=40)
            assert r.returncode == 0, r.stderr[-1500:] + w.log()[-1500:]
            assert r.stdout.split() == ["TCP-OVER-LINK-LOCAL", "UDP-OVER-LINK-LOCAL"]
        finally:
            server.kill()
            server.wait(10)
    finally:
        w.close()
