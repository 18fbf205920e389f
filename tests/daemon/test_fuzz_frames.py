"""Hostile guest frames through each front end: structure-aware mutations of every
kind of frame a guest sends (tests/fuzzframes.py), tens of thousands here, millions
in benches/fuzz_frames.py. The daemon must stay up, keep serving, and put every
frame under a reason: no counter that stands for a bug (an engine's exception
caught by the dispatcher's boundary, a parser crash, a loop callback error)."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from fuzzframes import bugs, frames
from passtcore.sandbox import Sandbox

from .helpers import StreamClient, arp_request, pack, target_of_reply

pytestmark = pytest.mark.netns

GW = bytes([192, 0, 2, 1])
COUNT = 30000


def _drain(c: StreamClient) -> None:
    c.sock.setblocking(False)
    try:
        while c.sock.recv(1 << 20):
            pass
    except BlockingIOError:
        pass
    finally:
        c.sock.setblocking(True)


def _still_serves_arp(c: StreamClient) -> None:
    c.buf.clear()
    c.send(arp_request(GW))
    for _ in range(1000):  # hostile frames may have asked for replies too: skip them
        (reply,) = c.recv_frames(1, timeout=10)
        if reply[12:14] == b"\x08\x06" and target_of_reply(reply) == GW:
            return
    raise AssertionError("no ARP reply after the hostile frames")


@pytest.mark.parametrize("seed", [1, 2])
def test_stream_socket_survives_hostile_frames(sandbox: Sandbox, seed: int) -> None:
    d = sandbox.start_daemon(mode="socket")
    c = StreamClient(d.socket_path)
    try:
        batch = []
        for i, f in enumerate(frames(seed, COUNT)):
            batch.append(pack(f) if len(f) >= 14 else pack(f + bytes(14 - len(f))))
            if len(batch) == 500:
                c.send_raw(b"".join(batch))
                batch.clear()
                _drain(c)
        c.send_raw(b"".join(batch))
        _drain(c)
        assert d.alive()
        _still_serves_arp(c)
        counters = d.counters()
        assert counters["frames_in"] >= COUNT
        assert not bugs(counters), bugs(counters)
        # every reason is a bounded name (no counter per value a guest makes up)
        assert len([k for k in counters if k.startswith("drop.")]) < 1000
    finally:
        c.close()
        d.stop()


# In the guest: the hostile frames onto the tap's other end with a raw packet socket.
SENDER = f"""
import socket, sys
sys.path.insert(0, {str(__file__.rsplit('/daemon/', 1)[0])!r})
from fuzzframes import frames
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
sent = 0
for f in frames(int(sys.argv[1]), int(sys.argv[2])):
    if len(f) < 14:
        continue
    try:
        s.send(f)
        sent += 1
    except OSError:
        pass  # e.g. larger than the link's MTU
print(sent)
"""


def test_tap_survives_hostile_frames(sandbox: Sandbox) -> None:
    d = sandbox.start_daemon(mode="netns")
    try:
        r = sandbox.guest(sys.executable, "-c", SENDER, "3", str(COUNT), timeout=300)
        assert int(r.stdout) > COUNT * 0.8
        assert d.alive()
        # still serving: the guest resolves the gateway
        sandbox.guest("ip", "addr", "add", "192.0.2.2/24", "dev", "eth0")
        ping = sandbox.guest("ping", "-c", "1", "-W", "5", "192.0.2.1", check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        counters = d.counters()
        assert not bugs(counters), bugs(counters)
    finally:
        d.stop()
