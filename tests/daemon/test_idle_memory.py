"""The daemon stays lean: numpy is never loaded by passtcore-run.

The kernels import numpy only inside their array APIs (batch, flow-table batch
lookups, expiry), which the daemon does not call; numpy alone would add ~15 MB
to its resident size.  The check reads the real daemon's ``/proc/PID/maps``
(shared objects of numpy are mapped iff numpy was imported) after its TCP and
UDP engines have created flows for guest traffic.  The numbers (RSS before and
after) live in ``benches/startup.py``, not here.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import passtcore
from passtcore.sandbox import Sandbox

from .helpers import GUEST_MAC, StreamClient, arp_request

pytestmark = pytest.mark.netns

GW = bytes([192, 0, 2, 1])       # the gateway (Sandbox.gw4): traffic to it goes to the host
PEER_ADDR = "198.51.100.7"       # added to the upstream namespace, reached via the default route
GUEST = bytes([192, 0, 2, 2])    # what the daemon hands the guest (the host's address)
TCP_PORT, UDP_PORT = 8093, 8094
SYN, ACK = 0x02, 0x10

# In the upstream namespace: a TCP listener and a UDP receiver, "ready" once bound,
# then the datagram's payload, then "accepted" for the connection; bounded by timeouts.
PEER = f"""
import socket, sys
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("{PEER_ADDR}", {TCP_PORT})); t.listen(4)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("{PEER_ADDR}", {UDP_PORT}))
u.settimeout(15)
print("ready", flush=True)
print(u.recv(100).decode(), flush=True)
t.settimeout(15)
conn, _ = t.accept()
print("accepted", flush=True)
conn.close()
"""


def mapped_files(pid: int) -> set[str]:
    """Paths of the files mapped into process ``pid``."""
    out = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].startswith("/"):
            out.add(fields[5])
    return out


def numpy_files(files: set[str]) -> set[str]:
    return {f for f in files if "/numpy/" in f or "/numpy.libs/" in f}


def test_the_check_sees_numpy_when_it_is_loaded() -> None:
    """The detector itself: a process that imported numpy shows its shared objects."""
    code = "import sys, numpy; print('up', flush=True); sys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        assert numpy_files(mapped_files(proc.pid))
    finally:
        proc.kill()
        proc.wait(10)


def _frame(kind: str, our_mac: bytes, payload: bytes = b"") -> bytes:
    h = passtcore.headers
    proto = 6 if kind == "tcp" else 17
    peer = socket.inet_aton(PEER_ADDR)
    opts = bytes([2, 4, 0x05, 0xb4]) if kind == "tcp" else b""  # MSS 1460
    hl = h.header_len(4, proto, len(opts))
    buf = bytearray(hl + len(payload))
    buf[hl:] = payload
    if kind == "tcp":
        n = h.build_tcp(buf, 0, our_mac, GUEST_MAC, GUEST, peer, 40001, TCP_PORT, 1000, 0, SYN,
                        65535, 0, options=opts)
    else:
        n = h.build_udp(buf, 0, our_mac, GUEST_MAC, GUEST, peer, 40002, UDP_PORT, len(payload))
    return bytes(buf[:n])


@pytest.mark.parametrize("pure", [False, True], ids=["cython", "pure"])
def test_daemon_never_imports_numpy(sandbox: Sandbox, pure: bool) -> None:
    env = dict(os.environ, PASSTCORE_PURE="1" if pure else "0")
    sandbox.upstream("ip", "addr", "add", f"{PEER_ADDR}/32", "dev", "lo")
    peer = sandbox.popen_upstream(sys.executable, "-c", PEER, stdout=subprocess.PIPE, text=True)
    assert peer.stdout is not None and peer.stdout.readline() == "ready\n"
    d = sandbox.start_daemon("-t", "8080", "-u", "8081", mode="socket", env=env)
    assert d.socket_path
    c = StreamClient(d.socket_path)
    try:
        # Served: ARP, then one TCP connection and one UDP flow through the engines.
        c.send(arp_request(GW, sender=GUEST))
        (reply,) = c.recv_frames(1)
        assert reply[28:32] == GW
        our_mac = reply[6:12]
        c.send(_frame("udp", our_mac, b"hello-udp"))
        assert peer.stdout.readline() == "hello-udp\n"
        c.send(_frame("tcp", our_mac))
        (synack,) = c.recv_frames(1)
        info = passtcore.headers.parse_frame(synack)
        assert (info.l4_proto, info.sport, info.dport) == (6, TCP_PORT, 40001)
        assert info.tcp_flags & (SYN | ACK) == SYN | ACK and info.tcp_ack == 1001
        assert peer.stdout.readline() == "accepted\n"

        files = mapped_files(d.pid)
        assert d.alive()
        assert not numpy_files(files), sorted(numpy_files(files))[:5]
        kernels = {Path(f).name.split(".")[0] for f in files if "/passtcore/_" in f}
        # The backend really in use: the Cython extensions, or none of them.
        assert kernels == (set() if pure else {"_csum", "_headers", "_batch", "_flowtable", "_fastpath", "_virtq"})
    finally:
        c.close()
        d.stop()


def test_kernels_are_loaded_before_privileges_drop(sandbox: Sandbox) -> None:
    """With --no-tcp --no-udp no engine needs the header kernel at start-up; the
    dispatcher loads it anyway, before --runas drops to nobody (an interpreter's
    library may not be readable then). Read from the maps before the first frame."""
    env = dict(os.environ, PASSTCORE_PURE="0")
    d = sandbox.start_daemon("--no-tcp", "--no-udp", mode="socket", env=env)
    try:
        assert d.alive()
        kernels = {Path(f).name.split(".")[0] for f in mapped_files(d.pid) if "/passtcore/_" in f}
        assert "_headers" in kernels, sorted(kernels)
        status = Path(f"/proc/{d.pid}/status").read_text()
        uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        assert uid != "0"  # it did drop privileges (root -> nobody)
    finally:
        d.stop()
